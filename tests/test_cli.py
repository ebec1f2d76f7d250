"""The command line: help everywhere, listings, clear one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lofit_bench.cli import main

SUBCOMMANDS = ["run", "report", "compare", "list", "plugins", "heads", "export-lm-eval"]


pytestmark = pytest.mark.usefixtures("builtin_plugins_only")


def run_cli(capsys, *arguments: str) -> tuple[int, str, str]:
    code = main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_on_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert command in out
    for command in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: lofit-bench" in capsys.readouterr().out


def test_help_does_not_import_torch():
    code = "import sys; from lofit_bench.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("False")


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "lofit_bench", "list", "budgets"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "paper" in result.stdout and "smoke" in result.stdout


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("methods", ["zero-shot"]),
        ("tasks", ["truthfulqa", "clutrr", "mquake", "CC-BY-NC-4.0"]),
        ("models", ["smollm2-135m", "tiny-random-llama", "local Hugging Face folder"]),
        ("studies", ["table1", "table2", "figure2", "table3", "figure4", "figure5", "appendix-g"]),
        ("budgets", ["paper", "study-cpu", "smoke"]),
    ],
)
def test_list(capsys, what, expected):
    code, out, _ = run_cli(capsys, "list", what)
    assert code == 0
    for text in expected:
        assert text in out


def test_plugins_lists_builtins_with_hooks(capsys):
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0
    assert "lofit_bench.methods.zero_shot" in out
    assert "register_methods" in out and "register_tasks" in out
    assert "lofit-bench" in out


def test_unknown_methods_fail_fast_with_known_names(capsys):
    code, out, err = run_cli(capsys, "run", "--methods", "zero-shot,no-such-method,also-missing", "--tasks", "clutrr,mquake")
    assert code == 2
    assert "Traceback" not in err
    assert err.count("\n") == 1
    assert "unknown methods: no-such-method, also-missing" in err
    assert "Known methods: " in err and "zero-shot" in err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--methods", "zero-shto", "--tasks", "clutrr"], "Did you mean 'zero-shot'?"),
        (["--methods", "zero-shot", "--tasks", "clutr"], "Did you mean 'clutrr'?"),
        (["--methods", "zero-shot", "--tasks", "clutrr", "--budget", "papr"], "Did you mean 'paper'?"),
        (["--methods", "zero-shot", "--tasks", "clutrr", "--model", "tiny-random-lama"], "Did you mean 'tiny-random-llama'?"),
        (["--methods", "zero-shot", "--tasks", "clutrr", "--budget-set", "epochs=0"], "epochs must be"),
        (["--methods", "zero-shot", "--tasks", "clutrr", "--budget-set", "nonsense=1"], "unknown budget fields"),
        (["--methods", "zero-shot", "--tasks", "clutrr", "--method-set", "zero-shot.alpha=1"], "unknown option"),
        (["--methods", "zero-shot", "--tasks", "clutrr", "--method-set", "lofit.alpha=1"], "not in --methods"),
    ],
)
def test_user_errors_are_one_line_exit_2(capsys, tmp_path, arguments, message):
    code, _, err = run_cli(capsys, "run", *arguments, "--out", str(tmp_path / "out"))
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert err.startswith("lofit-bench: error:")


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capsys, "run", "--methods", "zero-shot", "--tasks", "clutrr", "--out", str(blocker / "out"))
    assert code == 2
    assert "cannot write to output folder" in err


def test_unsupported_architecture(capsys, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lofit_bench.engine.models import byte_level_tokenizer

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=259)).save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    code, _, err = run_cli(capsys, "run", "--methods", "zero-shot", "--tasks", "clutrr", "--model", str(folder), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "unsupported architecture 'gpt2'" in err and "llama" in err


def test_malformed_task_data(capsys, tmp_path, monkeypatch):
    from lofit_bench.tasks.clutrr import Clutrr

    data = tmp_path / "clutrr"
    data.mkdir()
    for name in ("train.json", "val.json", "test.json"):
        (data / name).write_text("{ not json")
    monkeypatch.setattr(Clutrr, "default_data_dir", classmethod(lambda cls: data))
    code, _, err = run_cli(capsys, "run", "--methods", "zero-shot", "--tasks", "clutrr", "--model", "tiny-random-llama", "--out", str(tmp_path / "o"))
    assert code == 2
    assert "CLUTRR data file" in err and "reinstall lofit-bench" in err


def test_debug_shows_traceback(tmp_path):
    environment = dict(os.environ, LOFIT_BENCH_LOAD_PLUGINS="")
    result = subprocess.run(
        [sys.executable, "-m", "lofit_bench", "--debug", "run", "--methods", "nope", "--tasks", "clutrr"],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "UserError" in result.stderr


def test_zero_shot_end_to_end_writes_records_and_report(capsys, tmp_path):
    out = tmp_path / "demo"
    code, stdout, _ = run_cli(
        capsys,
        "run", "--methods", "zero-shot", "--tasks", "truthfulqa,clutrr,mquake", "--model", "tiny-random-llama",
        "--budget", "smoke", "--budget-set", "eval_examples=3", "--out", str(out), "--executor", "inline",
    )
    assert code == 0
    assert stdout.strip().endswith(f"open the report: {out / 'report.html'}")
    records = sorted((out / "records").glob("*.json"))
    assert len(records) == 3
    truthfulqa = json.loads(next(path for path in records if "truthfulqa" in path.name).read_text())
    assert truthfulqa["status"] == "ok"
    assert set(truthfulqa["folds"]) == {"fold_0", "fold_1"}
    assert set(truthfulqa["metrics"]) == {"mc1", "mc2"}
    assert truthfulqa["budget"]["name"] == "smoke" and truthfulqa["budget"]["eval_examples"] == 3
    assert "## truthfulqa" in stdout and "## clutrr" in stdout and "## mquake" in stdout
    assert (out / "report.md").exists() and (out / "results.csv").exists()

    code, stdout, _ = run_cli(capsys, "report", str(out))
    assert code == 0
    assert "| zero-shot" in stdout


def test_report_on_missing_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "report", str(tmp_path / "nothing"))
    assert code == 2
    assert "is not a folder" in err


def test_list_models_verbose_shows_each_models_hugging_face_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LOFIT_BENCH_CACHE", str(tmp_path))
    folder = tmp_path / "models" / "smollm2-135m-instruct-hf"
    assert main(["list", "models", "-v"]) == 0
    shown = capsys.readouterr().out
    assert f"  smollm2-135m: {folder} (built on the first run)\n" in shown
    assert "  tiny-random-llama: built in memory, no folder\n" in shown
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert main(["list", "models", "-v"]) == 0
    assert f"  smollm2-135m: {folder}\n" in capsys.readouterr().out

"""The bad-input matrix: bad flags, sweep files, records folders, artefacts, models, devices,
plugins and faults, each asserted for its exit code, one line, no traceback and no lost or
corrupt record.

Most cases are rejected before any model loads (``no_model_load`` makes loading one fail the
test); the few that need a run use the tiny random model in this process (``--executor
inline``), and a handful use a real process (the entry point's traceback check, the lock held
by another process, a broken plugin's warning).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest

from lofit_bench import hookimpl, plugins
from lofit_bench.cli import main
from lofit_bench.errors import UserError
from lofit_bench.names import file_part, inside, name_of_file_part
from lofit_bench.records.run_folder import RunFolder
from lofit_bench.records.store import NON_FINITE_KEY, write_json_atomic

TINY = "tiny-random-llama"
QUICK = ["--model", TINY, "--budget", "smoke", "--budget-set", "eval_examples=2", "--executor", "inline", "--quiet"]
ZERO_SHOT = ["run", "--methods", "zero-shot", "--tasks", "mquake", *QUICK]


pytestmark = pytest.mark.usefixtures("builtin_plugins_only")


class ModelLoaded(BaseException):
    """Not an Exception, so no handler on the way turns it into a user error."""


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: these inputs must be rejected before."""
    import lofit_bench.engine.models
    import lofit_bench.sweep.runner  # noqa: F401 - imported first, so it keeps the real load_model

    def refuse(*args, **kwargs):
        raise ModelLoaded("a model was loaded before the bad input was rejected")

    monkeypatch.setattr(lofit_bench.engine.models, "load_model", refuse)


def strict_json(path: Path):
    """Parse as a strict JSON reader does: NaN and Infinity literals are errors."""

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_cli(capsys, arguments: list[str]) -> tuple[int, str, str]:
    with warnings.catch_warnings():  # warnings go to stderr as on the command line, not to pytest
        warnings.simplefilter("default")
        warnings.showwarning = print_warning
        try:
            code = main([str(argument) for argument in arguments])
        except SystemExit as exit_info:  # argparse's usage errors exit from parse_args
            code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, out: str, err: str, expected_code: int, message: str) -> None:
    assert "Traceback" not in out + err
    assert code == expected_code, err
    errors = [line for line in err.splitlines() if line.startswith("lofit-bench: error:")]
    assert len(errors) == 1, err
    assert message in errors[0], errors[0]


def records_in(out: Path) -> list[Path]:
    return sorted((out / "records").glob("*.json"))


# -- command-line flags: one line, exit 2, before any model load -----------------------------------
RUN = ["run", "--methods", "zero-shot", "--tasks", "mquake", "--model", TINY, "--budget", "smoke"]
LOFIT = ["run", "--methods", "lofit", "--tasks", "mquake", "--model", TINY, "--budget", "smoke"]
FLAG_CASES = [
    ("unknown-method", ["run", "--methods", "nope", "--tasks", "mquake"], "unknown method"),
    ("unknown-task", ["run", "--methods", "zero-shot", "--tasks", "nope"], "unknown task"),
    ("unknown-model", [*RUN[:5], "--model", "nope"], "unknown model"),
    ("unknown-budget", [*RUN[:7], "--budget", "nope"], "unknown budget"),
    ("empty-methods", ["run", "--methods", ",", "--tasks", "mquake"], "comma-separated list"),
    ("no-methods", ["run", "--tasks", "mquake"], "name the methods and tasks"),
    ("budget-zero-epochs", [*RUN, "--budget-set", "epochs=0"], "epochs must be"),
    ("budget-unknown-field", [*RUN, "--budget-set", "nosuch=1"], "unknown budget fields"),
    ("budget-no-equals", [*RUN, "--budget-set", "epochs"], "KEY=VALUE"),
    ("budget-bad-warmup", [*RUN, "--budget-set", "warmup_ratio=2"], "warmup_ratio"),
    ("budget-string-batch", [*RUN, "--budget-set", "batch_size=eight"], "batch_size must be"),
    ("budget-unknown-scheduler", [*RUN, "--budget-set", "lr_scheduler=linearr"], "unknown lr_scheduler"),
    ("budget-batch-cannot-fit", [*RUN, "--budget-set", "batch_size=1000000000"], "cannot fit"),
    ("budget-eval-batch-cannot-fit", [*RUN, "--budget-set", "eval_batch_size=100000000"], "cannot fit"),
    ("budget-longer-than-model", [*RUN, "--budget-set", "max_length=100000"], "positions"),
    ("budget-seed-string", [*RUN, "--budget-set", "seeds=\"abc\""], "seeds must be"),
    ("budget-seed-negative", [*RUN, "--budget-set", "seeds=[-1]"], "out of range"),
    ("seeds-letters", [*RUN, "--seeds", "abc"], "seeds must be whole numbers"),
    ("seeds-negative", [*RUN, "--seeds=-5"], "out of range"),
    ("seeds-huge", [*RUN, "--seeds", "99999999999"], "out of range"),
    ("seeds-float", [*RUN, "--seeds", "1.5"], "seeds must be whole numbers"),
    ("jobs-zero", [*RUN, "--jobs", "0"], "jobs must be a whole number of at least 1"),
    ("jobs-negative", [*RUN, "--jobs=-2"], "jobs must be"),
    ("jobs-word", [*RUN, "--jobs", "two"], "jobs must be"),
    ("device-tpu", [*RUN, "--device", "tpu"], "device must be"),
    ("device-cuda-letter", [*RUN, "--device", "cuda:x"], "device must be"),
    ("dtype-unknown", [*RUN, "--dtype", "fp8"], "invalid choice"),
    ("executor-unknown", [*RUN, "--executor", "slurm"], "unknown executor: slurm. Known executors: inline, process, ray"),
    ("executor-typo", [*RUN, "--executor", "proces"], "Did you mean 'process'"),
    ("ray-address-without-ray", [*RUN, "--ray-address", "10.0.0.1:6379"], "--ray-address is for --executor ray; the process executor does not use it"),
    ("tune-per-unknown", [*RUN, "--tune-per", "run"], "invalid choice"),
    ("method-set-no-field", [*RUN, "--method-set", "zero-shot=1"], "METHOD.FIELD"),
    ("method-set-unknown-field", [*RUN, "--method-set", "zero-shot.alpha=1"], "unknown option"),
    ("method-set-other-method", [*RUN, "--method-set", "lofit.heads=2"], "not in --methods"),
    ("lr-infinity", [*LOFIT, "--method-set", "lofit.stage2_learning_rate=Infinity"], "must be finite"),
    ("lr-nan", ["run", "--methods", "red", "--tasks", "mquake", "--method-set", "red.learning_rate=NaN"], "must be finite"),
    ("alpha-infinity", ["run", "--methods", "iti", "--tasks", "mquake", "--model", TINY, "--method-set", "iti.alpha=-Infinity"], "must be finite"),
    ("lofit-too-many-heads", [*LOFIT, "--method-set", "lofit.heads=1000"], "the model has 8 heads"),
    ("lofit-unknown-head-source", [*LOFIT, "--method-set", "lofit.head_source=\"lofitt\""], "unknown lofit.head_source"),
    ("lofit-missing-head-file", [*LOFIT, "--method-set", "lofit.head_source=\"file:/nonexistent/heads.json\""], "does not exist"),
    ("iti-too-many-heads", ["run", "--methods", "iti", "--tasks", "mquake", "--model", TINY, "--method-set", "iti.heads=9"], "the model has 8 heads"),
    ("repe-layer-rank-out-of-range", ["run", "--methods", "repe", "--tasks", "mquake", "--model", TINY, "--method-set", "repe.layer_rank=5"], "only 2 layers to rank"),
    ("repe-layer-out-of-range", ["run", "--methods", "repe", "--tasks", "mquake", "--model", TINY, "--method-set", "repe.layer=2"], "has 2 layers"),
    ("model-folder-without-config", [*RUN[:5], "--model", "{tmp}"], "no config.json"),
    ("config-missing", [*RUN, "--config", "{tmp}/missing.toml"], "cannot read sweep config"),
    ("heads-top-negative", ["heads", "{tmp}", "--top", "-3"], "--top must be a whole number of at least 1"),
    ("heads-top-zero", ["heads", "{tmp}", "--top", "0"], "--top must be"),
    ("report-missing-folder", ["report", "{tmp}/nothing"], "is not a folder"),
    ("compare-missing-folder", ["compare", "{tmp}/nothing", "{tmp}"], "is not a folder"),
    ("compare-empty-folder", ["compare", "{tmp}", "{tmp}"], "no finished runs"),
    ("heads-missing-folder", ["heads", "{tmp}/nothing"], ""),
    ("tune-storage-bogus", [*RUN, "--tune-storage", "bogus://x"], "--tune-storage 'bogus://x' is not a database URL"),
    ("tune-storage-not-a-url", [*RUN, "--tune-storage", "trials.db"], "is not a database URL"),
    ("tune-storage-missing-folder", [*RUN, "--tune-storage", "sqlite:////nonexistent/dir/x.db"], "the folder /nonexistent/dir does not exist"),
    ("reference-unknown", [*RUN, "--reference", "nosuch"], "--reference nosuch: no method of that name in this sweep"),
]


@pytest.mark.parametrize(("arguments", "message"), [case[1:] for case in FLAG_CASES], ids=[case[0] for case in FLAG_CASES])
def test_bad_flags_are_one_line_exit_2_before_any_model_load(capsys, tmp_path, no_model_load, arguments, message):
    out_dir = tmp_path / "out"
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    if arguments[0] == "run":
        arguments += ["--out", str(out_dir)]
    code, out, err = run_cli(capsys, arguments)
    assert_one_error_line(code, out, err, 2, message)
    assert not records_in(out_dir)


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_refused_not_read_as_the_current_folder(capsys, tmp_path, no_model_load, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(capsys, [*RUN, "--out", out])
    assert code == 2 and "Traceback" not in stdout + err
    assert "--out: must name a folder, got an empty string" in err
    assert list(tmp_path.iterdir()) == []


def test_a_reference_among_the_folders_records_is_accepted_before_the_sweep(finished_run):
    """--reference names a method of the records already in OUT: checked, accepted, the sweep goes on."""
    from lofit_bench.sweep.preflight import check_reference

    check_reference("zero-shot", ["lofit"], finished_run)
    with pytest.raises(UserError, match="Did you mean 'zero-shot'"):
        check_reference("zero_shot", ["lofit"], finished_run)


def test_entry_point_prints_no_traceback_in_a_real_process(tmp_path):
    for arguments in (["run", "--methods", "zero-shot", "--tasks", "mquake", "--seeds", "abc"], ["run", "--device", "tpu"]):
        result = subprocess.run([sys.executable, "-m", "lofit_bench", *arguments], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- sweep files: the command line's messages, field by field ---------------------------------------
SWEEP_HEAD = 'methods = ["zero-shot"]\ntasks = ["mquake"]\nmodels = ["tiny-random-llama"]\nbudget = "smoke"\n'
SWEEP_CASES = [
    ("toml-malformed", "sweep.toml", "methods = [", "is malformed"),
    ("yaml-malformed", "sweep.yaml", "methods: [zero-shot\ntasks: : :", "is malformed"),
    ("json-malformed", "sweep.json", "{\"methods\": ", "is malformed"),
    ("json-top-level-list", "sweep.json", "[1, 2]", "table/mapping at the top level"),
    ("yaml-top-level-string", "sweep.yml", "just text", "table/mapping at the top level"),
    ("not-utf8", "sweep.toml", b"methods = [\"\xff\xfe\"]", "not UTF-8"),
    ("bad-suffix", "sweep.ini", "methods = 1", "must end in .toml"),
    ("unknown-key", "sweep.toml", SWEEP_HEAD + "epochs = 3\n", "unknown keys"),
    ("budget-overrides-number", "sweep.toml", SWEEP_HEAD + "budget_overrides = 5\n", "budget_overrides must be a table"),
    ("method-options-list", "sweep.toml", SWEEP_HEAD + "method_options = [\"x\"]\n", "method_options must be a table"),
    ("method-options-entry-number", "sweep.toml", SWEEP_HEAD + "[method_options]\nlofit = 5\n", "method_options.lofit must be a table"),
    ("budget-number", "sweep.toml", SWEEP_HEAD.replace('budget = "smoke"', "budget = 5"), "budget (a budget name) must be"),
    ("budget-list", "sweep.toml", SWEEP_HEAD.replace('budget = "smoke"', 'budget = ["paper"]'), "budget (a budget name) must be"),
    ("out-number", "sweep.toml", SWEEP_HEAD + "out = 5\n", "out (a folder) must be"),
    ("jobs-zero", "sweep.toml", SWEEP_HEAD + "jobs = 0\n", "jobs must be a whole number of at least 1"),
    ("jobs-word", "sweep.toml", SWEEP_HEAD + 'jobs = "two"\n', "jobs must be a whole number of at least 1"),
    ("out-empty", "sweep.toml", SWEEP_HEAD + 'out = ""\n', "out (a folder) must be a non-empty string"),
    ("seeds-letters", "sweep.toml", SWEEP_HEAD + 'seeds = "abc"\n', "seeds must be whole numbers"),
    ("seeds-float", "sweep.toml", SWEEP_HEAD + "seeds = [1.5]\n", "seeds must be whole numbers"),
    ("seeds-negative", "sweep.toml", SWEEP_HEAD + "seeds = -3\n", "out of range"),
    ("dtype-unknown", "sweep.toml", SWEEP_HEAD + 'dtype = "fp8"\n', "dtype must be one of"),
    ("device-tpu", "sweep.toml", SWEEP_HEAD + 'device = "tpu"\n', "device must be"),
    ("executor-number", "sweep.toml", SWEEP_HEAD + "executor = 5\n", "executor (an executor name: `lofit-bench list executors`) must be"),
    ("executor-unknown", "sweep.toml", SWEEP_HEAD + 'executor = "slurm"\n', "unknown executor: slurm. Known executors: inline, process, ray"),
    ("tune-per-unknown", "sweep.toml", SWEEP_HEAD + 'tune_per = "run"\n', "tune_per must be one of fold, seed"),
    ("methods-number", "sweep.toml", 'methods = 5\ntasks = ["mquake"]\n', "methods must be a list of names"),
    ("tasks-empty", "sweep.toml", 'methods = ["zero-shot"]\ntasks = []\n', "tasks must name at least one"),
    ("models-not-names", "sweep.toml", 'methods = ["zero-shot"]\ntasks = ["mquake"]\nmodels = [1]\n', "models must be"),
    ("budget-override-bad", "sweep.toml", SWEEP_HEAD + "[budget_overrides]\nepochs = -1\n", "epochs must be"),
    ("method-option-infinite", "sweep.json", json.dumps({"methods": ["red"], "tasks": ["mquake"], "models": [TINY]})[:-1]
     + ', "method_options": {"red": {"learning_rate": Infinity}}}', "must be finite"),
]


@pytest.mark.parametrize(("file_name", "content", "message"), [case[1:] for case in SWEEP_CASES], ids=[case[0] for case in SWEEP_CASES])
def test_bad_sweep_files_are_one_line_exit_2_before_any_model_load(capsys, tmp_path, no_model_load, file_name, content, message):
    config = tmp_path / file_name
    if isinstance(content, bytes):
        config.write_bytes(content)
    else:
        config.write_text(content)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, ["run", "--config", config, "--out", out_dir])
    assert_one_error_line(code, out, err, 2, message)
    assert not records_in(out_dir)


def test_sweep_files_and_flags_share_one_message(capsys, tmp_path, no_model_load):
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP_HEAD + 'seeds = "abc"\n')
    _, _, from_file = run_cli(capsys, ["run", "--config", config, "--out", tmp_path / "a"])
    _, _, from_flag = run_cli(capsys, [*RUN, "--seeds", "abc", "--out", tmp_path / "b"])
    assert "seeds must be whole numbers, e.g. 42,43 (got 'abc')" in from_file
    assert "seeds must be whole numbers, e.g. 42,43 (got 'abc')" in from_flag


def test_sweep_file_values_are_read_as_the_command_line_reads_them(tmp_path):
    from lofit_bench.sweep.sweep_file import load_sweep_config

    config = tmp_path / "sweep.toml"
    config.write_text('methods = "zero-shot, lofit"\ntasks = ["mquake"]\njobs = "2"\nseeds = "42,43"\nmodel = "tiny-random-llama"\n')
    loaded = load_sweep_config(config)
    assert loaded.jobs == 2 and loaded.seeds == [42, 43] and loaded.methods == ["zero-shot", "lofit"]
    assert loaded.models == ["tiny-random-llama"]


# -- one good run, shared by the records-folder and resume cases ------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(plugins.ALLOWLIST_VARIABLE, "")
        plugins.reset_host()
        out_dir = tmp_path_factory.mktemp("finished") / "out"
        assert main([*ZERO_SHOT, "--out", str(out_dir)]) == 0
        plugins.reset_host()
    return out_dir


@pytest.fixture
def copy_of_run(finished_run, tmp_path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(finished_run, copy)
    return copy


def test_a_byte_identical_copy_of_a_record_is_not_a_second_seed(capsys, copy_of_run):
    from lofit_bench.records.store import read_record_folder

    (path,) = records_in(copy_of_run)
    shutil.copy(path, path.with_name("zz-copy.json"))
    code, out, err = run_cli(capsys, ["report", copy_of_run])
    assert code == 0 and "Traceback" not in out + err
    assert f"skipped {path.with_name('zz-copy.json')}: the same run (key " in err and "a copy counts once" in err
    folder = read_record_folder(copy_of_run)
    assert [record.source for record in folder.records] == [path]


def test_a_nan_literal_in_a_records_metrics_is_named_and_the_record_left_out(capsys, copy_of_run):
    (path,) = records_in(copy_of_run)
    record = json.loads(path.read_text())
    first = next(iter(record["metrics"]))
    record["metrics"][first] = float("nan")
    path.write_text(json.dumps(record))  # json writes the NaN literal lofit-bench never writes
    code, out, err = run_cli(capsys, ["report", copy_of_run])
    assert code == 2 and "Traceback" not in out + err  # its only record left out: nothing to report
    assert f"skipped {path}: it holds 1 NaN or Infinity literal(s) (metrics.{first} = NaN)" in " ".join(err.split())


def test_records_are_strict_json_and_name_their_plugin_distribution(finished_run):
    (path,) = records_in(finished_run)
    record = strict_json(path)
    assert record["status"] == "ok"
    assert record["method"]["plugin_distribution"]["name"] == "lofit-bench"
    assert record["task"]["plugin_distribution"]["version"]


BAD_RECORD_FILES = [
    ("not-utf8", b"\xff\xfe\x00garbage", "not UTF-8"),
    ("truncated-json", b'{"schema": 1, "status": "ok", "met', "not valid JSON"),
    ("json-list", b"[1, 2, 3]", "not an object"),
    ("json-string", b'"a record"', "not an object"),
    ("unknown-schema", b'{"schema": 99, "status": "ok"}', "schema 99"),
    ("no-schema", b'{"status": "ok"}', "no whole-number 'schema' field; got None"),
    ("misspelt-field", b'{"schema": 1, "key": "k", "status": "ok", "method": {"name": "x"}, "task": {"name": "y"}, '
     b'"seed": 1, "budget": {}, "metrcs": {}}', "metrcs: Unexpected keyword argument"),
    ("wrong-type", b'{"schema": 1, "key": "k", "status": "ok", "method": {"name": "x"}, "task": {"name": "y"}, '
     b'"seed": "one", "budget": {}}', "seed: Input should be a valid integer"),
    ("empty-file", b"", "not valid JSON"),
]


@pytest.mark.parametrize(("content", "problem"), [case[1:] for case in BAD_RECORD_FILES], ids=[case[0] for case in BAD_RECORD_FILES])
def test_report_names_a_bad_record_file_and_reports_the_rest(capsys, copy_of_run, content, problem):
    bad = copy_of_run / "records" / "zz-bad.json"
    bad.write_bytes(content)
    code, out, err = run_cli(capsys, ["report", copy_of_run])
    assert code == 0 and "Traceback" not in out + err
    (warning,) = [line for line in err.splitlines() if line.startswith("lofit-bench: warning:")]
    assert str(bad) in warning and problem in warning
    assert "zero-shot" in out
    assert bad.read_bytes() == content  # the bad file is left for the user to look at


def test_report_with_only_bad_records_is_one_error(capsys, tmp_path):
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "a.json").write_text('{"schema": 7}')
    code, out, err = run_cli(capsys, ["report", tmp_path])
    assert_one_error_line(code, out, err, 2, "no run records")
    assert "schema 7" in err


@pytest.mark.parametrize("content", [b"\xff\xfe", b"[]", b'{"schema": 99}'], ids=["not-utf8", "json-list", "unknown-schema"])
def test_resume_reruns_a_run_whose_record_is_unreadable_and_keeps_the_others(capsys, copy_of_run, content):
    (path,) = records_in(copy_of_run)
    other = copy_of_run / "records" / "zz-unrelated.json"
    other.write_bytes(b"\xff")
    path.write_bytes(content)
    code, out, err = run_cli(capsys, [*ZERO_SHOT, "--out", copy_of_run])
    assert code == 0 and "Traceback" not in out + err
    assert any(str(path) in line for line in err.splitlines() if line.startswith("lofit-bench: warning:"))
    assert strict_json(path)["status"] == "ok"
    assert other.read_bytes() == b"\xff"


def test_resume_skips_finished_runs(capsys, copy_of_run):
    (path,) = records_in(copy_of_run)
    before = path.read_bytes(), path.stat().st_mtime_ns
    code, out, err = run_cli(capsys, [*ZERO_SHOT, "--out", copy_of_run])
    assert code == 0 and "Traceback" not in out + err
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # skipped, not rerun


def test_an_unwritable_records_folder_is_refused_up_front(capsys, tmp_path, no_model_load):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "records").write_text("a file where the records folder should be")
    code, out, err = run_cli(capsys, [*ZERO_SHOT, "--out", out_dir])
    assert_one_error_line(code, out, err, 2, "cannot write to")


def test_an_output_that_cannot_be_written_is_one_line(capsys, copy_of_run, tmp_path):
    (copy_of_run / "report.md").unlink()
    (copy_of_run / "report.md").mkdir()  # a folder where the report file goes
    code, out, err = run_cli(capsys, ["report", copy_of_run])
    assert_one_error_line(code, out, err, 2, "")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = run_cli(capsys, ["export-lm-eval", blocker / "tasks"])
    assert_one_error_line(code, out, err, 2, "")
    heads = tmp_path / "heads" / "heads.json"
    heads.parent.mkdir()
    heads.write_text(json.dumps(GOOD_HEADS))
    (heads.parent / "heads_heatmap.png").mkdir()
    code, out, err = run_cli(capsys, ["heads", heads])
    assert_one_error_line(code, out, err, 2, "")
    assert strict_json(records_in(copy_of_run)[0])["status"] == "ok"


# -- faults during a sweep --------------------------------------------------------------------------
def failing_writes(monkeypatch, error_number: int, fail_when):
    """Make record writes under a path matching ``fail_when`` raise OSError(error_number)."""
    import lofit_bench.records.store

    real = lofit_bench.records.store.write_json_atomic

    def write(path, payload):
        if fail_when(Path(path)):
            raise OSError(error_number, os.strerror(error_number))
        return real(path, payload)

    monkeypatch.setattr(lofit_bench.records.store, "write_json_atomic", write)


def test_a_full_disk_stops_the_sweep_cleanly_and_a_rerun_resumes(capsys, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    failing_writes(monkeypatch, errno.ENOSPC, lambda path: "seed2" in path.name)  # the fallback too
    code, out, err = run_cli(capsys, [*ZERO_SHOT, "--seeds", "1,2,3", "--out", out_dir])
    assert_one_error_line(code, out, err, 3, "the disk is full")
    assert "rerun the same command" in err
    (unsaved,) = [line for line in err.splitlines() if line.startswith("lofit-bench: unsaved record")]
    printed = json.loads(unsaved.partition(": ")[2].partition(": ")[2])  # the result is not lost
    assert printed["seed"] == 2 and printed["status"] == "ok"
    (saved,) = records_in(out_dir)
    assert strict_json(saved)["seed"] == 1
    assert not [path for path in (out_dir / "records").iterdir() if path.name.startswith(".")]
    monkeypatch.undo()
    plugins.reset_host()
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "")
    first = records_in(out_dir)[0].stat().st_mtime_ns
    code, out, err = run_cli(capsys, [*ZERO_SHOT, "--seeds", "1,2,3", "--out", out_dir])
    assert code == 0 and "Traceback" not in out + err
    assert records_in(out_dir)[0].stat().st_mtime_ns == first  # seed 1 was skipped, not rerun
    assert [strict_json(path)["seed"] for path in records_in(out_dir)] == [1, 2, 3]


def test_a_record_that_cannot_be_written_is_kept_in_a_fallback_folder(capsys, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out_dir = tmp_path / "out"
    failing_writes(monkeypatch, errno.EACCES, lambda path: path.parent == out_dir / "records")
    code, out, err = run_cli(capsys, [*ZERO_SHOT, "--out", out_dir])
    assert code == 1 and "Traceback" not in out + err, err
    (fallback,) = (tmp_path / "tmp" / "lofit-bench-unsaved").glob("*.json")
    assert strict_json(fallback)["status"] == "ok"
    assert any("could not write record" in line and str(fallback) in line for line in err.splitlines())


def test_artefacts_that_cannot_be_saved_cost_the_artefacts_not_the_result(capsys, tmp_path, monkeypatch):
    from lofit_bench.method import Method

    def full_disk_save(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "method_config.json").write_bytes(b"")  # a partial file, as a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Method, "save", full_disk_save)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, [*ZERO_SHOT, "--out", out_dir])
    assert_one_error_line(code, out, err, 3, "the disk is full")
    (path,) = records_in(out_dir)
    record = strict_json(path)
    assert record["status"] == "ok" and record["artifacts_error"]["disk_full"]
    assert not list((out_dir / "artifacts").rglob("*.json"))  # no partial artefact left behind


def test_a_diverged_run_is_failed_with_the_step_loss_and_learning_rate(capsys, tmp_path):
    out_dir = tmp_path / "out"
    arguments = ["run", "--methods", "red", "--tasks", "mquake", *QUICK, "--budget-set", "train_examples=8",
                 "--budget-set", "batch_size=2", "--method-set", "red.learning_rate=1e30", "--out", out_dir]
    code, out, err = run_cli(capsys, arguments)
    assert code == 1 and "Traceback" not in out + err
    (path,) = records_in(out_dir)
    record = strict_json(path)
    assert record["status"] == "failed" and record["error"]["type"] == "Diverged"
    message = record["error"]["message"]
    assert "step" in message and "loss" in message and "learning rate was 1e+30" in message
    assert "metrics" not in record


@pytest.mark.parametrize(
    ("method", "option"), [("iti", "iti.alpha=1e30"), ("repe", "repe.alpha=1e30"), ("lofit", "lofit.init_std=1e30")]
)
def test_an_edit_that_overflows_the_hidden_states_is_a_failed_run_not_a_score(capsys, tmp_path, method, option):
    """Finite but meaningless: the norms square 1e26+ to inf and the model answers "!!!!" to all."""
    out_dir = tmp_path / "out"
    arguments = ["run", "--methods", method, "--tasks", "mquake", *QUICK, "--budget-set", "train_examples=4",
                 "--budget-set", "dev_examples=2", "--method-set", option, "--out", out_dir]
    code, out, err = run_cli(capsys, arguments)
    assert code == 1 and "Traceback" not in out + err
    (path,) = records_in(out_dir)
    record = strict_json(path)
    assert record["status"] == "failed" and record["error"]["type"] == "Diverged", record.get("error")
    assert f"the fitted {method} model's hidden states reach" in record["error"]["message"]
    assert "metrics" not in record


def test_truncated_training_examples_are_said_on_the_console(capsys, tmp_path):
    arguments = ["run", "--methods", "red", "--tasks", "mquake", *QUICK, "--budget-set", "train_examples=8",
                 "--budget-set", "max_length=200", "--tune", "off", "--out", tmp_path / "out"]
    code, out, err = run_cli(capsys, arguments)
    assert code == 0 and "Traceback" not in out + err
    assert ("lofit-bench: warning: red on mquake (seed 42, tiny-random-llama): 1 training example(s) were cut to the "
            "budget's max_length 200") in err


def test_non_finite_numbers_are_written_as_null_and_listed(tmp_path):
    path = tmp_path / "record.json"
    write_json_atomic(path, {"metrics": {"mc1": float("nan"), "mc2": 0.5}, "losses": [1.0, float("-inf")]})
    written = strict_json(path)
    assert written["metrics"] == {"mc1": None, "mc2": 0.5} and written["losses"] == [1.0, None]
    assert written[NON_FINITE_KEY] == {"metrics.mc1": "NaN", "losses[1]": "-Infinity"}


def test_non_finite_metrics_fail_the_run():
    from lofit_bench.engine.divergence import check_finite_metrics
    from lofit_bench.errors import Diverged

    with pytest.raises(Diverged, match="non-finite metrics"):
        check_finite_metrics({"exact_match": float("nan")}, "main")


# -- the --out lock ---------------------------------------------------------------------------------
HOLD_LOCK = "import sys, time\nfrom pathlib import Path\nfrom lofit_bench.sweep.folder_lock import out_folder_lock\n" \
    "with out_folder_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)\n"


def test_a_second_sweep_on_the_same_out_refuses_naming_the_other_process(capsys, tmp_path, no_model_load):
    from lofit_bench.sweep.folder_lock import out_folder_lock

    out_dir = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out, err = run_cli(capsys, [*ZERO_SHOT, "--out", out_dir])
        assert_one_error_line(code, out, err, 2, "another sweep is writing to")
        assert f"pid {holder.pid}" in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with out_folder_lock(out_dir):  # kill -9 leaves no stale lock
        pass


# -- heads files (lofit-bench heads and head_source=file:) -----------------------------------------
GOOD_HEADS = {"format": "lofit-bench heads v1", "source": "lofit", "chosen": [[0, 1]],
              "shape": {"n_layers": 2, "n_heads": 4, "head_dim": 16}, "ranking": None, "score": "", "details": {}}
HEADS_CASES = [
    ("missing-chosen", {key: value for key, value in GOOD_HEADS.items() if key != "chosen"}, "missing field"),
    ("missing-shape", {key: value for key, value in GOOD_HEADS.items() if key != "shape"}, "missing field"),
    ("layer-out-of-range", GOOD_HEADS | {"chosen": [[5, 1]]}, "outside the shape"),
    ("negative-head", GOOD_HEADS | {"chosen": [[0, -1]]}, "outside the shape"),
    ("chosen-wrong-type", GOOD_HEADS | {"chosen": "0,1"}, "not a valid heads file"),
    ("chosen-not-numbers", GOOD_HEADS | {"chosen": [["a", "b"]]}, "not a valid heads file"),
    ("ranking-missing-score", GOOD_HEADS | {"ranking": [{"layer": 0, "head": 1}]}, "missing field"),
    ("shape-wrong-type", GOOD_HEADS | {"shape": {"n_layers": "two", "n_heads": 4, "head_dim": 16}}, "shape.n_layers"),
    ("source-not-string", GOOD_HEADS | {"source": 5}, "not a valid heads file"),
    ("wrong-format", GOOD_HEADS | {"format": "other"}, "not a lofit-bench heads file"),
    ("not-an-object", [1, 2], "not a lofit-bench heads file"),
    ("not-json", "{ nope", "cannot read heads file"),
    ("duplicate-chosen-head", GOOD_HEADS | {"chosen": [[0, 1], [0, 1], [0, 1]]}, "chosen lists head (layer 0, head 1) more than once"),
    ("duplicate-ranked-head", GOOD_HEADS | {"ranking": [{"layer": 0, "head": 1, "score": 1.0}, {"layer": 0, "head": 1, "score": 0.5}]},
     "ranking lists head (layer 0, head 1) more than once"),
]


@pytest.mark.parametrize(("content", "message"), [case[1:] for case in HEADS_CASES], ids=[case[0] for case in HEADS_CASES])
def test_a_hand_edited_heads_file_is_one_line(capsys, tmp_path, no_model_load, content, message):
    path = tmp_path / "heads.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    code, out, err = run_cli(capsys, ["heads", path])
    assert_one_error_line(code, out, err, 2, message)
    code, out, err = run_cli(capsys, [*LOFIT, "--method-set", f'lofit.head_source="file:{path}"', "--out", tmp_path / "out"])
    assert_one_error_line(code, out, err, 2, message)


def test_a_heads_file_of_another_model_is_refused_before_loading(capsys, tmp_path, no_model_load):
    path = tmp_path / "heads.json"
    path.write_text(json.dumps(GOOD_HEADS | {"shape": {"n_layers": 30, "n_heads": 9, "head_dim": 64}}))
    code, out, err = run_cli(capsys, [*LOFIT, "--method-set", f'lofit.head_source="file:{path}"', "--out", tmp_path / "out"])
    assert_one_error_line(code, out, err, 2, "this model has 2 layers")


# -- models and devices -----------------------------------------------------------------------------
LLAMA_CONFIG = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                "intermediate_size": 128, "vocab_size": 100}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_attention_heads": 0}, "ZeroDivisionError"),
        ({"num_attention_heads": 3}, "The hidden size (64) is not a multiple of the number of attention heads (3)"),
        ({"num_hidden_layers": "two"}, "expected int, got str (value: 'two')"),
    ],
    ids=["zero-heads", "heads-not-dividing", "layers-as-text"],
)
def test_a_config_json_that_transformers_rejects_is_one_line(capsys, tmp_path, no_model_load, change, message):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_CONFIG | change))
    code, out, err = run_cli(capsys, [*RUN[:5], "--model", folder, "--out", tmp_path / "out"])
    assert_one_error_line(code, out, err, 2, "transformers rejects its config.json")
    assert message in err


def test_a_model_folder_with_truncated_weights_is_one_line(capsys, tmp_path):
    from lofit_bench.engine.models import build_tiny_model

    model, tokenizer = build_tiny_model(TINY)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    capsys.readouterr()  # the save's own progress bar is not the CLI's output
    code, out, err = run_cli(capsys, ["run", "--methods", "zero-shot", "--tasks", "mquake", "--model", folder,
                                      "--executor", "inline", "--out", tmp_path / "out"])
    assert_failed_run(code, out, err, tmp_path / "out", "deserializing")


def assert_failed_run(code: int, out: str, err: str, out_dir: Path, message: str) -> None:
    """A fault the CLI cannot see without loading the model (it never does): one failed record."""
    assert code == 1 and "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1, err
    paths = records_in(out_dir)
    assert paths  # one failed record per seed of the budget
    for path in paths:
        record = strict_json(path)
        assert record["status"] == "failed" and message in record["error"]["message"], record["error"]


def test_cuda_without_cuda_is_one_line(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out, err = run_cli(capsys, [*RUN, "--device", "cuda", "--executor", "inline", "--out", tmp_path / "out"])
    assert_one_error_line(code, out, err, 2, "torch sees no CUDA device")
    assert not records_in(tmp_path / "out")  # refused before any run


# -- names and paths --------------------------------------------------------------------------------
def test_prefixed_names_become_safe_file_names_reversibly(tmp_path):
    path = RunFolder(tmp_path).record("zero-shot", "lm_eval:hellaswag/sub", 42, "0123456789abcdef")
    assert ":" not in path.name and "/" not in path.name and path.parent == tmp_path / "records"
    assert name_of_file_part(file_part("lm_eval:hellaswag/sub")) == "lm_eval:hellaswag/sub"


def test_paths_outside_out_are_refused(tmp_path):
    with pytest.raises(UserError, match="outside the output folder"):
        inside(tmp_path / "out", tmp_path / "out" / ".." / "elsewhere.json")


# -- plugins ----------------------------------------------------------------------------------------
def write_distribution(site: Path, distribution: str, module: str, source: str) -> None:
    info = site / f"{distribution.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[lofit_bench]\n{module} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


DUPLICATE_METHOD = """
    from lofit_bench import hookimpl
    from lofit_bench.methods.zero_shot import ZeroShot

    class Duplicate(ZeroShot):
        name = "duplicate"
        description = "{module}"

    @hookimpl
    def register_methods(register):
        register(Duplicate)
"""


@pytest.mark.parametrize("install_order", [("alpha", "beta"), ("beta", "alpha")])
def test_a_contested_method_name_goes_to_the_same_plugin_whatever_the_install_order(tmp_path, monkeypatch, install_order):
    for module in install_order:
        site = tmp_path / module
        write_distribution(site, f"{module}-plugin", f"lofit_bench_{module}", DUPLICATE_METHOD.replace("{module}", module))
        monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(plugins.ALLOWLIST_VARIABLE)
    with pytest.warns(plugins.PluginWarning) as caught:
        host = plugins.PluginHost().load()
    assert host.methods.get("duplicate").description == "alpha"
    (warning,) = [str(item.message) for item in caught if "duplicate" in str(item.message)]
    assert "skipped the one from 'lofit_bench_beta' (beta-plugin 1.0)" in warning
    for module in ("alpha", "beta"):
        sys.modules.pop(f"lofit_bench_{module}", None)


@pytest.mark.parametrize("name", ["../../../x", "a/b", "lm_eval:x", "", ".hidden", "x" * 101])
def test_a_method_name_that_is_not_a_safe_file_name_is_skipped(name):
    from lofit_bench.methods.zero_shot import ZeroShot

    unsafe = type("Unsafe", (ZeroShot,), {"name": name})
    host = plugins.PluginHost().load(entry_points=False)
    plugin = types.ModuleType("unsafe")
    plugin.register_methods = hookimpl(lambda register: register(unsafe))
    with pytest.warns(plugins.PluginWarning):
        host.register(plugin, "unsafe")
    assert name not in host.methods.names()


def test_plugin_warnings_are_one_line_once_and_typos_in_the_allowlist_are_named(tmp_path):
    site = tmp_path / "site"
    write_distribution(site, "broken-plugin", "lofit_bench_broken", "import lofit_bench_not_there\n")
    environment = os.environ | {"PYTHONPATH": str(site), plugins.ALLOWLIST_VARIABLE: "lofit_bench_broken,typo"}
    result = subprocess.run([sys.executable, "-m", "lofit_bench", "list", "tasks"], capture_output=True, text=True, env=environment)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("lofit-bench: warning: ") for line in lines), lines
    assert "'lofit_bench_broken' (broken-plugin) failed to import" in result.stderr
    assert "names typo, which no installed plugin provides" in result.stderr


def test_a_full_tuning_database_stops_the_sweep_cleanly_with_exit_3(capsys, tmp_path, monkeypatch):
    """SQLite's own "database or disk is full", raised under Optuna's storage as a full disk
    raises it (wrapped by SQLAlchemy, then by Optuna): the documented clean stop, not exit 1."""
    import sqlite3

    import optuna

    from lofit_bench.sweep.tuning import Tuner

    class FullDisk(sqlite3.Connection):
        def cursor(self, *args, **kwargs):
            return super().cursor(FullDiskCursor)

    class FullDiskCursor(sqlite3.Cursor):
        def execute(self, sql, *args, **kwargs):
            if sql.lstrip().upper().startswith("INSERT INTO TRIALS"):
                raise sqlite3.OperationalError("database or disk is full")
            return super().execute(sql, *args, **kwargs)

    def full_storage(self):
        return optuna.storages.RDBStorage(self.storage, engine_kwargs={"connect_args": {"factory": FullDisk}})

    monkeypatch.setattr(Tuner, "_storage", full_storage)
    out_dir = tmp_path / "out"
    arguments = ["run", "--methods", "repe", "--tasks", "mquake", *QUICK, "--tune", "on", "--seeds", "1,2", "--out", out_dir]
    code, out, err = run_cli(capsys, arguments)
    assert_one_error_line(code, out, err, 3, "the disk is full")
    assert "database or disk is full" in err and "rerun the same command" in err
    (path,) = records_in(out_dir)  # the sweep stopped after the first run: seed 2 never started
    record = strict_json(path)
    assert (record["seed"], record["status"], record["error"]["disk_full"]) == (1, "failed", True)


def test_under_a_file_size_limit_the_report_names_its_file_and_the_records_stay(copy_of_run):
    """``ulimit -f``: the real limit (RLIMIT_FSIZE) in a real process; Python ignores SIGXFSZ,
    so the write gets EFBIG. The summary is printed, the small files are written, the one
    that is too large is named with what to do, and the records are untouched."""
    import resource

    sizes = {path.name: path.stat().st_size for path in copy_of_run.glob("report.*") if path.is_file()}
    assert sizes["report.html"] > 4 * sizes["report.md"]
    for name in ("report.md", "report.html"):
        (copy_of_run / name).unlink()
    records = {path: path.read_bytes() for path in records_in(copy_of_run)}
    limit = 2 * sizes["report.md"]  # above every small file, below report.html

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, "-m", "lofit_bench", "report", str(copy_of_run)], capture_output=True,
                            text=True, preexec_fn=limit_file_size, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"{copy_of_run / 'report.html'} (File too large)" in line, line
    assert "ulimit -f" in line and f"lofit-bench report {copy_of_run}" in line
    assert "| zero-shot" in result.stdout  # the summary was printed before the file failed
    assert (copy_of_run / "report.md").is_file() and not (copy_of_run / "report.html").exists()
    assert not [path for path in copy_of_run.iterdir() if path.name.startswith(".report")]  # no half file left
    assert {path: path.read_bytes() for path in records_in(copy_of_run)} == records


def test_a_report_file_that_cannot_be_written_after_a_sweep_keeps_the_summary_and_the_records(capsys, tmp_path, monkeypatch):
    import lofit_bench.report.write

    real = lofit_bench.report.write.write_text_atomic

    def too_large(path, text):
        if Path(path).name == "report.html":
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        return real(path, text)

    monkeypatch.setattr(lofit_bench.report.write, "write_text_atomic", too_large)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, [*ZERO_SHOT[:-1], "--out", out_dir])  # not --quiet: the summary is printed
    assert_one_error_line(code, out, err, 2, f"{out_dir / 'report.html'} (File too large)")
    assert "| zero-shot" in out and "[1/1] zero-shot on mquake" in out
    (path,) = records_in(out_dir)
    assert strict_json(path)["status"] == "ok"
    assert (out_dir / "report.md").is_file() and (out_dir / "results.json").is_file()


def test_a_prompt_text_longer_than_max_length_is_refused_before_any_model_load(capsys, tmp_path, no_model_load):
    arguments = ["run", "--methods", "repe", "--tasks", "mquake", *QUICK, "--out", tmp_path / "out",
                 "--method-set", f"repe.negative_instruction={'x' * 100_000}"]
    code, out, err = run_cli(capsys, arguments)
    assert_one_error_line(code, out, err, 2, "repe.negative_instruction is 100,000 characters")
    assert "max_length 768 tokens (at most 98,304 characters, 128 per token)" in err and "--budget-set max_length=N" in err


def test_a_prompt_text_of_more_tokens_than_max_length_fails_its_run_as_soon_as_the_tokenizer_loads(capsys, tmp_path, monkeypatch):
    import lofit_bench.sweep.worker

    def no_work(*args, **kwargs):
        raise AssertionError("the run went on past the prompt-text check")

    monkeypatch.setattr(lofit_bench.sweep.worker, "measure_base", no_work)  # the first work after loading
    out_dir = tmp_path / "out"
    arguments = ["run", "--methods", "repe", "--tasks", "mquake", *QUICK, "--out", out_dir,
                 "--budget-set", "max_length=64", "--method-set", f"repe.positive_instruction={'y' * 100}"]
    code, out, err = run_cli(capsys, arguments)  # 100 characters pass the bound (64 x 128) but not the tokenizer
    assert code == 1 and "Traceback" not in out + err, err
    (path,) = records_in(out_dir)
    error = strict_json(path)["error"]
    assert error["type"] == "UserError"
    assert error["message"].startswith("repe.positive_instruction is 100 tokens (100 characters)")
    assert "max_length 64 tokens" in error["message"]

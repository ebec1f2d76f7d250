"""Studies: the paper's experiments as data. Every built-in study loads and plans; `list
studies` lists them; a plugin's study is listed and runs; a study run writes the paper-shaped
table beside the paper's numbers; Figure 2's run:TASK transfer reads the source run's heads."""

from __future__ import annotations

import json

import pytest
from plugin_helpers import install_entry_point_plugin
from report_helpers import fake_record, with_examples, write

from lofit_bench import plugins
from lofit_bench.budget import get_budget
from lofit_bench.cli import main
from lofit_bench.errors import UserError
from lofit_bench.report.build import render_markdown
from lofit_bench.report.write import build_report
from lofit_bench.sweep.runner import ModelSettings, plan_sweep
from lofit_bench.sweep.studies import BUILTIN_FOLDER, find_study, load_study

TINY = ModelSettings("tiny-random-llama", device="cpu")
BUILTIN = {"table1": 24, "table2": 30, "figure2": 30, "table3": 24, "figure4": 48, "figure5": 30, "appendix-g": 12}


@pytest.mark.usefixtures("builtin_plugins_only")
@pytest.mark.parametrize(("name", "runs"), sorted(BUILTIN.items()))
def test_every_builtin_study_loads_and_plans_two_seeds(name, runs):
    study = find_study(name)
    config = study.config
    assert config.seeds == [42, 43] and config.budget == "paper" and study.paper.get("cite", "Yin et al. 2024").startswith("Yin et al. 2024")
    specs = plan_sweep(config.methods, config.tasks, get_budget("smoke"), TINY, config.seeds, config.method_options,
                       method_grid=config.method_grid, budget_axis=config.budget_axis)
    assert len(specs) == runs and len({spec.key for spec in specs}) == runs


@pytest.mark.usefixtures("builtin_plugins_only")
def test_list_studies_names_every_builtin_and_a_bad_name_is_one_line(capsys):
    assert main(["list", "studies"]) == 0
    output = capsys.readouterr().out
    assert all(name in output for name in BUILTIN) and "paper Table 3" in output
    assert main(["run", "--study", "tabel3", "--out", "x"]) == 2
    assert "Did you mean 'table3'" in capsys.readouterr().err


def test_a_study_file_needs_its_study_table_and_a_valid_sweep(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('methods = ["zero-shot"]\ntasks = ["clutrr"]\n')
    with pytest.raises(UserError, match=r"needs a \[study\] table"):
        load_study(path)
    path.write_text('methods = ["zero-shot"]\ntasks = ["clutrr"]\nseeds = "x"\n[study]\nname = "mine"\n')
    with pytest.raises(UserError, match="seeds"):
        load_study(path)
    assert {item.stem for item in BUILTIN_FOLDER.glob("*.toml")} == set(BUILTIN)


PLUGIN_STUDY = '''
methods = ["zero-shot"]
tasks = ["clutrr"]
seeds = [1]
budget = "smoke"

[budget_overrides]
eval_examples = 2

[study]
name = "third-party"
title = "A third party's study"
description = "zero-shot on CLUTRR, shipped by a plugin"

[study.paper]
cite = "Somebody 2025, Table 9"
model = "Big-7B"
[study.paper.rows]
"zero-shot" = { "clutrr exact_match" = 12.5 }
'''

PLUGIN = '''
from pathlib import Path
from lofit_bench import hookimpl

@hookimpl
def register_studies(register):
    register(Path(__file__).with_name("third_party_study.toml"))
'''


def test_a_plugin_ships_a_study_that_is_listed_and_runs(tmp_path, monkeypatch, capsys):
    site = install_entry_point_plugin(tmp_path, monkeypatch, "study_plugin", PLUGIN, "study-plugin")
    (site / "third_party_study.toml").write_text(PLUGIN_STUDY)
    try:
        assert main(["list", "studies"]) == 0
        listing = capsys.readouterr().out
        assert "third-party" in listing and "A third party's study" in listing and "table1" in listing
        out = tmp_path / "study"
        code = main(["run", "--study", "third-party", "--model", "tiny-random-llama", "--out", str(out),
                     "--executor", "inline", "--quiet"])
        assert code == 0, capsys.readouterr().err
        assert json.loads((out / "study.json").read_text())["name"] == "third-party"
        markdown = (out / "report.md").read_text()
        assert "## Study third-party: A third party's study" in markdown
        assert "**paper: Big-7B (Somebody 2025, Table 9)**" in markdown and "| zero-shot | 12.5" in markdown
    finally:
        plugins.reset_host()


def test_paper_shaped_table_has_task_columns_avg_params_and_seed_spread(tmp_path):
    def record(method, seed, task, **metrics):
        item = fake_record(method, seed, 0.0, task=task)
        item["task"]["metrics"] = list(metrics)
        item["task"]["primary_metric"] = next(iter(metrics))
        item["metrics"] = metrics
        return item

    write(tmp_path, [
        record("lofit", 42, "truthfulqa", mc1=0.5, mc2=0.6), record("lofit", 43, "truthfulqa", mc1=0.7, mc2=0.8),
        record("lofit", 42, "clutrr", exact_match=0.3), record("lofit", 43, "clutrr", exact_match=0.5),
        record("zero-shot", 42, "clutrr", exact_match=0.1),
    ])
    markdown = render_markdown(build_report(tmp_path))
    summary = markdown.split("## Summary in the paper's layout", 1)[1].split("\n## ", 1)[0]
    assert "| method    | truthfulqa mc1   | truthfulqa mc2   | clutrr exact_match   | Avg         | # params   | % params   | seeds   |" in summary
    # Avg per seed: (0.5 + 0.6 + 0.3) / 3 = 0.467 and (0.7 + 0.8 + 0.5) / 3 = 0.667 -> 56.7 ± 14.1
    assert "| lofit     | 60.0 ± 14.1      | 70.0 ± 14.1      | 40.0 ± 14.1          | 56.7 ± 14.1 | 4.10K      | 0.003%     | 2       |" in summary
    assert "| zero-shot | -                | -                | 10.0                 | -           | 4.10K      | 0.003%     | 1       |" in summary
    assert markdown.index("## Summary in the paper's layout") < markdown.index("## clutrr on")  # at the top
    sections = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert sections[0]["tables"][0]["rows"][0][:4] == ["lofit", "60.0 ± 14.1", "70.0 ± 14.1", "40.0 ± 14.1"]


def test_significance_marks_against_the_studys_row(tmp_path):
    same_task = with_examples(fake_record("lofit", 42, 0.9), [1.0] * 40)
    worse = with_examples(fake_record("lofit", 42, 0.5), [1.0] * 20 + [0.0] * 20)
    same_task["method"]["options"] = {"head_source": "lofit"}
    worse["method"]["options"] = {"head_source": "random"}
    write(tmp_path, [same_task, worse])
    (tmp_path / "study.json").write_text(json.dumps({"name": "figure2", "title": "t", "compare_against": 'lofit [head_source="lofit"]'}))
    markdown = render_markdown(build_report(tmp_path))
    assert '| lofit [head_source="random"] | 50.0*' in markdown
    assert '| lofit [head_source="lofit"]  | 90.0 ' in markdown


@pytest.mark.usefixtures("builtin_plugins_only")
def test_figure2_transfer_runs_the_source_first_and_tunes_on_its_heads(tmp_path, capsys):
    out = tmp_path / "figure2"
    code = main(["run", "--study", "figure2", "--model", "tiny-random-llama", "--budget", "smoke", "--tasks", "clutrr,mquake",
                 "--grid", 'lofit.head_source=["lofit","run:clutrr"]', "--seeds", "1", "--tune", "off",
                 "--method-set", "lofit.stage2_learning_rate=0.01", "--budget-set", "train_examples=4",
                 "--budget-set", "eval_examples=2", "--budget-set", "max_length=1024", "--executor", "inline", "--quiet",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(path.read_text()) for path in (out / "records").glob("*.json")]
    by_source = {(record["method"]["options"]["head_source"], record["task"]["name"]): record for record in records}
    assert len(records) == 4
    source = by_source[("lofit", "clutrr")]["folds"]["main"]["fit"]
    for task in ("clutrr", "mquake"):
        transfer = by_source[("run:clutrr", task)]["folds"]["main"]["fit"]
        assert transfer["heads"]["chosen"] == source["heads"]["chosen"]
        assert transfer["head_source"]["file_task"] == "clutrr" and transfer["stages"]["head_selection"] is None
    assert 'lofit [head_source="run:clutrr"]' in (out / "report.md").read_text()


@pytest.mark.usefixtures("builtin_plugins_only")
def test_methods_narrow_a_study_and_drop_the_options_of_the_others(capsys, tmp_path):
    out = tmp_path / "narrow"
    code = main(["run", "--study", "table1", "--methods", "zero-shot", "--tasks", "clutrr", "--model", "tiny-random-llama",
                 "--budget", "smoke", "--budget-set", "eval_examples=2", "--seeds", "1", "--executor", "inline", "--quiet",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert [path.name.split("--")[0] for path in (out / "records").glob("*.json")] == ["zero-shot"]
    markdown = (out / "report.md").read_text()
    assert "| zero-shot | 0.0                  | 0.0   |" in markdown  # ours: CLUTRR only
    assert "| zero-shot | 28.4             | 43.4             | 18.9                 | 64.7                 | 38.8  |" in markdown


@pytest.mark.usefixtures("builtin_plugins_only")
def test_run_task_without_its_source_in_the_sweep_fails_before_any_run(capsys, tmp_path):
    code = main(["run", "--methods", "lofit", "--tasks", "mquake", "--method-set", 'lofit.head_source="run:clutrr"',
                 "--model", "tiny-random-llama", "--budget", "smoke", "--out", str(tmp_path)])
    assert code == 2 and "add clutrr to --tasks" in capsys.readouterr().err


STUDY_CHECKS = {
    "table1": "**paper: Llama-2-7B (Yin et al. 2024, Table 1)**",
    "table2": '| lofit [head_source="probe-layers"]',
    "figure2": '| lofit [head_source="run:mquake"]',
    "table3": "**paper: Llama-2-7B (Yin et al. 2024, Table 3)**",
    "figure4": "## Primary metric against train_examples (declared axis)",
    "figure5": "## Primary metric against lofit.heads (declared axis)",
    "appendix-g": "## Head overlap (Jaccard, paper Appendix G)",
}


@pytest.mark.slow
@pytest.mark.usefixtures("builtin_plugins_only")
@pytest.mark.parametrize("name", sorted(STUDY_CHECKS))
def test_every_study_runs_end_to_end_on_the_tiny_model(name, tmp_path, capsys):
    """Each built-in study, whole (its methods, tasks, grid and axis; one seed, two for
    appendix-g's overlap across seeds), on the tiny model with the smoke budget, untuned."""
    out = tmp_path / name
    arguments = ["run", "--study", name, "--model", "tiny-random-llama", "--budget", "smoke", "--tune", "off",
                 "--budget-set", "eval_examples=2", "--seeds", "42,43" if name == "appendix-g" else "42",
                 "--executor", "inline", "--quiet", "--out", str(out)]
    if name == "figure4":
        arguments += ["--budget-axis", "train_examples=[4,8]"]
    assert main(arguments) == 0, capsys.readouterr().err
    records = [json.loads(path.read_text()) for path in (out / "records").glob("*.json")]
    assert records and all(record["status"] == "ok" for record in records)
    markdown = (out / "report.md").read_text()
    assert f"## Study {name}: " in markdown and STUDY_CHECKS[name] in markdown


def _readme_block(after: str, language: str) -> str:
    readme = (BUILTIN_FOLDER.parents[2] / "README.md").read_text()
    return readme.split(after, 1)[1].split(f"```{language}\n", 1)[1].split("```", 1)[0]


@pytest.mark.usefixtures("builtin_plugins_only")
def test_the_readmes_study_file_and_sweep_file_load_and_plan(tmp_path):
    study_file = tmp_path / "my-study.toml"
    study_file.write_text(_readme_block("A study file (here with", "toml"))
    study = load_study(study_file)
    assert study.name == "my-study" and study.compare_against == "lofit [heads=0.03]"
    config = study.config
    specs = plan_sweep(config.methods, config.tasks, get_budget("smoke"), TINY, config.seeds, config.method_options,
                       method_grid=config.method_grid)
    assert len(specs) == 6  # zero-shot + two LoFiT configs, two seeds
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(_readme_block("- **Sweep files.**", "toml"))
    from lofit_bench.sweep.sweep_file import load_sweep_config

    sweep = load_sweep_config(sweep_file)
    assert sweep.method_grid == {"iti": {"alpha": [5.0, 15.0]}} and sweep.budget_axis == {"train_examples": [50, 100]}

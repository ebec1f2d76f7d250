"""`lofit-bench compare`: rankings of methods across models, from records alone."""

from __future__ import annotations

import json

import pytest
from report_helpers import fake_record, with_examples, write

from lofit_bench.budget import get_budget
from lofit_bench.cli import main
from lofit_bench.errors import UserError
from lofit_bench.report.compare import compare_folders, render_markdown


def run(model: str, method: str, correct: int, total: int = 60, task: str = "clutrr", **options) -> dict:
    """A record whose first ``correct`` of ``total`` test examples are right."""
    values = [1.0] * correct + [0.0] * (total - correct)
    record = with_examples(fake_record(method, 1, correct / total, model=model, task=task, **options), values)
    record["folds"]["main"]["eval_size"] = total
    return record


@pytest.fixture
def two_models(tmp_path):
    """Model a ranks lora > lofit > iti; model b ranks lofit > lora > iti, lofit and lora one example apart."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, [run("model-a", "lora", 50), run("model-a", "lofit", 30), run("model-a", "iti", 5)])
    write(b, [run("model-b", "lora", 40), run("model-b", "lofit", 41), run("model-b", "iti", 2)])
    return a, b


def test_ranks_side_by_side_and_kendall_tau(two_models):
    comparison = compare_folders(list(two_models))
    assert comparison.models == ["model-a", "model-b"]  # the folders' order
    (task,) = comparison.tasks
    assert task.methods == ["lora", "lofit", "iti"]  # the first model's ranking
    assert [task.cells[("lora", model)].rank for model in comparison.models] == [1, 2]
    assert task.cells[("lofit", "model-b")].score == pytest.approx(41 / 60)
    (agreement,) = task.agreements
    assert (agreement.concordant, agreement.discordant, agreement.tied) == (2, 1, 0)
    assert agreement.kendall_tau_b == pytest.approx(1 / 3)


def test_a_reversal_carries_each_models_p_value(two_models):
    (reversal,) = compare_folders(list(two_models)).tasks[0].agreements[0].reversals
    assert (reversal.first, reversal.second) == ("lora", "lofit")  # as on the first model
    p_on_a, p_on_b = reversal.p_values
    assert p_on_a < 0.001  # 20 examples apart on 60: a clear order
    assert p_on_b > 0.5  # one example apart: noise
    assert reversal.significant_on == 1
    markdown = render_markdown(compare_folders(list(two_models)))
    assert "| lora     | 83.3 (1)" in markdown
    assert "Kendall's tau-b 0.33 over 3 methods" in markdown
    assert "significant on one model only" in markdown


def test_ties_share_a_rank_and_missing_methods_say_so(tmp_path):
    write(tmp_path / "a", [run("model-a", "lora", 30), run("model-a", "iti", 0), run("model-a", "zero-shot", 0)])
    write(tmp_path / "b", [run("model-b", "lora", 30), run("model-b", "zero-shot", 0)])
    comparison = compare_folders([tmp_path / "a", tmp_path / "b"])
    task = comparison.tasks[0]
    assert (task.cells[("iti", "model-a")].rank, task.cells[("iti", "model-a")].tied) == (2, True)
    markdown = render_markdown(comparison)
    assert "0.0 (2=)" in markdown and "not run" in markdown
    assert task.agreements[0].methods == 2  # iti ran on one model only


def test_a_method_that_ran_on_both_with_only_ties_has_no_tau(tmp_path):
    write(tmp_path / "a", [run("model-a", "iti", 0), run("model-a", "zero-shot", 0)])
    write(tmp_path / "b", [run("model-b", "iti", 3), run("model-b", "zero-shot", 0)])
    agreement = compare_folders([tmp_path / "a", tmp_path / "b"]).tasks[0].agreements[0]
    assert agreement.kendall_tau_b is None and agreement.tied == 1


def test_one_table_per_task_and_task_filter(tmp_path):
    write(tmp_path / "a", [run("model-a", "lora", 30), run("model-a", "lora", 20, task="mquake")])
    write(tmp_path / "b", [run("model-b", "lora", 10), run("model-b", "lora", 25, task="mquake")])
    assert [task.task for task in compare_folders([tmp_path / "a", tmp_path / "b"]).tasks] == ["clutrr", "mquake"]
    assert [task.task for task in compare_folders([tmp_path / "a", tmp_path / "b"], ["mquake"]).tasks] == ["mquake"]
    with pytest.raises(UserError, match="tasks here: clutrr, mquake"):
        compare_folders([tmp_path / "a", tmp_path / "b"], ["truthfulqa"])


def test_one_model_only_is_refused(tmp_path):
    write(tmp_path / "a", [run("model-a", "lora", 30), run("model-a", "iti", 0)])
    with pytest.raises(UserError, match="one model only"):
        compare_folders([tmp_path / "a"])


def test_the_same_run_in_two_folders_counts_once_but_two_runs_are_refused(tmp_path):
    write(tmp_path / "a", [run("model-a", "lora", 30)])
    write(tmp_path / "copy", [run("model-a", "lora", 30)])  # the same key: a copy
    write(tmp_path / "b", [run("model-b", "lora", 10)])
    comparison = compare_folders([tmp_path / "a", tmp_path / "copy", tmp_path / "b"])
    assert comparison.tasks[0].cells[("lora", "model-a")].seeds == 1
    other = run("model-a", "lora", 50)
    other["key"] = "another-run"  # e.g. an untuned folder of the same model
    write(tmp_path / "untuned", [other])
    with pytest.raises(UserError, match="two runs of lora on clutrr"):
        compare_folders([tmp_path / "a", tmp_path / "untuned", tmp_path / "b"])


def test_different_budgets_sizes_and_failed_runs_are_stated(tmp_path):
    write(tmp_path / "a", [run("model-a", "lora", 30), run("model-a", "iti", 3)])
    failed = fake_record("lofit", 1, 0.0, status="failed", model="model-b")
    write(tmp_path / "b", [run("model-b", "lora", 10, total=40, budget=get_budget("paper")), run("model-b", "iti", 1, total=40), failed])
    comparison = compare_folders([tmp_path / "a", tmp_path / "b"])
    markdown = render_markdown(comparison)
    assert "the runs compared used different budgets" in markdown
    assert "clutrr: the models were scored on different numbers of test examples (model-a: 60, model-b: 40)" in markdown
    assert "lofit on clutrr (seed 1, model-b): RuntimeError: boom" in markdown


def test_cli_prints_and_writes_the_comparison(two_models, tmp_path, capsys):
    out = tmp_path / "comparison"
    assert main(["compare", *map(str, two_models), "--out", str(out)]) == 0
    assert "## clutrr" in capsys.readouterr().out
    data = json.loads((out / "comparison.json").read_text())
    assert data["models"] == ["model-a", "model-b"]
    assert data["tasks"][0]["agreements"][0]["reversals"][0]["first"] == "lora"
    assert (out / "comparison.md").read_text().startswith("# lofit-bench: method rankings across models")
    assert main(["compare", str(two_models[0])]) == 2  # one model: a one-line error, not a traceback
    assert "one model only" in capsys.readouterr().err


def test_comparison_html_has_a_rank_plot_in_the_reports_method_styles(two_models, tmp_path):
    from lofit_bench.report.compare_html import rank_figure
    from lofit_bench.report.plot_style import BUILTIN_STYLES

    comparison = compare_folders(list(two_models))
    figure = rank_figure(comparison)
    lines = {line.get_gid(): line for line in figure.axes[0].get_lines() if line.get_gid()}
    assert list(lines["lora"].get_ydata()) == [1, 2] and list(lines["lofit"].get_ydata()) == [2, 1]
    assert lines["lora"].get_color() == BUILTIN_STYLES["lora"][0]  # the colour lora has in every report
    assert figure.axes[0].yaxis_inverted()  # rank 1 at the top
    out = tmp_path / "comparison"
    assert main(["compare", *map(str, two_models), "--out", str(out)]) == 0
    page = (out / "comparison.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and 'href="#task-clutrr"' in page and 'id="task-clutrr"' in page
    assert "lora &gt; lofit on model-a" in page

"""Several configs of one method in one sweep (a grid) and a declared budget axis: one record
per config with distinct keys, one report row per config labelled by what differs, a plot
along the axis and no mixed-budget warning for it, while any other differing field still warns."""

from __future__ import annotations

import json

import pytest
from report_helpers import fake_record, write

from lofit_bench.budget import get_budget
from lofit_bench.cli import main
from lofit_bench.errors import UserError
from lofit_bench.report.build import render_markdown
from lofit_bench.report.write import build_report
from lofit_bench.sweep.runner import ModelSettings, plan_sweep
from lofit_bench.sweep.sweep_file import load_sweep_config

pytestmark = pytest.mark.usefixtures("builtin_plugins_only")
TINY = ModelSettings("tiny-random-llama", device="cpu")


def test_a_grid_and_a_budget_axis_give_one_spec_per_combination_with_distinct_keys():
    specs = plan_sweep(["lofit"], ["clutrr"], get_budget("smoke"), TINY, [1], {"lofit": {"stage2_learning_rate": 0.01}},
                       method_grid={"lofit": {"heads": [1, 2, 3]}}, budget_axis={"train_examples": [8, 16]})
    assert len(specs) == 6 and len({spec.key for spec in specs}) == 6
    assert sorted((spec.method_options["heads"], spec.budget.train_examples) for spec in specs) == [
        (heads, examples) for heads in (1, 2, 3) for examples in (8, 16)]
    assert all(spec.method_options["stage2_learning_rate"] == 0.01 for spec in specs)
    assert {spec.axes for spec in specs} == {("lofit.heads", "train_examples")}


@pytest.mark.parametrize(("grid", "axis", "message"), [
    ({"lofit": {"heads": [0]}}, {}, "at least 1"),
    ({"iti": {"heads": [1]}}, {}, "a grid were given for method 'iti'"),
    ({"lofit": {"stage2_learning_rate": [0.1]}}, {}, "set and on a grid at once"),
    ({}, {"train_exemples": [1]}, "unknown budget field"),
    ({}, {"train_examples": [0]}, "at least 1"),
])
def test_bad_grids_fail_before_any_run(grid, axis, message):
    with pytest.raises(UserError, match=message):
        plan_sweep(["lofit"], ["clutrr"], get_budget("smoke"), TINY, [1], {"lofit": {"stage2_learning_rate": 0.01}},
                   method_grid=grid, budget_axis=axis)


def test_grid_values_must_be_a_json_list_on_the_command_line(capsys, tmp_path):
    code = main(["run", "--methods", "iti", "--tasks", "clutrr", "--grid", "iti.heads=2", "--out", str(tmp_path)])
    assert code == 2 and "needs a JSON list of values" in capsys.readouterr().err


def test_a_sweep_file_declares_grid_and_axis(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('methods = ["lofit"]\ntasks = ["clutrr"]\n[method_grid.lofit]\nheads = [0.03, 0.1]\n'
                    '[budget_axis]\ntrain_examples = [16, 32]\n')
    config = load_sweep_config(path)
    assert config.method_grid == {"lofit": {"heads": [0.03, 0.1]}} and config.budget_axis == {"train_examples": [16, 32]}
    path.write_text('[budget_axis]\ntrain_examples = 16\n')
    with pytest.raises(UserError, match="budget_axis train_examples needs a JSON list"):
        load_sweep_config(path)


def test_a_grid_run_on_the_command_line_gives_one_record_and_row_per_config(capsys, tmp_path):
    out = tmp_path / "grid"
    code = main(["run", "--methods", "iti", "--tasks", "clutrr", "--model", "tiny-random-llama", "--budget", "smoke",
                 "--budget-set", "eval_examples=2", "--grid", "iti.heads=[1,2]", "--grid", "iti.alpha=[0.0,5.0]",
                 "--seeds", "1", "--out", str(out), "--executor", "inline", "--quiet"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(path.read_text()) for path in (out / "records").glob("*.json")]
    assert len(records) == 4 and len({record["key"] for record in records}) == 4
    assert all(record["axes"] == ["iti.alpha", "iti.heads"] for record in records)
    labels = {row.method for row in build_report(out).summary}
    assert labels == {f"iti [alpha={alpha}, heads={heads}]" for alpha in ("0.0", "5.0") for heads in (1, 2)}
    markdown = render_markdown(build_report(out))
    assert "## Primary metric against iti.heads (declared axis)" in markdown
    assert "| iti [alpha=5.0] " in markdown  # the series along heads is labelled without heads


def _on_axis(record: dict, examples: int, **budget) -> dict:
    record["budget"] = get_budget("smoke").replace(train_examples=examples, **budget).to_dict()
    record["axes"] = ["train_examples"]
    return record


def test_a_declared_axis_is_plotted_and_not_flagged_but_another_differing_field_is(tmp_path):
    write(tmp_path, [_on_axis(fake_record("lofit", seed, value), examples)
                     for seed, examples, value in ((1, 16, 0.2), (2, 16, 0.4), (1, 64, 0.6), (2, 64, 0.8))])
    report = build_report(tmp_path)
    markdown = render_markdown(report)
    assert "different budgets" not in markdown
    assert {row.method: row.metrics["exact_match"][0] for row in report.summary} == pytest.approx(
        {"lofit [train_examples=16]": 0.3, "lofit [train_examples=64]": 0.7})
    assert "| method   | train_examples=16   | train_examples=64   |" in markdown
    assert "| lofit    | 30.0 ± 14.1         | 70.0 ± 14.1         |" in markdown
    html = (tmp_path / "report.html").read_text()
    assert "Primary metric against train_examples" in html and html.count("data:image/png") >= 4  # the axis plot too

    other = tmp_path / "other"
    write(other, [_on_axis(fake_record("lofit", 1, 0.2), 16), _on_axis(fake_record("lofit", 1, 0.6), 64, epochs=3)])
    markdown = render_markdown(build_report(other))
    assert "different budgets: epochs = 1 for" in markdown and "train_examples =" not in markdown


def test_an_axis_only_some_runs_declare_is_still_flagged(tmp_path):
    undeclared = fake_record("lofit", 1, 0.2, budget=get_budget("smoke").replace(train_examples=64))
    write(tmp_path, [_on_axis(fake_record("lofit", 1, 0.2), 16), undeclared])
    assert "different budgets: train_examples" in render_markdown(build_report(tmp_path))

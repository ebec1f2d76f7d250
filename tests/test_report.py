"""Reports are built from records alone: tables, CSV, seeds aggregated, mixed budgets flagged."""

from __future__ import annotations

import csv
import json

import pytest
from report_helpers import fake_record, with_examples, write

from lofit_bench.budget import get_budget
from lofit_bench.errors import LofitBenchWarning, UserError
from lofit_bench.records.store import RECORD_SCHEMA
from lofit_bench.report.build import render_markdown
from lofit_bench.report.write import build_report


def test_seeds_are_aggregated_as_mean_and_std(tmp_path):
    write(tmp_path, [fake_record("lofit", 1, 0.5), fake_record("lofit", 2, 0.7), fake_record("zero-shot", 1, 0.1)])
    report = build_report(tmp_path)
    assert "| lofit" in render_markdown(report) and "60.0 ± 14.1" in render_markdown(report)
    assert "| zero-shot" in render_markdown(report) and "10.0" in render_markdown(report)
    assert "4.10K" in render_markdown(report)
    assert "peak RSS over model (CPU, MiB)" in render_markdown(report)
    assert (tmp_path / "report.md").read_text().strip() == render_markdown(report).strip()
    with open(tmp_path / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert {row["metric:exact_match"] for row in rows} == {"0.5", "0.7", "0.1"}
    assert rows[0]["memory_kind"] == "cpu_peak_rss_delta"


def test_failed_runs_are_listed_and_mixed_budgets_flagged(tmp_path):
    write(
        tmp_path,
        [
            fake_record("lofit", 1, 0.5),
            fake_record("lofit", 2, 0.0, status="failed"),
            fake_record("zero-shot", 1, 0.1, budget=get_budget("paper")),
        ],
    )
    report = build_report(tmp_path)
    assert "## Failed runs" in render_markdown(report) and "RuntimeError: boom" in render_markdown(report)
    assert "different budgets" in render_markdown(report)


def test_empty_or_broken_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no run records"):
        build_report(tmp_path)
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "bad.json").write_text("{")
    with pytest.warns(LofitBenchWarning, match="bad.json: not valid JSON"), pytest.raises(UserError, match="no run records"):
        build_report(tmp_path)  # a bad file is named and skipped, never the end of the report


def test_foreign_json_files_are_ignored(tmp_path):
    write(tmp_path, [fake_record("lofit", 1, 0.5)])
    (tmp_path / "records" / "other.json").write_text(json.dumps({"hello": 1}))
    assert len(build_report(tmp_path).rows) == 1


def test_p_value_against_lofit_on_paired_examples(tmp_path):
    lofit = [1.0] * 40 + [0.0] * 10
    same = list(lofit)
    worse = [0.0] * 30 + [1.0] * 10 + [0.0] * 10
    write(
        tmp_path,
        [
            with_examples(fake_record("lofit", 1, 0.8), lofit),
            with_examples(fake_record("zero-shot", 1, 0.8), same),
            with_examples(fake_record("iti", 1, 0.2), worse),
        ],
    )
    assert all(row.p_value is None for row in build_report(tmp_path).summary)  # no reference chosen: no p-values
    summary = {row.method: row for row in build_report(tmp_path, reference="lofit").summary}
    assert summary["lofit"].p_value is None
    assert summary["zero-shot"].p_value == 1.0
    assert summary["iti"].p_value < 0.001
    markdown = (tmp_path / "report.md").read_text()
    assert "p vs lofit" in markdown and "<0.001" in markdown


def test_json_and_self_contained_html_are_written(tmp_path):
    write(tmp_path, [with_examples(fake_record("lofit", 1, 0.5), [1.0, 0.0]), fake_record("zero-shot", 1, 0.1)])
    build_report(tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert {row["method"] for row in data["summary"]} == {"lofit", "zero-shot"}
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    assert page.count("data:image/png;base64,") >= 3
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_pareto_front():
    from lofit_bench.report.html import pareto_front

    # (cost, accuracy): the cheap-and-bad and the costly-and-good points are on the front,
    # the costly-and-bad one is not.
    assert pareto_front([(1, 0.2), (100, 0.9), (1000, 0.5)]) == [0, 1]


def test_two_configs_of_one_method_are_not_averaged_as_seeds(tmp_path):
    tuned = fake_record("lofit", 1, 0.4)
    tuned["method"]["options"] = {"stage2_learning_rate": 0.3}
    write(tmp_path, [fake_record("lofit", 1, 0.1), tuned])
    rows = {row.method: row for row in build_report(tmp_path).summary}
    assert set(rows) == {"lofit", "lofit [stage2_learning_rate=0.3]"}
    assert rows["lofit"].metrics["exact_match"][0] == 0.1


def test_a_budget_differing_in_one_field_is_flagged_by_name(tmp_path):
    write(tmp_path, [fake_record("lofit", 1, 0.5), fake_record("iti", 1, 0.1, budget=get_budget("smoke").replace(dev_examples=50))])
    markdown = render_markdown(build_report(tmp_path))
    assert "different budgets: dev_examples = 50 for iti/clutrr/seed 1; 8 for lofit/clutrr/seed 1" in markdown


def test_time_table_splits_each_run_into_its_fit_parts(tmp_path):
    timed = fake_record("lofit", 1, 0.5)
    timed["timings"] = {"load_model": 1.5, "fit": 100.0, "evaluate": 20.0, "total_s": 121.5,
                        "fit_phases": {"head_selection": 60.0, "bias_tuning": 38.0, "other": 2.0}}
    write(tmp_path, [timed, fake_record("zero-shot", 1, 0.1), fake_record("iti", 1, 0.2, status="failed")])
    markdown = render_markdown(build_report(tmp_path))
    section = markdown.split("## Where the time went")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "method" not in line]
    assert len(rows) == 2  # finished runs only
    assert "head_selection 60, bias_tuning 38, other 2" in section
    assert "| zero-shot" in section and " - " in section  # a record without parts


# -- what a report must never get wrong ---------------------------------------------------------
def test_records_of_two_models_are_never_averaged_or_paired(tmp_path):
    other = with_examples(fake_record("lofit", 1, 0.9), [1.0] * 20)
    other["model"] = {"name": "smollm2-135m"}
    write(tmp_path, [with_examples(fake_record("lofit", 1, 0.1), [0.0] * 20),
                     with_examples(fake_record("zero-shot", 1, 0.0), [0.0] * 20), other])
    report = build_report(tmp_path, reference="lofit")
    rows = {(row.model, row.method): row for row in report.summary}
    assert set(rows) == {("tiny-random-llama", "lofit"), ("tiny-random-llama", "zero-shot"), ("smollm2-135m", "lofit")}
    assert all(len(row.seeds) == 1 for row in rows.values())
    assert rows[("smollm2-135m", "lofit")].metrics["exact_match"] == (0.9, None)
    assert rows[("tiny-random-llama", "zero-shot")].p_value == 1.0  # paired with its own model's LoFiT
    assert "## clutrr on smollm2-135m" in render_markdown(report) and "## clutrr on tiny-random-llama" in render_markdown(report)
    assert "runs of different models are never averaged" in render_markdown(report)


def test_one_model_name_with_two_fingerprints_is_two_models(tmp_path):
    first, second = fake_record("lofit", 1, 0.1), fake_record("lofit", 2, 0.9)
    first["model"] = {"name": "my-folder", "fingerprint": "aaaaaaaa1111"}
    second["model"] = {"name": "my-folder", "fingerprint": "bbbbbbbb2222"}
    write(tmp_path, [first, second])
    assert sorted(row.model for row in build_report(tmp_path).summary) == ["my-folder (aaaaaaaa)", "my-folder (bbbbbbbb)"]


def test_reference_method_is_an_option_and_unknown_ones_are_refused(tmp_path):
    write(tmp_path, [with_examples(fake_record("iti", 1, 0.8), [1.0] * 40),
                     with_examples(fake_record("zero-shot", 1, 0.0), [0.0] * 40)])
    report = build_report(tmp_path)
    assert report.reference is None and "p vs -" in render_markdown(report)  # none chosen: no p-values
    assert "--reference METHOD" in render_markdown(report)
    report = build_report(tmp_path, reference="iti")
    rows = {row.method: row for row in report.summary}
    assert rows["iti"].p_value is None and rows["zero-shot"].p_value < 0.001
    assert "p vs iti" in render_markdown(report) and "p-values against: iti" in render_markdown(report)
    with pytest.raises(UserError, match="Methods here: iti, zero-shot"):
        build_report(tmp_path, reference="lofti")


def test_reference_with_options_still_gives_p_values(tmp_path):
    tuned = with_examples(fake_record("lofit", 1, 0.9), [1.0] * 40)
    tuned["method"]["options"] = {"stage2_learning_rate": 0.3}
    other = with_examples(fake_record("lofit", 1, 0.5), [1.0] * 20 + [0.0] * 20)
    other["method"]["options"] = {"stage2_learning_rate": 0.01}
    write(tmp_path, [tuned, other, with_examples(fake_record("zero-shot", 1, 0.0), [0.0] * 40)])
    report = build_report(tmp_path, reference="lofit")
    rows = {row.method: row for row in report.summary}
    assert rows["zero-shot"].reference == "lofit [stage2_learning_rate=0.01]"
    assert rows["zero-shot"].p_value is not None and rows["zero-shot"].p_value < 0.001
    assert "p vs lofit [stage2_learning_rate=0.01]" in render_markdown(report)
    assert "method options set for these runs (the rest are the methods' defaults): lofit stage2_learning_rate=0.01; " \
           "lofit stage2_learning_rate=0.3" in render_markdown(report)


def test_bootstrap_p_value_is_never_zero():
    from lofit_bench.report.stats import paired_bootstrap_p_value

    better = {("main", str(index)): 1.0 for index in range(50)}
    worse = {("main", str(index)): 0.0 for index in range(50)}
    assert paired_bootstrap_p_value(better, worse, samples=999) == pytest.approx(2 / 1000)


def test_budget_overrides_are_stated_in_every_format(tmp_path):
    write(tmp_path, [fake_record("lofit", 1, 0.5, budget=get_budget("smoke").replace(max_length=1024))])
    report = build_report(tmp_path)
    assert "smoke (overridden: max_length)" in render_markdown(report) and "max_length 1024" in render_markdown(report)
    with open(tmp_path / "results.csv") as handle:
        assert next(csv.DictReader(handle))["budget"] == "smoke (max_length=1024)"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["summary"][0]["budget"] == "smoke (max_length=1024)"
    assert data["budget_fields"][0]["max_length"] == 1024
    assert "smoke (overridden: max_length)" in (tmp_path / "report.html").read_text()


def test_records_of_different_library_versions_are_flagged(tmp_path):
    old, new = fake_record("lofit", 1, 0.5), fake_record("zero-shot", 1, 0.1)
    old["environment"] = {"git_commit": "abc", "versions": {"torch": "2.12.0", "trl": "1.0"}}
    new["environment"] = {"git_commit": "abc", "versions": {"torch": "2.13.0", "trl": "1.0"}}
    write(tmp_path, [old, new])
    report = build_report(tmp_path)
    warnings = [line.text for line in report.header if line.warning]
    assert len(warnings) == 1 and warnings[0].startswith("runs in this folder come from different versions: torch")
    assert "2.12.0" in warnings[0] and "lofit/clutrr/seed 1" in warnings[0]
    assert "warning: runs in this folder come from different versions" in (tmp_path / "report.html").read_text()


def test_html_has_a_heatmap_for_every_run_that_chose_heads(tmp_path):
    from lofit_bench.engine.heads import HEADS_FILE, HeadSelection

    records = []
    for seed in range(8):  # more than any cap: every selection must be drawn
        record = fake_record("lofit", seed, 0.1 * seed)
        record["artifacts"] = f"artifacts/lofit-{seed}"
        folder = tmp_path / record["artifacts"] / "main"
        folder.mkdir(parents=True)
        selection = HeadSelection(source="lofit", chosen=[(seed % 2, 1)], shape={"n_layers": 2, "n_heads": 4, "head_dim": 8},
                                  ranking=[(layer, head, float(layer + head)) for layer in range(2) for head in range(4)])
        selection.save(folder / HEADS_FILE)
        records.append(record)
    records.append(fake_record("zero-shot", 1, 0.0))
    write(tmp_path, records)
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    for seed in range(8):
        assert f'alt="heads of lofit on clutrr (tiny-random-llama, seed {seed}, fold main)"' in page


def test_scatter_axes_are_labelled_by_their_cost(tmp_path):
    from lofit_bench.report.html import scatter_figure

    write(tmp_path, [fake_record("lofit", 1, 0.5), fake_record("zero-shot", 1, 0.1)])
    figure = scatter_figure(build_report(tmp_path, write=False).summary, lambda row: row.trainable_parameters,
                            "trainable parameters (log; 0 drawn at 1)", True)
    assert figure.axes[0].get_xlabel() == "trainable parameters (log; 0 drawn at 1)"


def test_methods_on_one_spot_are_named_in_the_legend(tmp_path):
    from lofit_bench.report.html import scatter_figure

    write(tmp_path, [fake_record("lofit", 1, 0.5), fake_record("zero-shot", 1, 0.0), fake_record("iti", 1, 0.0)])
    figure = scatter_figure(build_report(tmp_path, write=False).summary, lambda row: row.trainable_parameters,
                            "trainable parameters (log; 0 drawn at 1)", True)
    assert len(figure.axes[0].texts) == 0  # no labels to draw over each other: a legend names the methods
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["iti", "lofit", "zero-shot"]


def test_report_files_are_replaced_atomically(tmp_path, monkeypatch):
    from lofit_bench.report import html as report_html

    write(tmp_path, [fake_record("lofit", 1, 0.5)])
    build_report(tmp_path)
    before = (tmp_path / "report.html").read_text()

    def broken(*arguments, **keywords):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(report_html, "bars_figure", broken)
    with pytest.raises(RuntimeError):
        build_report(tmp_path)
    assert (tmp_path / "report.html").read_text() == before  # the old page, not half a new one
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_a_record_of_a_newer_schema_or_invalid_shape_is_reported_in_the_report(tmp_path):
    newer = fake_record("iti", 1, 0.5) | {"schema": RECORD_SCHEMA + 1}
    misspelt = fake_record("iti", 2, 0.5) | {"metrcs": {}}
    write(tmp_path, [fake_record("lofit", 1, 0.5), newer, misspelt])
    with pytest.warns(LofitBenchWarning):
        report = build_report(tmp_path)
    assert [row.method for row in report.summary] == ["lofit"]
    markdown = render_markdown(report)
    assert "left out 1.json: a record of schema 2, newer than this lofit-bench reads (1); upgrade lofit-bench" in markdown
    assert "left out 2.json: not a valid run record: metrcs: Unexpected keyword argument" in markdown


def test_the_report_says_what_runs_reused_and_which_tuning_scheme_was_used(tmp_path):
    tuned = {"mode": "on", "trials_run": 4, "trials_pruned": 1, "trials_failed": 0, "chosen": {"alpha": 5.0},
             "tune_per": "fold", "tuned_on_seed": 42}
    reused = {"mode": "on", "trials_run": 0, "trials_pruned": 0, "trials_failed": 0, "chosen": {"alpha": 5.0},
              "tune_per": "fold", "tuned_on_seed": 42, "reused": True}
    first, second = fake_record("iti", 42, 0.5), fake_record("iti", 43, 0.7)
    first["folds"]["main"] |= {"tuning": tuned, "shared_work": [
        {"kind": "activations", "key": "a", "reused": False, "created_by": "iti-42", "compute_s": 3.0},
        {"kind": "iti-probes", "key": "b", "reused": False, "created_by": "iti-42", "compute_s": 9.0}]}
    second["folds"]["main"] |= {"tuning": reused, "shared_work": [
        {"kind": "tuned-values", "key": "c", "reused": True, "created_by": "iti-42", "compute_s": 40.0},
        {"kind": "activations", "key": "a", "reused": True, "created_by": "iti-42", "compute_s": 3.0},
        {"kind": "activations", "key": "d", "reused": True, "created_by": "iti-42", "compute_s": 2.0}]}
    write(tmp_path, [first, second])
    text = render_markdown(build_report(tmp_path))
    assert "tuning: once per (method, task, fold) on seed 42; the other seeds train once with those values (--tune-per fold)" in text
    assert "4 trials (1 pruned); once per fold, 1 other seed(s) reuse the values (--tune-per fold)" in text
    assert "computed activations, iti-probes" in text
    assert "reused tuned-values, activations x2 (45 s saved)" in text
@pytest.mark.parametrize(
    ("percent", "shown"),
    [(None, "-"), (0.0, "0.0000"), (100.0 * 27 / 134_515_008, "2.01e-05"), (0.004, "0.004"), (0.0186, "0.0186"), (100.0, "100.0000")],
)
def test_a_tiny_share_of_parameters_keeps_its_significant_digits(percent, shown):
    from lofit_bench.report.model import format_parameter_share

    assert format_parameter_share(percent) == shown

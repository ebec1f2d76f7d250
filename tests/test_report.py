"""Reports are built from records alone: tables, CSV, seeds aggregated, mixed budgets flagged."""

from __future__ import annotations

import csv
import json

import pytest

from lofit_bench.budget import get_budget
from lofit_bench.errors import LofitBenchWarning, UserError
from lofit_bench.records import RECORD_SCHEMA, write_json_atomic
from lofit_bench.report import build_report


def fake_record(method: str, seed: int, accuracy: float, budget=None, status: str = "ok") -> dict:
    record = {
        "schema": RECORD_SCHEMA,
        "key": f"{method}{seed}",
        "status": status,
        "method": {"name": method, "options": {}},
        "task": {"name": "clutrr", "metrics": ["exact_match"], "primary_metric": "exact_match"},
        "seed": seed,
        "budget": (budget or get_budget("smoke")).to_dict(),
        "model": {"name": "tiny-random-llama"},
    }
    if status == "ok":
        record |= {
            "metrics": {"exact_match": accuracy},
            "folds": {"main": {"eval_size": 12}},
            "trainable_parameters": {"count": 4096, "percent_of_base": 0.003},
            "memory": {"kind": "cpu_peak_rss_delta", "peak_mib": 120.0},
            "timings": {"fit": 10.0, "evaluate": 2.0, "total_s": 12.5},
        }
    else:
        record["error"] = {"type": "RuntimeError", "message": "boom"}
    return record


def write(tmp_path, records):
    for index, record in enumerate(records):
        write_json_atomic(tmp_path / "records" / f"{index}.json", record)


def test_seeds_are_aggregated_as_mean_and_std(tmp_path):
    write(tmp_path, [fake_record("lofit", 1, 0.5), fake_record("lofit", 2, 0.7), fake_record("zero-shot", 1, 0.1)])
    report = build_report(tmp_path)
    assert "| lofit" in report.markdown and "60.0 ± 14.1" in report.markdown
    assert "| zero-shot" in report.markdown and "10.0" in report.markdown
    assert "4.10K" in report.markdown
    assert "peak RSS over model (CPU, MiB)" in report.markdown
    assert (tmp_path / "report.md").read_text().strip() == report.markdown.strip()
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
    assert "## Failed runs" in report.markdown and "RuntimeError: boom" in report.markdown
    assert "different budgets" in report.markdown


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


def with_examples(record: dict, values: list[float], metric: str = "exact_match") -> dict:
    record["folds"]["main"]["per_example"] = [{"id": str(i), metric: value} for i, value in enumerate(values)]
    return record


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
    summary = {row.method: row for row in build_report(tmp_path).summary}
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
    from lofit_bench.report_html import pareto_front

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
    markdown = build_report(tmp_path).markdown
    assert "different budgets: dev_examples = 50 for iti/clutrr/seed 1; 8 for lofit/clutrr/seed 1" in markdown


def test_time_table_splits_each_run_into_its_fit_parts(tmp_path):
    timed = fake_record("lofit", 1, 0.5)
    timed["timings"] = {"load_model": 1.5, "fit": 100.0, "evaluate": 20.0, "total_s": 121.5,
                        "fit_phases": {"head_selection": 60.0, "bias_tuning": 38.0, "other": 2.0}}
    write(tmp_path, [timed, fake_record("zero-shot", 1, 0.1), fake_record("iti", 1, 0.2, status="failed")])
    markdown = build_report(tmp_path).markdown
    section = markdown.split("## Where the time went")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "method" not in line]
    assert len(rows) == 2  # finished runs only
    assert "head_selection 60, bias_tuning 38, other 2" in section
    assert "| zero-shot" in section and " - " in section  # a record without parts

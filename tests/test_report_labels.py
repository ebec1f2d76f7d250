"""The report's labels (lofit_bench.report.labels.RecordLabels): exact labels of planted
records, and work that grows linearly with the folder (labels are computed once per set of
records, never by scanning every record for each record)."""

from __future__ import annotations

import copy

import pytest
from report_helpers import fake_record, write

import lofit_bench.report.labels as labels_module
from lofit_bench.records.record import parse_record
from lofit_bench.report.labels import RecordLabels
from lofit_bench.report.model import build_report_model
from lofit_bench.report.write import build_report


def _record(method: str, seed: int = 0, options: dict | None = None, model: str = "m", fingerprint: str | None = None,
            axes: list[str] | None = None, **budget):
    payload = fake_record(method, seed, 0.5, model=model)
    payload["method"]["options"] = options or {}
    payload["model"]["fingerprint"] = fingerprint
    payload["budget"] |= budget
    payload["axes"] = axes or []
    return parse_record(payload)


def test_labels_name_the_options_that_differ_between_configs_of_a_method():
    low = _record("lofit", options={"learning_rate": 0.01, "heads": 0.1})
    high = _record("lofit", options={"learning_rate": 0.1, "heads": 0.1})
    extra = _record("lofit", options={"heads": 0.1, "stage": "two"})
    lora = _record("lora", options={"rank": 8})
    labels = RecordLabels([low, high, extra, lora])

    assert [labels.method(record) for record in (low, high, extra, lora)] == [
        "lofit [learning_rate=0.01]", "lofit [learning_rate=0.1]", 'lofit [stage="two"]', "lora",
    ]
    # Left out (a plot along that axis), the option no longer names the series.
    assert RecordLabels([low, high], leave_out=("lofit.learning_rate",)).method(low) == "lofit"


def test_labels_name_a_declared_budget_axis_unless_left_out():
    small = _record("lora", axes=["train_examples"], train_examples=16)
    large = _record("lora", axes=["train_examples"], train_examples=64)

    assert RecordLabels([small, large]).method(small) == "lora [train_examples=16]"
    assert RecordLabels([small, large], leave_out=("train_examples",)).method(large) == "lora"


def test_a_model_name_with_two_fingerprints_is_labelled_by_fingerprint():
    first = _record("lora", fingerprint="aaaaaaaa1111")
    second = _record("lora", fingerprint="bbbbbbbb2222")
    other = _record("lora", model="other", fingerprint="cccccccc3333")
    labels = RecordLabels([first, second, other])

    assert [labels.model(record) for record in (first, second, other)] == ["m (aaaaaaaa)", "m (bbbbbbbb)", "other"]
    assert RecordLabels([first, other]).model(first) == "m"


class CountingList(list):
    """A list that counts the passes over it."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


def test_ten_thousand_records_are_labelled_in_as_many_passes_as_ten():
    def passes(count: int) -> tuple[int, RecordLabels, list]:
        records = CountingList(_record("lofit", seed=index, options={"learning_rate": index % 3}) for index in range(count))
        labels = RecordLabels(records)
        return records.passes, labels, records

    few, _, _ = passes(10)
    many, labels, records = passes(10_000)
    assert many == few
    assert labels.method(records[9_999]) == "lofit [learning_rate=0]"
    assert labels.method(records[9_997]) == "lofit [learning_rate=1]"


@pytest.fixture
def scanned(monkeypatch):
    """The number of records every RecordLabels of the test was built over, summed."""
    counts = {"records": 0}
    original = labels_module.RecordLabels.__init__

    def counting(self, records, leave_out=()):
        counts["records"] += len(records)
        original(self, records, leave_out)

    monkeypatch.setattr(labels_module.RecordLabels, "__init__", counting)
    return counts


def _folder(tmp_path, copies: int) -> None:
    """``copies`` seeds of a mixed folder: two configs of lofit, lora, and a failed run."""
    pattern = [
        fake_record("lofit", 0, 0.4) | {"method": {"name": "lofit", "options": {"learning_rate": 0.01}}},
        fake_record("lofit", 0, 0.5) | {"method": {"name": "lofit", "options": {"learning_rate": 0.1}}},
        fake_record("lora", 0, 0.3),
        fake_record("red", 0, 0.0, status="failed"),
    ]
    records = []
    for seed in range(copies):
        for record in pattern:
            record = copy.deepcopy(record)
            record["seed"] = seed
            record["key"] += f"-seed{seed}"
            records.append(record)
    write(tmp_path, records)


def test_a_report_labels_its_records_in_work_linear_in_the_folder(tmp_path, scanned):
    """The whole report (model and every format) builds labels over each record a fixed number
    of times: doubling the folder doubles the work (per-record scans would quadruple it)."""
    work = []
    for copies in (3, 6):
        folder = tmp_path / f"copies{copies}"
        _folder(folder, copies)
        scanned["records"] = 0
        build_report(folder, reference="lofit")
        work.append(scanned["records"])
    assert work[1] == 2 * work[0]
    model = build_report_model(tmp_path / "copies3")
    assert sorted({row.method for row in model.summary}) == ["lofit [learning_rate=0.01]", "lofit [learning_rate=0.1]", "lora"]

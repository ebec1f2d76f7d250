"""The typed run record: its JSON Schema ships and matches the code, every committed record
reads as one, records are validated on write and on read, and older schemas migrate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lofit_bench.budget import get_budget
from lofit_bench.errors import LofitBenchWarning
from lofit_bench.records import record as run_record
from lofit_bench.records.record import (
    RECORD_SCHEMA,
    SCHEMA_FILE,
    RecordError,
    RunRecord,
    parse_record,
    schema_text,
)
from lofit_bench.records.store import read_record, save_record

REPOSITORY = Path(__file__).resolve().parent.parent
COMMITTED = sorted(REPOSITORY.glob("reports/*/records/*.json"))


def minimal(**changes) -> dict:
    return {
        "schema": RECORD_SCHEMA, "key": "k", "status": "failed", "method": {"name": "lofit"},
        "task": {"name": "clutrr"}, "seed": 42, "budget": get_budget("smoke").to_dict(),
        "error": {"type": "RuntimeError", "message": "boom"},
    } | changes


def test_the_shipped_schema_is_the_one_the_code_generates():
    assert SCHEMA_FILE.read_text() == schema_text(), (
        "regenerate it: python -c 'from lofit_bench.records.record import *; SCHEMA_FILE.write_text(schema_text())'"
    )
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["additionalProperties"] is False and set(schema["required"]) >= {"schema", "key", "status", "method"}


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: f"{path.parent.parent.name}/{path.stem}")
def test_every_committed_record_reads_and_validates_against_the_json_schema(path):
    jsonschema = pytest.importorskip("jsonschema")
    payload = json.loads(path.read_text())
    jsonschema.validate(payload, json.loads(SCHEMA_FILE.read_text()))  # what a non-Python tool would check
    record = parse_record(payload)
    assert isinstance(record, RunRecord) and record.ok
    assert parse_record(record.to_json()) == record  # the typed form loses nothing


def test_committed_records_exist():
    assert len(COMMITTED) >= 20


@pytest.mark.parametrize(("change", "problem"), [
    ({"status": "done"}, "status: Input should be 'running', 'ok' or 'failed'"),
    ({"seed": "42"}, "seed: Input should be a valid integer"),
    ({"metrcs": {}}, "metrcs: Unexpected keyword argument"),
    ({"folds": {"main": {"eval_size": "all"}}}, "folds.main.eval_size: Input should be a valid integer"),
    ({"schema": "1"}, "no whole-number 'schema' field"),
    ({"schema": RECORD_SCHEMA + 1}, f"newer than this lofit-bench reads ({RECORD_SCHEMA}); upgrade lofit-bench"),
    ({"schema": 0}, "cannot migrate to"),
])
def test_a_record_that_is_not_valid_says_which_field_and_why(change, problem):
    with pytest.raises(RecordError) as caught:
        parse_record(minimal(**change))
    assert problem in str(caught.value)


def test_an_older_schema_is_migrated_by_its_migration(monkeypatch):
    def rename_seed(payload):  # as a future schema 2 might: "seed" -> "seeds"-like renames
        payload["seed"] = payload.pop("random_seed")
        return payload

    monkeypatch.setattr(run_record, "MIGRATIONS", {0: rename_seed})
    old = minimal(schema=0)
    old["random_seed"] = old.pop("seed")
    record = parse_record(old)
    assert record.seed == 42 and record.schema == RECORD_SCHEMA


def test_a_record_is_validated_on_write_and_written_even_when_it_fails(tmp_path):
    record = parse_record(minimal())
    path = save_record(tmp_path / "records" / "a.json", record)
    assert read_record(path)[0] == record
    record.seed = "not a seed"  # a bug in a writer
    with pytest.warns(LofitBenchWarning, match="does not match the record schema .*seed"):
        path = save_record(tmp_path / "records" / "b.json", record)
    assert json.loads(path.read_text())["seed"] == "not a seed"  # the result is not lost
    assert read_record(path) == (None, "not a valid run record: seed: Input should be a valid integer")


def test_the_git_state_counts_only_source_paths(tmp_path, monkeypatch):
    """A sweep writing into the checkout (reports/, runs/) must not make its own later runs look
    dirty; only a change to the code does."""
    import subprocess

    from lofit_bench.records import store as records

    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        output = "abc123\n" if command[1] == "rev-parse" else ""
        return subprocess.CompletedProcess(command, 0, stdout=output, stderr="")

    monkeypatch.setattr(records.subprocess, "run", fake_run)
    assert records._git_state() == {"git_commit": "abc123", "git_dirty": False}
    status = calls[1]
    assert status[:4] == ["git", "status", "--porcelain", "--untracked-files=no"]
    assert status[status.index("--") + 1:] == list(records.SOURCE_PATHS)
    assert "reports" not in records.SOURCE_PATHS

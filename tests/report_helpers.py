"""Fake run records for the report and compare tests (records alone, no model)."""

from __future__ import annotations

from lofit_bench.budget import get_budget
from lofit_bench.records.store import RECORD_SCHEMA, write_json_atomic


def fake_record(
    method: str, seed: int, accuracy: float, budget=None, status: str = "ok", model: str = "tiny-random-llama", task: str = "clutrr"
) -> dict:
    """A minimal valid run record (as JSON) of ``method`` on ``task`` with one metric, exact_match."""
    record = {
        "schema": RECORD_SCHEMA,
        "key": f"{model}-{task}-{method}{seed}",
        "status": status,
        "method": {"name": method, "options": {}},
        "task": {"name": task, "metrics": ["exact_match"], "primary_metric": "exact_match"},
        "seed": seed,
        "budget": (budget or get_budget("smoke")).to_dict(),
        "model": {"name": model},
    }
    if status == "ok":
        record |= {
            "metrics": {"exact_match": accuracy},
            "folds": {"main": {"eval_size": 12}},
            "trainable_parameters": {"count": 4096, "percent_of_base": 0.003, "stored_values": 4096, "base_parameters": 136_000_000},
            "memory": {"kind": "cpu_peak_rss_delta", "device": "cpu", "peak_mib": 120.0},
            "timings": {"fit": 10.0, "evaluate": 2.0, "total_s": 12.5},
        }
    else:
        record["error"] = {"type": "RuntimeError", "message": "boom"}
    return record


def write(tmp_path, records):
    """Write ``records``; each key hashes what tells its run apart (as a real run key does), so a
    test that changes a record's options or budget after building it gets a distinct run."""
    import hashlib
    import json

    for index, record in enumerate(records):
        identity = json.dumps([record["key"], record["method"].get("options"), record.get("budget"), record.get("axes"), record.get("model")],
                              sort_keys=True, default=str)
        record = {**record, "key": hashlib.sha256(identity.encode()).hexdigest()[:16]}
        write_json_atomic(tmp_path / "records" / f"{index}.json", record)


def with_examples(record: dict, values: list[float], metric: str = "exact_match") -> dict:
    """``record`` with one per-example value per test example (ids 0, 1, ...)."""
    record["folds"]["main"]["per_example"] = [{"id": str(i), metric: value} for i, value in enumerate(values)]
    return record

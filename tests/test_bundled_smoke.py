"""The README's quick start on the bundled SmolLM2 model (slow: builds/loads the real model)."""

from __future__ import annotations

import json

import pytest

from lofit_bench import plugins
from lofit_bench.cli import main

pytestmark = pytest.mark.slow


def test_readme_smoke_comparison_on_the_bundled_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "")
    plugins.reset_host()
    out = tmp_path / "demo"
    code = main(["run", "--methods", "zero-shot", "--tasks", "truthfulqa,clutrr,mquake", "--budget", "smoke", "--out", str(out)])
    printed = capsys.readouterr().out
    plugins.reset_host()
    assert code == 0
    assert "## truthfulqa" in printed and "## clutrr" in printed and "## mquake" in printed
    records = [json.loads(path.read_text()) for path in (out / "records").glob("*.json")]
    assert len(records) == 3
    for record in records:
        assert record["status"] == "ok"
        assert record["model"]["name"] == "smollm2-135m"
        assert record["model"]["layers"] == 30 and record["model"]["heads_per_layer"] == 9
    truthfulqa = next(record for record in records if record["task"]["name"] == "truthfulqa")
    # A real model puts noticeably more than zero mass on the true answers.
    assert 0.2 < truthfulqa["metrics"]["mc2"] < 0.9
    assert (out / "report.md").exists() and (out / "results.csv").exists()

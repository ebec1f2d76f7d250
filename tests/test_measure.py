"""Measurement: CPU memory is labelled as RSS growth and sees what a phase allocates."""

from __future__ import annotations

import time

import torch

from lofit_bench.measure import MIB, MemoryMeter, Stopwatch


def test_cpu_meter_sees_an_allocation_inside_a_phase() -> None:
    meter = MemoryMeter(device="cpu")
    assert meter.kind == "cpu_peak_rss_delta"
    with meter.phase("allocate"):
        block = torch.ones(200 * MIB // 4, dtype=torch.float32)  # ones() touches every page
        time.sleep(0.05)
    assert float(block[-1]) == 1.0
    assert 150 <= meter.phases["allocate"] <= 400
    assert meter.peak_mib >= meter.phases["allocate"]
    del block
    with meter.phase("idle"):
        pass
    assert meter.phases["idle"] < 50
    record = meter.to_dict()
    assert record["kind"] == "cpu_peak_rss_delta" and record["device"] == "cpu"
    assert set(record["per_phase_mib"]) == {"allocate", "idle"}
    assert "peak_reserved_mib" not in record  # a CPU figure never poses as GPU memory


def test_stopwatch_accumulates_per_phase() -> None:
    stopwatch = Stopwatch()
    for _ in range(2):
        with stopwatch.phase("train"):
            time.sleep(0.03)
    with stopwatch.phase("evaluate"):
        pass
    assert stopwatch.seconds["train"] >= 0.06
    assert stopwatch.seconds["evaluate"] < stopwatch.seconds["train"]
    assert set(stopwatch.to_dict()) == {"train", "evaluate"}
    assert stopwatch.to_dict()["train"] == round(stopwatch.seconds["train"], 3)

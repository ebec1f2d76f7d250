"""Same-run, interleaved timing of a subject against its baseline."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

ROUNDS = int(os.environ.get("LOFIT_BENCH_ROUNDS", "5"))


def interleaved_ratio(subject: Callable[[], object], baseline: Callable[[], object], rounds: int = ROUNDS) -> dict:
    """Median seconds of each, timed alternately after one warm-up call of each, and their ratio."""
    subject()
    baseline()
    subject_times, baseline_times = [], []
    for _ in range(rounds):
        for function, times in ((subject, subject_times), (baseline, baseline_times)):
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
    subject_median = statistics.median(subject_times)
    baseline_median = statistics.median(baseline_times)
    return {
        "subject_s": round(subject_median, 4),
        "baseline_s": round(baseline_median, 4),
        "ratio": round(subject_median / baseline_median, 3),
        "rounds": rounds,
        "threads": torch.get_num_threads(),
    }


def report(benchmark, name: str, result: dict, goal: str) -> None:
    benchmark.extra_info.update(result | {"goal": goal})
    print(f"\n{name}: ratio {result['ratio']} (subject {result['subject_s']} s, baseline {result['baseline_s']} s; goal {goal})")

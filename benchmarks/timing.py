"""Same-run, interleaved timing of a subject against its baseline."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def clutrr_sft_batch(lm, size: int = 8):
    """(trainer, one collated SFT batch of ``size`` CLUTRR training examples), as the harness's
    trainer builds them for ``lm``."""
    from lofit_bench.budget import get_budget
    from lofit_bench.engine.training import OptimizerSettings, build_trainer
    from lofit_bench.tasks.clutrr import Clutrr

    examples = Clutrr().training_examples("main")[:size]
    trainer = build_trainer(
        lm.model, lm.tokenizer, examples, "sft", get_budget("paper").replace(epochs=1),
        OptimizerSettings(1e-2), 0, Path(tempfile.mkdtemp()), None, None, False,
    )
    return trainer, next(iter(trainer.get_train_dataloader()))

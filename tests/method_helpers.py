"""Shared pieces of the trained-method tests: the tiny model's run settings and a small budget."""

from __future__ import annotations

from lofit_bench.budget import Budget, get_budget
from lofit_bench.sweep.runner import ModelSettings

TINY = ModelSettings("tiny-random-llama", device="cpu")


def small_budget(**changes) -> Budget:
    """A budget a tiny-model sweep finishes in seconds; the byte-level tokenizer makes a CLUTRR
    example ~450 tokens long, hence max_length 1024."""
    values = {"train_examples": 8, "eval_examples": 2, "epochs": 1, "max_length": 1024} | changes
    return get_budget("smoke").replace(**values)

"""The order parallel runs start in: longest expected first, so that the jobs finish together.

With ``--jobs N`` a sweep's wall time is that of its busiest job. Runs started in the order
the user listed them can leave the longest one for last, with the other jobs idle while it
runs (the tuned main comparison lost 19 of its 83 minutes so). Starting the longest runs
first (the LPT rule of list scheduling) keeps the wall time within 7/6 of the best packing
on two jobs when the costs are exact; here they are estimates, so it is a good order, not
a guarantee (the tuned main comparison: 66 minutes for 128 run-minutes on two jobs).

A run's expected cost is only used for this order and is never recorded: the method's
:attr:`~lofit_bench.method.Method.relative_cost` (its fit's seconds per training character
next to LoRA's, measured on the bundled model) times the characters of training text the
budget lets it read over the task's folds, times the trials it gets when it is tuned (with
``--tune-per fold`` only the first seed's run tunes; the other seeds fit once, so they start
after it and wait less for its values). Runs of equal cost keep the order they were given in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lofit_bench.plugins import get_host
from lofit_bench.sweep.spec import RunSpec


def longest_first(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """``specs`` sorted by expected cost, largest first (stable: ties keep their order)."""
    sizes: dict[tuple, int] = {}
    costs = [expected_cost(spec, sizes) for spec in specs]
    order = sorted(range(len(specs)), key=lambda index: -costs[index])
    return [specs[index] for index in order]


def expected_cost(spec: RunSpec, sizes: dict[tuple, int] | None = None) -> float:
    """Relative cost of ``spec``'s fit (see the module docstring); ``sizes`` caches the
    training-text size per (task, train_examples)."""
    host = get_host()
    method_class = host.methods.get(spec.method)
    if not method_class.uses_training_data or method_class.relative_cost <= 0:
        return 0.0
    sizes = {} if sizes is None else sizes
    key = (spec.task, spec.budget.train_examples)
    if key not in sizes:
        sizes[key] = training_characters(spec.task, spec.budget.train_examples)
    tuned = spec.budget.tune and bool(method_class.search_space(set(spec.method_options)))
    tuned = tuned and (spec.tuning_seed is None or spec.tuning_seed == spec.seed)  # --tune-per fold: others fit once
    return method_class.relative_cost * sizes[key] * spec.budget.epochs * (spec.budget.trials if tuned else 1)


def training_characters(task_name: str, limit: int | None) -> int:
    """Characters of text in the task's training splits over its folds, first ``limit`` examples each."""
    task = get_host().tasks.get(task_name)()
    if task.objective == "none":
        return 0
    total = 0
    for fold in task.folds:
        for example in task.training_examples(fold, "train")[:limit]:  # limit None: all
            total += sum(len(value) for value in dataclasses.asdict(example).values() if isinstance(value, str))
    return total

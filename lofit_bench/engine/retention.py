"""Retention: other tasks scored after a fit on one task, with no training on them.

The LoFiT paper's Table 5 experiment with the tasks at hand (``budget.also_eval``; built-in,
plugin and ``lm_eval:NAME`` tasks alike): each named task is scored by its own
``evaluate`` on its test split (every fold, ``budget.eval_examples`` examples each, metrics
averaged over folds as a run's are), once on the base model before the fit and once on the
fitted model. The change is fitted minus base, on the task's primary metric; every metric is
kept. A task with a fold of the fitted task's own data is no exception: nothing here trains.
"""

from __future__ import annotations

from typing import Any

from lofit_bench.engine.divergence import check_finite_metrics
from lofit_bench.records.record import Retention
from lofit_bench.task import Task


def evaluate_every_fold(task: Task, scorer: Any, limit: int | None) -> tuple[dict[str, float], int]:
    """The task's own test evaluation on each of its folds: metrics averaged over folds, and
    the number of examples scored."""
    results = [task.evaluate(scorer, fold, "test", limit=limit) for fold in task.folds]
    for fold, result in zip(task.folds, results, strict=True):
        check_finite_metrics(result.metrics, f"{task.name} {fold}")
    names = list(results[0].metrics)
    metrics = {name: sum(result.metrics[name] for result in results) / len(results) for name in names}
    return metrics, sum(result.size for result in results)


def retention(task: Task, base: dict[str, float], fitted: dict[str, float], examples: int) -> Retention:
    """The record entry of one retention task: its primary metric before and after the fit."""
    metric = task.primary_metric
    before, after = base.get(metric), fitted.get(metric)
    return Retention(
        metric=metric,
        base=before,
        fitted=after,
        change=None if before is None or after is None else after - before,
        examples=examples,
        base_metrics=dict(base),
        fitted_metrics=dict(fitted),
    )

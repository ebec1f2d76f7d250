"""Paired significance tests over test examples (a method vs the report's reference method)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from lofit_bench.records.record import RunRecord

BOOTSTRAP_SAMPLES = 10_000


def per_example_values(records: Iterable[RunRecord], metric: str) -> dict[tuple[str, str], float]:
    """Example (fold, id) -> the metric's value, averaged over the records' seeds."""
    sums: dict[tuple[str, str], float] = defaultdict(float)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for record in records:
        for fold, fold_record in record.folds.items():
            for entry in fold_record.per_example:
                if metric in entry and "id" in entry:
                    key = (fold, str(entry["id"]))
                    sums[key] += float(entry[metric])
                    counts[key] += 1
    return {key: sums[key] / counts[key] for key in sums}


def paired_bootstrap_p_value(
    values: dict[tuple[str, str], float],
    reference: dict[tuple[str, str], float],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> float | None:
    """Two-sided paired bootstrap p-value for mean(values) != mean(reference).

    Resamples the shared examples with replacement and counts how often the mean difference
    falls on the other side of zero (Berg-Kirkpatrick et al., 2012), doubled for two sides.
    With k such resamples of B the one-sided estimate is (k + 1) / (B + 1), so no finite
    bootstrap ever claims p = 0 (the smallest value it can give is 2 / (B + 1)).
    None when the two share fewer than two examples.
    """
    shared = sorted(set(values) & set(reference))
    if len(shared) < 2:
        return None
    differences = np.array([values[key] - reference[key] for key in shared])
    if not differences.any():
        return 1.0
    generator = np.random.default_rng(seed)
    indices = generator.integers(0, len(differences), size=(samples, len(differences)))
    means = differences[indices].mean(axis=1)
    crossings = int(min(np.sum(means <= 0), np.sum(means >= 0)))
    return float(min(1.0, 2 * (crossings + 1) / (samples + 1)))


def paired_p_value(values: dict[tuple[str, str], float], reference: dict[tuple[str, str], float]) -> tuple[float | None, str]:
    """The p-value of one method against the reference and the test that gave it: the exact
    McNemar test when both are right/wrong per example (one seed), else the paired bootstrap
    (continuous metrics such as MC2, or values averaged over several seeds)."""
    exact = mcnemar_exact_p_value(values, reference)
    if exact is not None:
        return exact, "McNemar"
    return paired_bootstrap_p_value(values, reference), "bootstrap"


def is_binary(values: dict[tuple[str, str], float]) -> bool:
    """Whether every per-example value is 0 or 1 (exact match, MC1: McNemar applies)."""
    return bool(values) and all(value in (0.0, 1.0) for value in values.values())


def mcnemar_exact_p_value(values: dict[tuple[str, str], float], reference: dict[tuple[str, str], float]) -> float | None:
    """Two-sided exact McNemar test for two methods scored right/wrong on the same examples.

    Only the discordant examples count: ``b`` that the method gets right and the reference
    wrong, ``c`` the other way round; under the null hypothesis each is a fair coin, so the
    p-value is the two-sided binomial tail of ``min(b, c)`` in ``b + c`` tosses (McNemar 1947,
    in its exact form). None unless both are binary on at least one shared example.
    """
    shared = sorted(set(values) & set(reference))
    if not shared or not is_binary({key: values[key] for key in shared}) or not is_binary({key: reference[key] for key in shared}):
        return None
    better = sum(1 for key in shared if values[key] > reference[key])
    worse = sum(1 for key in shared if values[key] < reference[key])
    if better + worse == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(better, worse), better + worse, 0.5).pvalue)


def holm_adjusted(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment (Holm 1979) of several tests against one reference: the
    family-wise error rate stays at the level a single test would have. None stays None."""
    present = sorted(((p, name) for name, p in p_values.items() if p is not None))
    adjusted: dict[str, float | None] = {name: None for name, p in p_values.items() if p is None}
    running = 0.0
    for rank, (p, name) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[name] = running
    return {name: adjusted[name] for name in p_values}


def bootstrap_interval(
    runs: list[dict[tuple[str, str], float]],
    confidence: float = 0.95,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[float, float] | None:
    """A percentile bootstrap interval for the mean over examples (and over seeds, when ``runs``
    holds one per-example mapping per seed): each resample draws seeds, then examples, with
    replacement, so the interval is as wide as both sources of variation make it."""
    runs = [run for run in runs if run]
    if not runs:
        return None
    shared = sorted(set.intersection(*(set(run) for run in runs)))
    if len(shared) < 2:
        return None
    table = np.array([[run[key] for key in shared] for run in runs])  # seeds x examples
    generator = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // table.size)  # bounded memory: chunk x seeds x examples draws at a time
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        seed_draws = generator.integers(0, table.shape[0], size=(size, table.shape[0], 1))
        example_draws = generator.integers(0, table.shape[1], size=(size, 1, table.shape[1]))
        means[start:start + size] = table[seed_draws, example_draws].mean(axis=(1, 2))
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point beats: lower or equal cost and higher
    or equal accuracy, strictly better in one (the plots' front over parameters, memory or KL)."""
    front = []
    for index, (cost, accuracy) in enumerate(points):
        dominated = any(
            other_cost <= cost and other_accuracy >= accuracy and (other_cost < cost or other_accuracy > accuracy)
            for other_cost, other_accuracy in points
        )
        if not dominated:
            front.append(index)
    return front

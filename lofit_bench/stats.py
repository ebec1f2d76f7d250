"""Paired significance tests over test examples (a method vs the report's reference method)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from lofit_bench.run_record import RunRecord

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

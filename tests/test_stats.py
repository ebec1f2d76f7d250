"""Significance tests and intervals on planted data, where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from lofit_bench.report.stats import (
    bootstrap_interval,
    holm_adjusted,
    is_binary,
    mcnemar_exact_p_value,
)


def planted_pairs(better: int, worse: int, ties: int) -> tuple[dict, dict]:
    """Per-example scores of a method and a reference: ``better`` examples only the method gets
    right, ``worse`` only the reference, ``ties`` both."""
    method, reference = {}, {}
    for index in range(better + worse + ties):
        key = ("main", str(index))
        method[key] = 1.0 if index < better or index >= better + worse else 0.0
        reference[key] = 1.0 if index >= better else 0.0
    return method, reference


def test_mcnemar_is_the_exact_binomial_tail_of_the_discordant_pairs():
    # 16 discordant pairs one way and 6 the other (the demo's LoRA vs LoFiT): 2 * P(X <= 6), X ~ Bin(22, 1/2)
    method, reference = planted_pairs(16, 6, 50)
    expected = 2 * sum(__import__("math").comb(22, k) for k in range(7)) / 2**22
    assert mcnemar_exact_p_value(method, reference) == pytest.approx(expected)
    assert round(expected, 3) == 0.052
    assert mcnemar_exact_p_value(reference, method) == pytest.approx(expected)  # two-sided
    assert mcnemar_exact_p_value(*planted_pairs(0, 0, 10)) == 1.0


def test_mcnemar_refuses_scores_that_are_not_right_or_wrong():
    method, reference = planted_pairs(3, 1, 2)
    method[("main", "0")] = 0.5
    assert not is_binary(method) and mcnemar_exact_p_value(method, reference) is None


def test_holm_adjusts_step_down_and_keeps_order():
    adjusted = holm_adjusted({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adjusted == {"a": pytest.approx(0.03), "b": pytest.approx(0.06), "c": pytest.approx(0.06), "d": None}
    assert holm_adjusted({"only": 0.02}) == {"only": 0.02}


def test_the_interval_covers_the_planted_mean_and_narrows_with_more_examples():
    generator = np.random.default_rng(1)
    small = {("main", str(i)): float(value) for i, value in enumerate(generator.random(50) < 0.3)}
    large = {("main", str(i)): float(value) for i, value in enumerate(generator.random(2000) < 0.3)}
    low, high = bootstrap_interval([small], samples=2000)
    assert low < np.mean(list(small.values())) < high
    large_low, large_high = bootstrap_interval([large], samples=2000)
    assert large_low < 0.3 < large_high
    assert large_high - large_low < high - low


def test_seeds_that_disagree_widen_the_interval():
    examples = [("main", str(i)) for i in range(400)]
    same = [{key: float(i % 2) for i, key in enumerate(examples)}] * 2
    apart = [{key: 0.0 for key in examples}, {key: 1.0 for key in examples}]
    same_low, same_high = bootstrap_interval(same, samples=1000)
    apart_low, apart_high = bootstrap_interval(apart, samples=1000)
    assert apart_high - apart_low > 5 * (same_high - same_low)

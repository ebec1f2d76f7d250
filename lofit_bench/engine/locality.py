"""Locality: facts the fit should leave alone, answered as the base model answered them.

The knowledge-editing measure (MQuAKE's family): a task that has unrelated facts to ask
about offers ``locality_facts(fold, limit)``, (id, prompt) pairs the fit never saw (MQuAKE:
the single-hop questions of the test cases scored, ``Q: <question> A:``). Each prompt is
answered greedily by the base model before the fit and by the fitted model after it; a fact
counts as unchanged when the two answers agree once normalised (the text after the last
``A:`` up to the newline, stripped, case-folded, trailing punctuation dropped). The share of
unchanged facts is what is recorded: 1.0 means the fit touched none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lofit_bench.metrics import normalize_lenient, parse_mquake_answer_strict
from lofit_bench.records.record import Locality

MAX_NEW_TOKENS = 16


def locality_prompts(task: Any, fold: str, limit: int | None) -> list[str]:
    """The task's held-out fact prompts, or [] for a task that offers none."""
    facts = getattr(task, "locality_facts", None)
    return [prompt for _, prompt in facts(fold, limit)] if facts is not None else []


def answers(scorer: Any, prompts: Sequence[str]) -> list[str]:
    """Each prompt's greedy answer, normalised for comparison."""
    generations = scorer.generate(list(prompts), max_new_tokens=MAX_NEW_TOKENS, description="locality facts")
    return [normalize_lenient(parse_mquake_answer_strict(generation.full_text)) for generation in generations]


def locality(base_answers: Sequence[str], fitted_answers: Sequence[str]) -> Locality:
    """How many facts kept the base model's answer."""
    if len(base_answers) != len(fitted_answers) or not base_answers:
        raise ValueError(f"locality needs the same facts before and after, got {len(base_answers)} and {len(fitted_answers)}")
    unchanged = sum(before == after for before, after in zip(base_answers, fitted_answers, strict=True))
    return Locality(facts=len(base_answers), unchanged=unchanged, share_unchanged=unchanged / len(base_answers))

"""Inference overhead: greedy generation tokens/s of the fitted model against the base model.

Same prompts (the first :data:`PROMPT_CHARACTERS` characters of each held-out passage of
:mod:`lofit_bench.engine.side_effects`), same batch (``budget.eval_batch_size``), the same
:data:`NEW_TOKENS` new tokens at most, three ways: the base model before the fit, the fitted
model as it runs in the harness (hooks, an unmerged adapter), and the fitted model as it
would be served (:meth:`~lofit_bench.method.Method.merged`: LoFiT's, ITI's and RED's vectors
folded into ``o_proj``, LoRA merged; a method that cannot merge is served as run). Wall-clock
figures of one pass each: compare them within one run, on an idle machine.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from lofit_bench.engine.scoring import Scorer
from lofit_bench.engine.side_effects import heldout_texts
from lofit_bench.records.record import InferenceSpeed

if TYPE_CHECKING:
    from lofit_bench.method import Method

PROMPT_CHARACTERS = 160
NEW_TOKENS = 16


def speed_prompts(count: int) -> list[str]:
    return [text[:PROMPT_CHARACTERS] for text in heldout_texts(count)]


def tokens_per_second(scorer: Scorer, prompts: list[str]) -> float:
    """New tokens generated per wall second, one batched greedy pass over ``prompts``."""
    started = time.perf_counter()
    generations = scorer.generate(prompts, max_new_tokens=NEW_TOKENS, description="inference speed")
    seconds = time.perf_counter() - started
    return sum(generation.new_tokens for generation in generations) / seconds if seconds > 0 else 0.0


def fitted_speed(method: Method, base_tokens_per_s: float, prompts: list[str], batch_size: int, tokenizer: Any) -> InferenceSpeed:
    """The fitted model's speed as run and as served, beside the base model's."""
    scorer = Scorer(method.evaluation_model(), tokenizer, batch_size, capabilities=method.capabilities)
    as_run = tokens_per_second(scorer, prompts)
    with method.merged() as merged:
        served = tokens_per_second(scorer, prompts) if merged else as_run
    return InferenceSpeed(
        base_tokens_per_s=round(base_tokens_per_s, 2),
        as_run_tokens_per_s=round(as_run, 2),
        served_tokens_per_s=round(served, 2),
        served_as="merged" if merged else "as run",
        prompts=len(prompts),
        new_tokens=NEW_TOKENS,
        batch_size=batch_size,
    )

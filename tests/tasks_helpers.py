"""Shared helpers for the task tests: a scorer with planted answers and the tiny-model scorer.

A fake scorer lets a test fix what the "model" says and check that a task turns it into the
right metric; the tiny random model checks that the real Scorer path runs end to end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lofit_bench.engine.scoring import Generation, Scorer


@dataclass
class FakeScorer:
    """Answers ``loglikelihoods`` with ``score(context, continuation)`` and ``generate`` with
    ``prompt + reply(prompt)``; records every request it gets."""

    score: Callable[[str, str], float] = lambda context, continuation: 0.0
    reply: Callable[[str], str] = lambda prompt: ""
    loglikelihood_calls: list[list[tuple[str, str]]] = field(default_factory=list)
    generate_calls: list[list[str]] = field(default_factory=list)

    def loglikelihoods(
        self, requests: Sequence[tuple[str, str]], description: str = ""
    ) -> list[float]:
        self.loglikelihood_calls.append(list(requests))
        return [self.score(context, continuation) for context, continuation in requests]

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int = 16, description: str = ""
    ) -> list[Generation]:
        self.generate_calls.append(list(prompts))
        replies = [self.reply(prompt) for prompt in prompts]
        return [
            Generation(
                prompt=prompt, full_text=prompt + reply, new_text=reply, new_tokens=len(reply)
            )
            for prompt, reply in zip(prompts, replies, strict=True)
        ]


def tiny_scorer() -> Scorer:
    """A Scorer around the 2-layer random Llama with the byte-level tokenizer (CPU, seconds)."""
    from lofit_bench.engine.models import load_model

    lm = load_model("tiny-random-llama", device="cpu")
    return Scorer(lm.model, lm.tokenizer, batch_size=16)


def assert_judges_each_prompts_own_generation(task, result, limit: int) -> None:
    """The batched ``task.evaluate`` judged exactly what the tiny model generates for each
    prompt alone, in the split's order, and each metric is the mean of its per-example values."""
    single = tiny_scorer()
    for item, entry in zip(task.items("main", "test")[:limit], result.per_example, strict=True):
        (alone,) = single.generate([item.prompt], max_new_tokens=task.max_new_tokens)
        assert entry["generation"] == alone.new_text
        assert {key: entry[key] for key in task.judge(item, alone)} == task.judge(item, alone)
    for metric in task.metrics:
        assert abs(result.metrics[metric] - sum(entry[metric] for entry in result.per_example) / limit) < 1e-12

"""The Scorer: summed continuation log-probs (KV-cache path == full forward == by hand) and
batched greedy generation."""

from __future__ import annotations

import pytest
import torch

from lofit_bench.engine.scoring import Scorer
from lofit_bench.method import Capabilities
from lofit_bench.prompt_positions import PromptListener, PromptSpans

QUESTION = "Q: Which is heavier, a kilo of feathers or a kilo of iron?\nA:"
REQUESTS = [
    (QUESTION, " Iron."),
    (QUESTION, " Feathers, because there are so many."),
    (QUESTION, " They weigh the same."),
    (QUESTION, "!"),
    ("Paris is the capital of", " France"),
    ("Answer with yes or no: ", "yes"),  # trailing space moves to the continuation
    ("x", "y"),
]
# 1e-5 absolute, or 1e-6 relative for long continuations: a float32 sum near -200 moves in
# steps of 1.5e-5, while an off-by-one position or a read pad moves it by whole nats.
TOLERANCE = {"abs": 1e-5, "rel": 1e-6}


def by_hand(lm, context_ids: list[int], continuation_ids: list[int]) -> float:
    """Sum of log p(continuation token | everything before it) from one unpadded forward."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(
        float(log_probs[len(context_ids) + offset - 1, token])
        for offset, token in enumerate(continuation_ids)
    )


def test_cached_context_path_equals_full_forward_and_hand_computation(tiny_lm) -> None:
    cached = Scorer(tiny_lm.model, tiny_lm.tokenizer, batch_size=8).loglikelihoods(REQUESTS)
    full = Scorer(
        tiny_lm.model, tiny_lm.tokenizer, batch_size=8, reuse_context_cache=False
    ).loglikelihoods(REQUESTS)
    scorer = Scorer(tiny_lm.model, tiny_lm.tokenizer)
    hand = [
        by_hand(tiny_lm, *scorer.encode_pair(context, continuation))
        for context, continuation in REQUESTS
    ]
    assert cached == pytest.approx(full, **TOLERANCE)
    assert cached == pytest.approx(hand, **TOLERANCE)
    assert all(score < 0 for score in cached)
    # A random model spreads mass over 259 byte ids: longer continuations score lower.
    assert cached[1] < cached[0]


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_batch_size_does_not_change_scores(tiny_lm, batch_size: int) -> None:
    reference = Scorer(tiny_lm.model, tiny_lm.tokenizer, batch_size=4).loglikelihoods(REQUESTS)
    for reuse in (True, False):
        scorer = Scorer(
            tiny_lm.model, tiny_lm.tokenizer, batch_size=batch_size, reuse_context_cache=reuse
        )
        assert scorer.loglikelihoods(REQUESTS) == pytest.approx(reference, **TOLERANCE)


def test_lm_eval_encoding_moves_trailing_space_to_continuation(tiny_lm) -> None:
    scorer = Scorer(tiny_lm.model, tiny_lm.tokenizer)
    context_ids, continuation_ids = scorer.encode_pair("Answer: ", "yes")
    assert (context_ids, continuation_ids) == scorer.encode_pair("Answer:", " yes")
    assert tiny_lm.tokenizer.decode(context_ids) == "Answer:"
    assert tiny_lm.tokenizer.decode(continuation_ids) == " yes"
    spaced, unspaced = scorer.loglikelihoods([("Answer: ", "yes"), ("Answer:", " yes")])
    assert spaced == unspaced


def test_empty_context_conditions_on_bos_whatever_the_batch(tiny_lm) -> None:
    """Regression: an empty context used to score its first token from position -1 (a pad)."""
    tokenizer = tiny_lm.tokenizer
    scorer = Scorer(tiny_lm.model, tokenizer)
    context_ids, continuation_ids = scorer.encode_pair("", "hello")
    assert context_ids == [tokenizer.bos_token_id]
    assert tokenizer.decode(continuation_ids) == "hello"
    alone = scorer.loglikelihoods([("", "hello")])[0]
    for reuse in (True, False):
        batched = Scorer(tiny_lm.model, tokenizer, reuse_context_cache=reuse).loglikelihoods(
            [("", "hello"), ("", "hello there, a much longer continuation")]
        )[0]
        assert batched == pytest.approx(alone, **TOLERANCE)
    assert alone == pytest.approx(by_hand(tiny_lm, context_ids, continuation_ids), **TOLERANCE)


def test_empty_continuation_is_rejected(tiny_lm) -> None:
    with pytest.raises(ValueError, match="empty continuation"):
        Scorer(tiny_lm.model, tiny_lm.tokenizer).loglikelihoods([("context", "")])


def test_scores_follow_hooks_attached_to_the_model(tiny_lm) -> None:
    scorer = Scorer(tiny_lm.model, tiny_lm.tokenizer)
    before = scorer.loglikelihoods(REQUESTS)
    projection = tiny_lm.layout.attention_output(tiny_lm.model, 0)
    handle = projection.register_forward_pre_hook(lambda module, args: (args[0] + 0.5,))
    try:
        for reuse in (True, False):
            scorer.reuse_context_cache = reuse
            steered = scorer.loglikelihoods(REQUESTS)
            assert all(abs(a - b) > 1e-4 for a, b in zip(steered, before, strict=True))
    finally:
        handle.remove()
    scorer.reuse_context_cache = True
    assert scorer.loglikelihoods(REQUESTS) == before


PROMPTS = ["Hi", "The capital of France is", "Once upon a time, in a land far away,", "abc", "2+2="]


def test_batched_left_padded_greedy_equals_one_at_a_time(tiny_lm) -> None:
    tokenizer = tiny_lm.tokenizer
    side = tokenizer.padding_side
    batched = Scorer(tiny_lm.model, tokenizer, batch_size=4).generate(PROMPTS, max_new_tokens=8)
    assert tokenizer.padding_side == side
    single = Scorer(tiny_lm.model, tokenizer, batch_size=1)
    one_at_a_time = [single.generate([prompt], max_new_tokens=8)[0] for prompt in PROMPTS]
    assert batched == one_at_a_time
    for prompt, generation in zip(PROMPTS, batched, strict=True):
        assert generation.prompt == prompt
        assert generation.full_text.startswith(prompt)
        assert generation.full_text.endswith(generation.new_text)
        assert 0 < generation.new_tokens <= 8


def test_generation_follows_hooks(tiny_lm) -> None:
    scorer = Scorer(tiny_lm.model, tiny_lm.tokenizer)
    plain = scorer.generate(PROMPTS, max_new_tokens=6)
    projection = tiny_lm.layout.attention_output(tiny_lm.model, 1)
    handle = projection.register_forward_pre_hook(lambda module, args: (args[0] * 0 + 3.0,))
    try:
        steered = scorer.generate(PROMPTS, max_new_tokens=6)
    finally:
        handle.remove()
    assert [g.new_text for g in steered] != [g.new_text for g in plain]
    assert scorer.generate(PROMPTS, max_new_tokens=6) == plain


def test_generation_batches_longest_prompts_together(tiny_lm) -> None:
    tokenizer = tiny_lm.tokenizer
    lengths = [len(tokenizer(prompt)["input_ids"]) for prompt in PROMPTS]
    widths: list[int] = []

    def record_prefill_width(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:
            widths.append(ids.shape[1])

    handle = tiny_lm.model.register_forward_pre_hook(record_prefill_width, with_kwargs=True)
    try:
        results = Scorer(tiny_lm.model, tokenizer, batch_size=2).generate(PROMPTS, max_new_tokens=2)
    finally:
        handle.remove()
    longest_first = sorted(lengths, reverse=True)
    assert widths == longest_first[::2]  # each batch pads only to its own longest prompt
    assert [result.prompt for result in results] == PROMPTS


STORY_PROMPTS = [
    'Read the story. "Ann met Bob." Who met Bob? Answer:',
    'Read the story. "Cleo is the aunt of Dan, who lives in Rome." Who is Dan\'s aunt? Answer:',
    'Read the story. "Eve." Who? Answer:',
    'Read the story. "Fay and Gus went to the market on a rainy Sunday." Who went? Answer:',
    'Read the story. "Hal." Answer:',
]


def test_a_shared_opening_is_encoded_once_and_changes_no_generation(tiny_lm) -> None:
    """Prompts opening alike: the opening's cache is reused, padding goes after it, outputs unchanged."""
    tokenizer = tiny_lm.tokenizer
    widths: list[tuple[int, int]] = []

    def record_widths(module, args):  # on the embedding: a hook on the model itself turns sharing off
        if args[0].shape[1] > 1:
            widths.append(tuple(args[0].shape))

    separate = Scorer(tiny_lm.model, tokenizer, batch_size=2, reuse_context_cache=False)
    expected = separate.generate(STORY_PROMPTS, max_new_tokens=6)
    handle = tiny_lm.model.get_input_embeddings().register_forward_pre_hook(record_widths)
    try:
        shared = Scorer(tiny_lm.model, tokenizer, batch_size=2)
        generations = shared.generate(STORY_PROMPTS, max_new_tokens=6)
    finally:
        handle.remove()
    assert generations == expected
    assert generations == [separate.generate([prompt], max_new_tokens=6)[0] for prompt in STORY_PROMPTS]
    opening = len(tokenizer('Read the story. "')["input_ids"])
    lengths = sorted((len(tokenizer(prompt)["input_ids"]) for prompt in STORY_PROMPTS), reverse=True)
    assert widths[0] == (1, opening)  # the opening, once
    assert [width for _, width in widths[1:]] == [length - opening for length in lengths[::2]]
    assert shared.tokens_processed < separate.tokens_processed


def whole_forward_widths(tiny_lm, score, capabilities: Capabilities | None) -> list[int]:
    """The token count of every call the model's own forward sees while ``score(scorer)`` runs."""
    calls: list[int] = []
    handle = tiny_lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        score(Scorer(tiny_lm.model, tiny_lm.tokenizer, batch_size=8, capabilities=capabilities))
    finally:
        handle.remove()
    return calls


def generate_stories(scorer: Scorer) -> None:
    scorer.generate(STORY_PROMPTS, max_new_tokens=2)


def test_no_shared_opening_when_a_hook_watches_whole_calls(tiny_lm) -> None:
    """A hook on the model itself may depend on each call starting at the prompt's first token:
    a method that says so (watches_whole_forward) gets every prompt whole."""
    calls = whole_forward_widths(tiny_lm, generate_stories, Capabilities(watches_whole_forward=True))
    longest = max(len(tiny_lm.tokenizer(prompt)["input_ids"]) for prompt in STORY_PROMPTS)
    assert calls[0] == longest  # one left-padded call with every prompt whole


@pytest.mark.parametrize("capabilities", [None, Capabilities()], ids=["undeclared", "declares-nothing"])
def test_a_method_declaring_nothing_gets_the_shared_opening(tiny_lm, capabilities) -> None:
    """The Scorer reads the declaration, not the model's hook tables: the same hook, undeclared,
    sees the opening's call first."""
    calls = whole_forward_widths(tiny_lm, generate_stories, capabilities)
    assert calls[0] == len(tiny_lm.tokenizer('Read the story. "')["input_ids"])


def score_shared_context(scorer: Scorer) -> None:
    scorer.loglikelihoods([(QUESTION, " Iron."), (QUESTION, " Feathers, because there are so many.")])


def test_no_context_cache_when_a_method_watches_whole_calls(tiny_lm) -> None:
    """Log-likelihoods: one call over context + continuation per request, never a cached context."""
    tokenizer = tiny_lm.tokenizer
    question = len(tokenizer(QUESTION)["input_ids"])
    longest = len(tokenizer(QUESTION + " Feathers, because there are so many.")["input_ids"])
    watched = whole_forward_widths(tiny_lm, score_shared_context, Capabilities(watches_whole_forward=True))
    assert watched == [longest]  # both requests right-padded into one whole call
    plain = whole_forward_widths(tiny_lm, score_shared_context, Capabilities())
    assert plain[0] == question  # the context once, then the continuations on its cache
    assert len(plain) == 2 and plain[1] < longest


def test_scores_are_the_same_with_and_without_the_shortcut(tiny_lm) -> None:
    declared = Scorer(tiny_lm.model, tiny_lm.tokenizer, capabilities=Capabilities(watches_whole_forward=True))
    assert declared.loglikelihoods(REQUESTS) == pytest.approx(
        Scorer(tiny_lm.model, tiny_lm.tokenizer).loglikelihoods(REQUESTS), **TOLERANCE
    )


class SilentListener(PromptListener):
    def set_prompt(self, spans: PromptSpans | None) -> None:
        pass


def test_a_declaration_the_model_contradicts_fails_loudly(tiny_lm) -> None:
    needs = Capabilities(needs_prompt_positions=True)
    with pytest.raises(RuntimeError, match="carries no PromptListener"):
        Scorer(tiny_lm.model, tiny_lm.tokenizer, capabilities=needs).loglikelihoods(REQUESTS[:1])
    tiny_lm.model.add_module("silent_listener", SilentListener())
    with pytest.raises(RuntimeError, match="do not declare needs_prompt_positions"):
        Scorer(tiny_lm.model, tiny_lm.tokenizer, capabilities=Capabilities()).generate(["Hi"], max_new_tokens=1)
    assert Scorer(tiny_lm.model, tiny_lm.tokenizer).loglikelihoods(REQUESTS[:1])  # None: read off the model


def test_the_tuner_scores_with_the_methods_declaration(tiny_lm, monkeypatch) -> None:
    from lofit_bench.engine import scoring
    from lofit_bench.methods.repe import RepE
    from lofit_bench.sweep import tuning

    seen: list[Capabilities | None] = []

    class Recording(Scorer):
        def __init__(self, *args, capabilities=None, **kwargs) -> None:
            seen.append(capabilities)
            super().__init__(*args, capabilities=capabilities, **kwargs)

    class Task:
        def evaluate(self, scorer, fold, split, limit):
            return split

    monkeypatch.setattr(scoring, "Scorer", Recording)
    method = RepE()
    method.prepare(tiny_lm)
    method._attach("contrast", 0, 1.0, torch.zeros(tiny_lm.layout.hidden_size))
    try:
        assert tuning.evaluate(method, Task(), "main", 1, 1, False) == "dev"
    finally:
        method.remove()
    assert seen == [Capabilities(watches_whole_forward=True, scores_continuations=False)]


def test_built_in_methods_declare_only_what_their_edits_need(builtin_host) -> None:
    declared = {name: builtin_host.methods.get(name)().capabilities for name in builtin_host.methods.names()}
    assert declared.pop("loreft") == Capabilities(needs_prompt_positions=True)
    assert declared.pop("repe") == Capabilities()  # until its contrast vector is attached (tests/test_repe.py)
    assert declared and all(capabilities == Capabilities() for capabilities in declared.values())

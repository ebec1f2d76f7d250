"""Model-side evaluation primitives that tasks build on: summed log-probs and greedy generation.

Tokenisation follows lm-eval's convention, so scores are comparable with it: the context and
``context + continuation`` are encoded, and the continuation's tokens are what the whole
encoding has beyond the context's. Requests that share a context (the choices of one
multiple-choice question) reuse the context's KV cache.

What the method's edits need comes from its :class:`~lofit_bench.method.Capabilities`, which
the caller passes (the runner and the tuner pass ``method.capabilities``; without it, a
model's :meth:`~lofit_bench.method.Capabilities.of_model`). A method that declares
``needs_prompt_positions`` (edits prompt positions only, e.g. LoReFT) has its
:class:`~lofit_bench.prompt_positions.PromptListener` told where each call's prompt is: the
context when scoring, the prompt when generating. That method, and one that declares
``watches_whole_forward`` (RepE's contrast vector), get no cached-prefix shortcut: each
request takes one forward pass over context + continuation, each generation batch starts
from its prompts' first tokens.
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lofit_bench.method import Capabilities
from lofit_bench.progress import progress_bar
from lofit_bench.prompt_positions import (
    PromptListener,
    PromptSpans,
    declare_prompt,
    listeners_to_tell,
)

MIN_SHARED_PREFIX = 16  # tokens; below this, copying a cache costs more than recomputing
# Generation copies the prefix's cache once per batch (not once per question), so a short
# shared opening (CLUTRR's 'Read the following story about a family. "') already pays.
MIN_SHARED_GENERATION_PREFIX = 4


def cache_argument(model: nn.Module) -> str:
    """The keyword ``model``'s forward takes a KV cache under (a peft model's: its base model's).

    transformers 5.24 renamed ``past_key_values`` to ``cache``; this accepts both. Hooks that
    read the cache from a call's kwargs, or pass one to their own calls, use it too.
    """
    forward = getattr(model, "get_base_model", lambda: model)().forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _output_cache(output) -> object:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@dataclass(frozen=True)
class Generation:
    """One greedy generation: ``full_text`` is the whole decoded sequence (prompt included)."""

    prompt: str
    full_text: str
    new_text: str
    new_tokens: int


class Scorer:
    """Scores a causal LM (with whatever hooks are attached to it) on text requests.

    ``capabilities`` is what the method behind ``model`` declared it needs; None (a plain
    model, an external caller) reads :meth:`Capabilities.of_model` at each call.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        batch_size: int = 16,
        progress: bool = False,
        reuse_context_cache: bool = True,
        capabilities: Capabilities | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.reuse_context_cache = reuse_context_cache
        self.capabilities = capabilities
        self.tokens_processed = 0

    def _needs(self) -> tuple[list[PromptListener], bool]:
        """The prompt listeners to tell, and whether a cached shared prefix may be reused."""
        capabilities = self.capabilities if self.capabilities is not None else Capabilities.of_model(self.model)
        listeners = listeners_to_tell(self.model, capabilities.needs_prompt_positions)
        return listeners, self.reuse_context_cache and capabilities.allows_cached_prefix

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split: trailing spaces of the context move to the continuation."""
        trailing = len(context) - len(context.rstrip(" "))
        if trailing:
            context, continuation = context[:-trailing], context[-trailing:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        if not context_ids:
            # Nothing predicts the first continuation token without a context; lm-eval's rule
            # is to condition on BOS (else EOS). Scoring it from position -1 would read a pad.
            prefix = self.tokenizer.bos_token_id
            prefix = prefix if prefix is not None else self.tokenizer.eos_token_id
            if prefix is None:
                raise ValueError("empty context and the tokenizer has neither a BOS nor an EOS token")
            return [prefix], whole
        return context_ids, whole[len(context_ids) :]

    # -- log-likelihood ------------------------------------------------------------------
    @torch.no_grad()
    def loglikelihoods(self, requests: Sequence[tuple[str, str]], description: str = "scoring") -> list[float]:
        """Sum of the continuation tokens' log-probs, one float per (context, continuation)."""
        groups: OrderedDict[tuple[int, ...], list[tuple[int, list[int]]]] = OrderedDict()
        for index, (context, continuation) in enumerate(requests):
            context_ids, continuation_ids = self.encode_pair(context, continuation)
            if not continuation_ids:
                raise ValueError(f"empty continuation for request {index}: {continuation!r}")
            groups.setdefault(tuple(context_ids), []).append((index, continuation_ids))
        scores = [0.0] * len(requests)
        self.model.eval()
        listeners, reuse_cache = self._needs()
        prefix = self._shared_prefix([list(context) for context in groups]) if reuse_cache else None
        with progress_bar(total=len(requests), description=description, enabled=self.progress) as bar:
            for context_ids, members in groups.items():
                for start in range(0, len(members), self.batch_size):
                    chunk = members[start : start + self.batch_size]
                    values = (
                        self._score_shared_context(list(context_ids), [ids for _, ids in chunk], prefix)
                        if reuse_cache and context_ids
                        else self._score_full([(list(context_ids), ids) for _, ids in chunk], listeners)
                    )
                    for (index, _), value in zip(chunk, values, strict=True):
                        scores[index] = value
                    bar.update(len(chunk))
        return scores

    def _score_full(
        self, pairs: list[tuple[list[int], list[int]]], listeners: Sequence[PromptListener] = ()
    ) -> list[float]:
        """Reference path: one right-padded forward over context + continuation. The LM head
        runs only from the first position that predicts a continuation token on (with a 262k
        vocabulary, as Gemma 3's, the head costs more than the rest of a small model)."""
        sequences = [context + continuation for context, continuation in pairs]
        input_ids, attention_mask = self._right_pad(sequences)
        first = min(len(context) for context, _ in pairs) - 1
        with declare_prompt(listeners, PromptSpans.right_padded([len(context) for context, _ in pairs])):
            logits = self.model(
                input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=input_ids.shape[1] - first
            ).logits.float()
        log_probs = torch.log_softmax(logits, dim=-1)
        self.tokens_processed += int(attention_mask.sum())
        results = []
        for row, (context, continuation) in enumerate(pairs):
            start = len(context) - 1 - first
            positions = torch.arange(start, start + len(continuation), device=logits.device)
            targets = torch.tensor(continuation, device=logits.device)
            results.append(float(log_probs[row, positions, targets].sum()))
        return results

    def _shared_prefix(self, contexts: list[list[int]], minimum: int = MIN_SHARED_PREFIX) -> tuple[int, object] | None:
        """KV cache of the token prefix every context starts with (TruthfulQA's instruction and
        six-shot primer), computed once and copied per question; None when there is none worth it."""
        if len(contexts) < 2:
            return None
        length = min(len(context) for context in contexts) - 1  # keep >= 1 token per context
        first = contexts[0]
        for context in contexts[1:]:
            length = next((i for i in range(length) if context[i] != first[i]), length)
        if length < minimum:
            return None
        output = self.model(input_ids=torch.tensor([first[:length]], device=self.device), use_cache=True, logits_to_keep=1)
        self.tokens_processed += length
        return length, _output_cache(output)

    def _score_shared_context(
        self, context: list[int], continuations: list[list[int]], prefix: tuple[int, object] | None = None
    ) -> list[float]:
        """Encode the context once (after a shared prefix's cached keys and values, if any), then
        score every continuation on a copy of that KV cache."""
        device = self.device
        start, cache = (prefix[0], copy.deepcopy(prefix[1])) if prefix else (0, None)
        context_tensor = torch.tensor([context[start:]], device=device)
        position_ids = torch.arange(start, len(context), device=device).unsqueeze(0)
        extra = {cache_argument(self.model): cache} if cache is not None else {}
        context_out = self.model(  # only the last position's logits are read: the LM head runs there only
            input_ids=context_tensor, position_ids=position_ids, use_cache=True, logits_to_keep=1, **extra
        )
        cache = _output_cache(context_out)
        last_log_probs = torch.log_softmax(context_out.logits[0, -1].float(), dim=-1)
        batch = len(continuations)
        cache.batch_repeat_interleave(batch)
        input_ids, continuation_mask = self._right_pad(continuations)
        attention_mask = torch.cat(
            [torch.ones(batch, len(context), dtype=continuation_mask.dtype, device=device), continuation_mask], dim=1
        )
        position_ids = torch.arange(len(context), len(context) + input_ids.shape[1], device=device).expand(batch, -1)
        logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{cache_argument(self.model): cache},
        ).logits.float()
        log_probs = torch.log_softmax(logits, dim=-1)
        self.tokens_processed += len(context) - start + int(continuation_mask.sum())
        results = []
        for row, continuation in enumerate(continuations):
            total = last_log_probs[continuation[0]].to(log_probs.device)
            if len(continuation) > 1:  # positions and targets where the log-probs are (a sharded model's last device)
                positions = torch.arange(0, len(continuation) - 1, device=log_probs.device)
                targets = torch.tensor(continuation[1:], device=log_probs.device)
                total = total + log_probs[row, positions, targets].sum()
            results.append(float(total))
        return results

    def _right_pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(sequence) for sequence in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            attention_mask[row, : len(sequence)] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    # -- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, prompts: Sequence[str], max_new_tokens: int = 16, description: str = "generating"
    ) -> list[Generation]:
        """Greedy decoding with a KV cache, batched, stopping at EOS; results in ``prompts`` order.

        Prompts are batched longest first (as lm-eval does), so a batch pads only to lengths
        close to its own. Each row is left-padded; when every prompt opens with the same
        tokens (and ``reuse_context_cache`` is on), that opening is encoded once and each batch
        starts from a copy of its KV cache, the padding going between the opening and the rest
        (positions follow the attention mask, so every row reads exactly as if unpadded).
        """
        token_lists = [self.encode(prompt) for prompt in prompts]
        order = sorted(range(len(prompts)), key=lambda index: -len(token_lists[index]))
        self.model.eval()
        listeners, reuse_cache = self._needs()
        prefix = self._shared_prefix(token_lists, MIN_SHARED_GENERATION_PREFIX) if reuse_cache else None
        shared = prefix[0] if prefix else 0
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        results: list[Generation | None] = [None] * len(prompts)
        with progress_bar(total=len(prompts), description=description, enabled=self.progress) as bar:
            for start in range(0, len(order), self.batch_size):
                indices = order[start : start + self.batch_size]
                rows = [token_lists[index] for index in indices]
                width = max(len(row) for row in rows)
                input_ids = torch.tensor(
                    [row[:shared] + [pad_id] * (width - len(row)) + row[shared:] for row in rows], device=self.device
                )
                attention_mask = torch.tensor(
                    [[1] * shared + [0] * (width - len(row)) + [1] * (len(row) - shared) for row in rows],
                    device=self.device,
                )
                extra = {}
                if prefix:
                    cache = copy.deepcopy(prefix[1])
                    cache.batch_repeat_interleave(len(rows))
                    extra[cache_argument(self.model)] = cache
                with declare_prompt(listeners, PromptSpans.left_padded(attention_mask)):
                    output = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        do_sample=False,
                        max_new_tokens=max_new_tokens,
                        pad_token_id=pad_id,
                        eos_token_id=self.tokenizer.eos_token_id,
                        temperature=None,
                        top_p=None,
                        top_k=None,
                        **extra,
                    )
                self.tokens_processed += int(attention_mask.sum()) - shared * len(rows) + output[:, width:].numel()
                for row, index in enumerate(indices):
                    new_ids = output[row, width:]
                    results[index] = Generation(
                        prompt=prompts[index],
                        full_text=self.tokenizer.decode(output[row], skip_special_tokens=True),
                        new_text=self.tokenizer.decode(new_ids, skip_special_tokens=True),
                        new_tokens=int((new_ids != pad_id).sum()),
                    )
                bar.update(len(rows))
        return [result for result in results if result is not None]

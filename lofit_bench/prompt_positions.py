"""Where the prompt is, for methods that edit prompt positions only (LoReFT's first and last tokens).

Most methods edit every position, so a forward pass needs no more than its tokens. LoReFT
edits the first p and the last s tokens *of the prompt*, and a forward pass cannot tell prompt
from answer: the harness can. It knows, for each forward call it makes,

- in training, that the prompt ends where the loss begins (SFT: the first label that is not
  -100; DPO: the first token of ``completion_mask``), sequences right-padded from column 0;
- in log-likelihood scoring, that the context is the prompt and the continuation is not;
- in generation, that the tokens given to ``generate()`` are the prompt (left-padded).

A module that needs this subclasses :class:`PromptListener` and hangs on the model as a
submodule, and its method declares ``Capabilities(needs_prompt_positions=True)``
(:class:`lofit_bench.method.Capabilities`); the trainer (:mod:`lofit_bench.engine.training`) and the
:class:`~lofit_bench.engine.scoring.Scorer` find the listeners with :func:`listeners_to_tell` and wrap
each call in :func:`declare_prompt`. A declaration the model contradicts fails loudly. Nothing
here is specific to one method, and models without a listener take the usual paths.

A declaration describes the forward calls that *start* a sequence (no KV cache, or an empty
one); a call that extends a cache (a generated token, a continuation scored on a cached
context) holds no prompt token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PromptSpans:
    """Per row of the next call's input: the first column of the prompt and its token count.

    ``reference`` marks DPO's reference pass, which the listener may treat differently (LoReFT
    and LoRA take the base model as the reference).
    """

    starts: tuple[int, ...]
    lengths: tuple[int, ...]
    reference: bool = False

    def __post_init__(self) -> None:
        if len(self.starts) != len(self.lengths):
            raise ValueError("one start and one length per row")
        if any(start < 0 for start in self.starts) or any(length < 0 for length in self.lengths):
            raise ValueError("prompt starts and lengths must be >= 0")

    @property
    def rows(self) -> int:
        return len(self.starts)

    @classmethod
    def right_padded(cls, lengths: Sequence[int]) -> PromptSpans:
        """Rows that begin with their prompt at column 0 (training batches, scored contexts)."""
        return cls(tuple(0 for _ in lengths), tuple(int(length) for length in lengths))

    @classmethod
    def left_padded(cls, attention_mask: torch.Tensor) -> PromptSpans:
        """Left-padded prompts given whole to ``generate()``: each row's real tokens."""
        lengths = attention_mask.long().sum(dim=1).tolist()
        width = attention_mask.shape[1]
        return cls(tuple(width - length for length in lengths), tuple(lengths))

    @classmethod
    def before_first(cls, marked: torch.Tensor, attention_mask: torch.Tensor | None = None) -> PromptSpans:
        """Right-padded rows whose prompt is every column before the first ``marked`` one.

        ``marked`` is the completion: SFT's ``labels != -100`` or DPO's ``completion_mask``. A row
        whose completion was cut off by truncation is all prompt (its real tokens).
        """
        marked = marked.bool()
        real = attention_mask.long().sum(dim=1) if attention_mask is not None else torch.full(
            (marked.shape[0],), marked.shape[1], dtype=torch.long, device=marked.device
        )
        first = torch.where(marked.any(dim=1), marked.long().argmax(dim=1), real)
        return cls.right_padded(first.tolist())

    def as_reference(self) -> PromptSpans:
        return PromptSpans(self.starts, self.lengths, reference=True)


class PromptListener(nn.Module):
    """Base of modules that must know which tokens of a forward call are the prompt."""

    def set_prompt(self, spans: PromptSpans | None) -> None:
        """Called with the spans before the harness's forward calls, and with None after."""
        raise NotImplementedError


def find_prompt_listeners(model: nn.Module) -> list[PromptListener]:
    return [module for module in model.modules() if isinstance(module, PromptListener)]


def listeners_to_tell(model: nn.Module, needs_prompt_positions: bool) -> list[PromptListener]:
    """The listeners on ``model`` that the harness must tell where prompts are.

    ``needs_prompt_positions`` is the method's declaration; a model that carries no listener
    though one was declared, or a listener that was not declared, is a mistake in the method,
    and raises rather than scoring or training with prompts nobody is told about.
    """
    found = find_prompt_listeners(model)
    if needs_prompt_positions and not found:
        raise RuntimeError(
            "the method declares needs_prompt_positions, but its model carries no PromptListener "
            "submodule to tell where prompts are; attach the listener before scoring or training"
        )
    if found and not needs_prompt_positions:
        raise RuntimeError(
            f"the model carries a PromptListener ({type(found[0]).__name__}) but the capabilities passed "
            "do not declare needs_prompt_positions; set capabilities = Capabilities(needs_prompt_positions=True) "
            "on the method (lofit_bench.method.Capabilities)"
        )
    return found


@contextmanager
def declare_prompt(listeners: Sequence[PromptListener] | nn.Module, spans: PromptSpans) -> Iterator[None]:
    """Tell every listener (or every listener on a model) where the prompt is, for the calls inside."""
    if isinstance(listeners, nn.Module):
        listeners = find_prompt_listeners(listeners)
    for listener in listeners:
        listener.set_prompt(spans)
    try:
        yield
    finally:
        for listener in listeners:
            listener.set_prompt(None)

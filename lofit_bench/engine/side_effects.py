"""Side effects of a fit: how far the fitted model moved from the base model on text no task uses.

Two numbers per fold, from one batched forward pass of each model over the same held-out
passages (``budget.side_effect_texts`` of them, each cut to :data:`MAX_TOKENS` tokens):

- ``kl_from_base``: KL(base || fitted) of the next-token distributions, in nats, averaged over
  every real token position: what the fit changed in the model's predictions on text it
  never saw (the ITI paper's KL measure).
- ``cross_entropy_change``: the fitted model's mean cross-entropy on the passages' next tokens
  minus the base model's (nats per token; positive: general text got less likely, the
  "forgetting" that peft's method comparison reports).

The base model's log-probabilities are computed on the very model object the method will
edit, before ``prepare`` (:func:`base_distribution`): no second model is loaded, and a method
that changes weights in place (full fine-tuning) is measured against the weights it started
from. The text is a fixed slice of the Python Language Reference (PSF-2.0; see
``lofit_bench/data/DATA.md``, section "Held-out text"): real English prose that no task
trains or evaluates on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from lofit_bench.method import Capabilities
from lofit_bench.prompt_positions import PromptSpans, declare_prompt, listeners_to_tell
from lofit_bench.records.record import SideEffects

#: Tokens per passage (the passages are 300 to 1,200 characters; 64 tokens keep one batched
#: pass cheap and the base log-probs small: 16 x 64 x vocabulary floats).
MAX_TOKENS = 64
HELDOUT_TEXT_FILE = "heldout_text/python_reference.jsonl"
SOURCE = "Python Language Reference excerpts (PSF-2.0), lofit_bench/data/" + HELDOUT_TEXT_FILE


@cache
def _all_passages() -> tuple[str, ...]:
    from lofit_bench.data import DATA_ROOT

    lines = (DATA_ROOT / HELDOUT_TEXT_FILE).read_text(encoding="utf-8").splitlines()
    return tuple(json.loads(line)["text"] for line in lines if line.strip())


def heldout_texts(count: int) -> list[str]:
    """The first ``count`` held-out passages (all of them when ``count`` exceeds the file)."""
    return list(_all_passages()[:count])


@dataclass
class BaseDistribution:
    """The base model's next-token log-probs on the held-out passages (CPU, fp32)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    log_probs: torch.Tensor
    batch_size: int

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def encode_texts(tokenizer, texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and attention mask of ``texts``, each cut to ``max_tokens``."""
    rows = [tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens] for text in texts]
    width = max(len(row) for row in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
        attention_mask[index, : len(row)] = 1
    return input_ids, attention_mask


@torch.no_grad()
def next_token_log_probs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int,
    capabilities: Capabilities | None = None,
) -> torch.Tensor:
    """[N, T, V] log-probs of the next token at every position, fp32 on the CPU. A method that
    edits prompt positions (LoReFT) is told the whole passage is its prompt."""
    capabilities = capabilities if capabilities is not None else Capabilities.of_model(model)
    listeners = listeners_to_tell(model, capabilities.needs_prompt_positions)
    device = next(model.parameters()).device
    model.eval()
    parts = []
    for start in range(0, len(input_ids), batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        mask = attention_mask[start : start + batch_size].to(device)
        with declare_prompt(listeners, PromptSpans.right_padded([int(length) for length in mask.sum(dim=1)])):
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        parts.append(torch.log_softmax(logits, dim=-1).cpu())
    return torch.cat(parts)


def base_distribution(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int) -> BaseDistribution:
    """The base model's log-probs: call before the method touches ``model``."""
    input_ids, attention_mask = encode_texts(tokenizer, texts)
    log_probs = next_token_log_probs(model, input_ids, attention_mask, batch_size, Capabilities())
    return BaseDistribution(input_ids, attention_mask, log_probs, batch_size)


def compare(base: BaseDistribution, fitted_log_probs: torch.Tensor) -> SideEffects:
    """KL(base || fitted) per real position and the change in next-token cross-entropy."""
    mask = base.attention_mask.bool()
    kl = (base.log_probs.exp() * (base.log_probs - fitted_log_probs)).sum(dim=-1)
    targets = base.input_ids[:, 1:].unsqueeze(-1)
    predicted = mask[:, 1:]  # position t predicts token t + 1 when that token is real
    base_ce = -base.log_probs[:, :-1].gather(-1, targets).squeeze(-1)[predicted].mean()
    fitted_ce = -fitted_log_probs[:, :-1].gather(-1, targets).squeeze(-1)[predicted].mean()
    return SideEffects(
        kl_from_base=float(kl[mask].mean()),
        cross_entropy_base=float(base_ce),
        cross_entropy_fitted=float(fitted_ce),
        cross_entropy_change=float(fitted_ce - base_ce),
        texts=len(base.input_ids),
        tokens=base.tokens,
        source=SOURCE,
    )


def measure_side_effects(base: BaseDistribution, model: nn.Module, capabilities: Capabilities | None = None) -> SideEffects:
    """The fitted ``model``'s side effects against ``base`` (one batched pass over the same tokens)."""
    fitted = next_token_log_probs(model, base.input_ids, base.attention_mask, base.batch_size, capabilities)
    return compare(base, fitted)

"""Reading a frozen model's activations, and the labelled text pairs ITI and RepE read them on.

Two sites, both at the *last token* of each text (the last prompt-plus-answer token):

- per-head attention outputs: the input of each layer's attention output projection
  (``o_proj``), split into heads -> [N, n_layers, n_heads, head_dim] (ITI's ``head_out``);
- the residual stream: the output of each decoder layer -> [N, n_layers, hidden_size]
  (RepE's ``hidden_states[l + 1]``).

Texts are right-padded in batches and read without gradients; the forward pass stops after
the last layer that is read (the LM head is never computed) and every hook is removed
afterwards, also when the pass fails.

The pairs: each training example becomes one (positive text, negative text) pair. A
preference example (TruthfulQA) gives ``prompt + chosen`` vs ``prompt + rejected``. A
supervised example (CLUTRR, MQuAKE) gives ``prompt + gold`` vs ``prompt + wrong``, the wrong
answer drawn (seeded) from the other examples' gold answers, never equal to this gold: the
task's answer space as the training split shows it (CLUTRR's relation labels, MQuAKE's
entities); dev pairs draw from the dev and training answers.
Prompt and answer are joined exactly as the trainer joins them (plain concatenation).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lofit_bench.engine.models import LoadedModel
from lofit_bench.errors import UserError
from lofit_bench.shared_work import SharedWork, content_hash
from lofit_bench.task import PreferenceExample, SFTExample, TrainingExample

SITES = ("heads", "residual")


@dataclass(frozen=True)
class ContrastPair:
    """Two texts that differ only in the answer: ``positive`` (true/gold) and ``negative``."""

    id: str
    positive: str
    negative: str


def contrast_pairs(
    examples: Sequence[TrainingExample], seed: int, answer_pool: Sequence[TrainingExample] = ()
) -> list[ContrastPair]:
    """One (positive, negative) pair per example; see the module docstring for the rule.

    Wrong answers come from the gold answers of ``examples`` and ``answer_pool`` (pass the
    training split when pairing a small dev sample, whose own answers may all agree).
    """
    answer_space = sorted(
        {example.completion for example in [*examples, *answer_pool] if isinstance(example, SFTExample)}
    )
    generator = random.Random(seed)
    pairs = []
    for example in examples:
        if isinstance(example, PreferenceExample):
            pairs.append(ContrastPair(example.id, example.prompt + example.chosen, example.prompt + example.rejected))
            continue
        wrong_answers = [answer for answer in answer_space if answer.strip().lower() != example.completion.strip().lower()]
        if not wrong_answers:
            raise UserError(
                "cannot build a wrong answer for a contrast pair: every training example has the same "
                f"answer ({example.completion!r}); use more training examples"
            )
        wrong = generator.choice(wrong_answers)
        pairs.append(ContrastPair(example.id, example.prompt + example.completion, example.prompt + wrong))
    return pairs


class StopForward(Exception):
    """Raised by a reading hook once the last needed layer ran, to skip the rest of the model."""


def output_hidden(output: object) -> torch.Tensor:
    """The hidden states of a decoder layer's output (a tensor, or a tuple starting with one)."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value,index]


def replace_output_hidden(output: object, hidden: torch.Tensor) -> object:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden  # type: ignore[index]


@torch.no_grad()
def last_token_activations(
    lm: LoadedModel,
    texts: Sequence[str],
    sites: Sequence[str] = SITES,
    batch_size: int = 8,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Activations at each text's last token, fp32 on the CPU, one tensor per site.

    ``heads``: [N, n_layers, n_heads, head_dim]; ``residual``: [N, n_layers, hidden_size].
    A text longer than ``max_length`` tokens keeps its last ``max_length`` (the answer).
    """
    unknown = set(sites) - set(SITES)
    if unknown or not sites:
        raise ValueError(f"sites must be a non-empty subset of {SITES}, got {list(sites)}")
    if not texts:
        raise ValueError("no texts to read activations from")
    model, layout, tokenizer = lm.model, lm.layout, lm.tokenizer
    device = next(model.parameters()).device
    layers = layout.decoder_layers(model)
    captured: dict[str, list[torch.Tensor]] = {site: [] for site in sites}
    per_batch: dict[str, list[torch.Tensor | None]] = {}
    last_positions = torch.zeros(0, dtype=torch.long)

    def read_heads(layer: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["input"]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        values = hidden[rows, last_positions.to(hidden.device)]
        per_batch["heads"][layer] = values.unflatten(-1, (layout.n_heads, layout.head_dim)).float().cpu()

    def read_residual(layer: int, module: nn.Module, args: tuple, output: object) -> None:
        hidden = output_hidden(output)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        per_batch["residual"][layer] = hidden[rows, last_positions.to(hidden.device)].float().cpu()

    def stop(module: nn.Module, args: tuple, output: object) -> None:
        raise StopForward

    handles = []
    try:
        for layer in range(layout.n_layers):
            if "heads" in sites:
                handles.append(
                    layout.attention_output(model, layer).register_forward_pre_hook(
                        _bind(read_heads, layer), with_kwargs=True
                    )
                )
            if "residual" in sites:
                handles.append(layers[layer].register_forward_hook(_bind(read_residual, layer)))
        handles.append(layers[layout.n_layers - 1].register_forward_hook(stop))
        model.eval()
        token_ids = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
        if max_length is not None:
            token_ids = [ids[-max_length:] for ids in token_ids]
        # Batches of similar lengths waste little on padding; the order is restored at the end.
        order = sorted(range(len(token_ids)), key=lambda index: len(token_ids[index]))
        for start in range(0, len(order), batch_size):
            encoded = [token_ids[index] for index in order[start : start + batch_size]]
            input_ids, attention_mask = _right_pad(encoded, tokenizer, device)
            last_positions = attention_mask.sum(dim=1).cpu() - 1
            per_batch.update({site: [None] * layout.n_layers for site in sites})
            try:
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            except StopForward:
                pass
            for site in sites:
                captured[site].append(torch.stack(per_batch[site], dim=1))  # type: ignore[arg-type]
    finally:
        for handle in handles:
            handle.remove()
    restore = torch.empty(len(order), dtype=torch.long)
    restore[torch.tensor(order)] = torch.arange(len(order))
    return {site: torch.cat(values)[restore] for site, values in captured.items()}


def _bind(function, layer: int):
    def hook(*args, **kwargs):
        return function(layer, *args, **kwargs)

    return hook


def _right_pad(sequences: list[list[int]], tokenizer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(sequence) for sequence in sequences)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
    return input_ids.to(device), attention_mask.to(device)


def pair_activations(
    lm: LoadedModel,
    pairs: Sequence[ContrastPair],
    sites: Sequence[str] = SITES,
    batch_size: int = 8,
    max_length: int | None = None,
    shared: SharedWork | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(positive, negative) last-token activations of each pair, per site, aligned by pair.

    With an enabled ``shared`` store, every site is read in the one pass and kept there under
    the texts' hash, so ITI, RepE and LoFiT's ``head_source=iti`` of one sweep read the frozen
    model once per set of pairs (the hooks only read: the values are the same either way)."""
    texts = [pair.positive for pair in pairs] + [pair.negative for pair in pairs]
    if shared is not None and shared.enabled:
        fields = {"texts": content_hash(texts), "count": len(texts), "batch_size": batch_size, "max_length": max_length}
        values, _ = shared.fetch(
            "activations", fields, lambda: (last_token_activations(lm, texts, SITES, batch_size, max_length), {})
        )
        values = {site: values[site] for site in sites}
    else:
        values = last_token_activations(lm, texts, sites, batch_size, max_length)
    return {site: (tensor[: len(pairs)], tensor[len(pairs) :]) for site, tensor in values.items()}

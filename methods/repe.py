"""RepE: steering the residual stream with a reading vector or a per-input contrast vector.

Zou et al., "Representation Engineering: A Top-Down Approach to AI Transparency",
arXiv:2310.01405 (2023). Reference code: github.com/andyzoujm/representation-engineering
(``rep-reading`` + ``rep-control``, and ``rep_control_contrast_vec``). The LoFiT paper
(Yin et al. 2024, Sec. 4.3) compares against a
reading vector on TruthfulQA and a contrast vector on MQuAKE and CLUTRR, both controlling the
single best ("top-1") layer with a coefficient tuned on dev.

Site: h^l, the residual stream after decoder layer l (the layer's output). Nothing is trained.

Reading vector. Every training example gives a positive and a negative text
(:func:`lofit_bench.engine.activations.contrast_pairs`: TruthfulQA ``prompt + chosen`` vs
``prompt + rejected``; CLUTRR/MQuAKE ``prompt + gold`` vs ``prompt + a wrong answer`` drawn,
seeded, from the other examples' answers). With h_i^+ and h_i^- their last-token states:

    d_i = s_i * (h_i^+ - h_i^-),  s_i = +-1 at random (seeded)
    r^l = first principal component of {d_i - mean(d)}       (unit norm)
    sign: r^l <- -r^l unless <h_i^+, r^l> > <h_i^-, r^l> for most training pairs

The random s_i stand for RepE's shuffled pair order: it makes mean(d) ~ 0, so centring
keeps the concept direction in the first component instead of subtracting it. Control adds

    h^l <- h^l + alpha * r^l        (every position, every forward call, no renormalisation)

Contrast vector (RepE's ``contrast_vec``): nothing is precomputed. The input runs in lock-step
with two copies of itself prefixed with a positive and a negative instruction
(``positive_instruction`` / ``negative_instruction``; the LoFiT paper does not report its own).
At the controlled layer the plain stream receives

    h^l <- h^l + alpha * (h^l_pos - h^l_neg)

at the last position of every forward call: the last prompt token, then each generated token
(the KV-cached copies advance with the same tokens the plain stream generates). With a single
controlled layer, h^l_pos and h^l_neg depend only on layers <= l, so the copies stop there
(no LM head) and this equals RepE's three-stream control. It needs generation; on a
multiple-choice task use the reading vector.

Layer and alpha. Layers are ranked by RepE's reading scan: how often the reading vector of
each layer puts the positive member of a held-out (dev) pair above the negative one (ties:
the larger standardised margin). ``layer_rank`` picks the controlled layer from that ranking
(0 = the paper's top-1 layer). The harness tunes ``layer_rank`` (0 to 2) and ``alpha``
(log-uniform in [1, 40]) on the dev split (:mod:`lofit_bench.sweep.tuning`, the paper's top-1
layer with alpha = 5 first); the scan does not depend on them, so it runs once per fold and
every trial reuses it. ``layer`` fixes the layer instead (then only alpha is tuned).

Recorded: trainable parameters 0; stored values hidden_size for the reading vector, 0 for the
contrast vector (recomputed for every input).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lofit_bench import hookimpl
from lofit_bench.engine.activations import (
    StopForward,
    contrast_pairs,
    output_hidden,
    pair_activations,
    replace_output_hidden,
)
from lofit_bench.engine.models import LoadedModel
from lofit_bench.errors import UserError
from lofit_bench.method import Capabilities, FitContext, Method, MethodConfig
from lofit_bench.search_space import IntRange, LogUniform
from lofit_bench.shared_work import SharedWork
from lofit_bench.task import TrainingExample

VECTOR_FILE = "repe_vector.safetensors"
STATE_FILE = "repe_state.json"
VECTORS = ("auto", "reading", "contrast")
# 5: the LoFiT paper's best for both vectors (Yin et al. 2024, Sec. 4.3). The tuned range reaches 40
# because a small model's residual stream is large next to a unit vector (SmolLM2: |h| ~ 100-200
# mid-depth) and the instructed copies differ little at the last token (|h_pos - h_neg| ~ 3-8 there).
DEFAULT_ALPHA = 5.0


@dataclass
class RepEConfig(MethodConfig):
    vector: str = field(
        default="auto",
        metadata={"help": "reading (PCA reading vector), contrast (per-input contrast vector; generation "
                  "tasks only) or auto: reading on multiple-choice tasks, contrast on generation tasks "
                  "(the LoFiT paper's choice: reading for TruthfulQA, contrast for MQuAKE and CLUTRR)", "choices": VECTORS},
    )
    alpha: float | None = field(
        default=None,
        metadata={"help": "control coefficient; None: 5, the LoFiT paper's best", "tune": LogUniform(1.0, 40.0)},
    )
    layer_rank: int = field(
        default=0,
        metadata={"help": "controlled layer: this rank in the reading scan's ranking (0 = the best layer, the "
                  "paper's top-1)", "minimum": 0, "tune": IntRange(0, 2)},
    )
    layer: int | None = field(
        default=None, metadata={"help": "control this layer (0-based) instead of scanning", "minimum": 0}
    )
    positive_instruction: str = field(
        default="Give a correct answer.\n",
        metadata={"help": "contrast vector: prefix of the positive copy", "min_length": 1, "prompt_text": True},
    )
    negative_instruction: str = field(
        default="Give an incorrect answer.\n",
        metadata={"help": "contrast vector: prefix of the negative copy", "min_length": 1, "prompt_text": True},
    )



# -- reading vectors (plain functions: tests call them on planted data) ------------------------
def reading_vectors(positive: torch.Tensor, negative: torch.Tensor, seed: int) -> torch.Tensor:
    """Unit reading vector per layer: [N, L, d] x 2 -> [L, d] (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (positive.shape[0],), generator=generator).double() * 2 - 1
    differences = signs[:, None, None] * (positive.double() - negative.double())
    centred = differences - differences.mean(dim=0, keepdim=True)
    directions = []
    for layer in range(centred.shape[1]):
        _, _, right = torch.linalg.svd(centred[:, layer], full_matrices=False)
        direction = right[0]
        margins = (positive[:, layer].double() - negative[:, layer].double()) @ direction
        if (margins > 0).double().mean() < 0.5:
            direction = -direction
        directions.append(direction)
    return torch.stack(directions).float()


def separation(positive: torch.Tensor, negative: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer: share of pairs whose positive projects higher, and the standardised margin."""
    margins = torch.einsum("nld,ld->nl", positive.double() - negative.double(), directions.double())
    accuracy = (margins > 0).double().mean(dim=0)
    standardised = margins.mean(dim=0) / margins.std(dim=0, unbiased=False).clamp_min(1e-12)
    return accuracy.float(), standardised.float()


def rank_layers(accuracy: torch.Tensor, margin: torch.Tensor) -> list[int]:
    """Layers, best separating first (ties: larger standardised margin, then lower layer)."""
    return sorted(range(len(accuracy)), key=lambda layer: (-float(accuracy[layer]), -float(margin[layer]), layer))


# -- control hooks -----------------------------------------------------------------------------
class ReadingControl:
    """h^l <- h^l + alpha * direction at every position of the output of decoder layer l."""

    def __init__(self, lm: LoadedModel, layer: int, alpha: float, direction: torch.Tensor) -> None:
        self.layer, self.alpha, self.direction = layer, float(alpha), direction.float()
        block = lm.layout.decoder_layers(lm.model)[layer]
        self.handles: list[RemovableHandle] = [block.register_forward_hook(self._add)]

    def _add(self, module: nn.Module, args: tuple, output: object) -> object:
        if self.alpha == 0:
            return None
        hidden = output_hidden(output)
        shift = (self.alpha * self.direction).to(device=hidden.device, dtype=hidden.dtype)
        return replace_output_hidden(output, hidden + shift)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


@dataclass
class _Stream:
    """One instructed copy of the batch: its KV cache (layers <= l) and attention mask."""

    cache: object
    mask: torch.Tensor


class ContrastControl:
    """h^l <- h^l + alpha * (h^l_pos - h^l_neg) at the last position of every forward call.

    A pre-hook on the whole model sees each call's ``input_ids``: a call without a filled KV
    cache starts the instructed copies from the call's (unpadded) tokens, a cached call feeds
    them the same new tokens. The copies run only up to layer l.
    """

    def __init__(self, lm: LoadedModel, layer: int, alpha: float, positive_instruction: str, negative_instruction: str) -> None:
        from lofit_bench.engine.scoring import cache_argument

        self.lm, self.layer, self.alpha = lm, layer, float(alpha)
        tokenizer = lm.tokenizer
        self.instructions = {
            "positive": tokenizer(positive_instruction, add_special_tokens=False)["input_ids"],
            "negative": tokenizer(negative_instruction, add_special_tokens=False)["input_ids"],
        }
        self.cache_argument = cache_argument(lm.model)
        self.streams: dict[str, _Stream] = {}
        self.contrast: torch.Tensor | None = None  # [B, d] for the current call
        self.reading = False
        self.read: torch.Tensor | None = None
        block = lm.layout.decoder_layers(lm.model)[layer]
        self.handles: list[RemovableHandle] = [
            lm.model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            block.register_forward_hook(self._at_layer),
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.streams.clear()
        self.contrast = None

    # -- hooks ---------------------------------------------------------------------------
    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if self.reading:
            return None
        self.contrast = None
        if self.alpha == 0:
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise UserError("RepE's contrast vector needs token ids (input_ids), not embeddings")
        mask = kwargs.get("attention_mask")
        cache = kwargs.get(self.cache_argument, kwargs.get("past_key_values"))
        with torch.no_grad():
            if cache is None or cache.get_seq_length() == 0:
                self._start(input_ids, torch.ones_like(input_ids) if mask is None else mask[:, -input_ids.shape[1] :])
            else:
                self._advance(input_ids)
        return None

    def _at_layer(self, module: nn.Module, args: tuple, output: object) -> object:
        hidden = output_hidden(output)
        if self.reading:
            self.read = hidden
            raise StopForward
        if self.contrast is None:
            return None
        hidden = hidden.clone()
        hidden[:, -1] += (self.alpha * self.contrast).to(hidden.dtype)
        return replace_output_hidden(output, hidden)

    # -- the instructed copies -------------------------------------------------------------------
    def _start(self, input_ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Fresh call: build both copies from each row's real tokens (BOS kept in front)."""
        if not bool(mask[:, -1].all()):
            raise UserError(
                "RepE's contrast vector controls the last position of each call, so batches must be "
                "left-padded (as generation is); score multiple choice with repe.vector=reading"
            )
        bos = self.lm.tokenizer.bos_token_id
        rows = [row[row_mask.bool()].tolist() for row, row_mask in zip(input_ids.cpu(), mask.cpu(), strict=True)]
        contrast = {}
        for kind, instruction in self.instructions.items():
            sequences = [
                row[:1] + instruction + row[1:] if bos is not None and row and row[0] == bos else instruction + row
                for row in rows
            ]
            width = max(len(sequence) for sequence in sequences)
            pad = self.lm.tokenizer.pad_token_id or 0
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=input_ids.device)
            stream_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=input_ids.device)
            stream = _Stream(cache=None, mask=stream_mask)
            contrast[kind] = self._run(stream, ids)
            self.streams[kind] = stream
        self.contrast = contrast["positive"] - contrast["negative"]

    def _advance(self, new_ids: torch.Tensor) -> None:
        """Cached call: append the same new tokens to both copies."""
        if not self.streams:
            raise RuntimeError("RepE contrast control: a cached call arrived before any prompt")
        started = next(iter(self.streams.values())).mask.shape[0]
        if new_ids.shape[0] != started:
            raise RuntimeError(
                f"RepE contrast control: a cached call of {new_ids.shape[0]} rows continues copies started for "
                f"{started}; its cache holds a prefix the contrast vector did not see as a prompt. Score with "
                "Scorer(..., capabilities=method.capabilities), which then encodes every prompt whole"
            )
        contrast = {}
        for kind, stream in self.streams.items():
            stream.mask = torch.cat([stream.mask, torch.ones_like(new_ids)], dim=1)
            contrast[kind] = self._run(stream, new_ids)
        self.contrast = contrast["positive"] - contrast["negative"]

    def _run(self, stream: _Stream, ids: torch.Tensor) -> torch.Tensor:
        """Run ``ids`` through layers <= l on ``stream``'s cache; its last-position state [B, d]."""
        from transformers.cache_utils import DynamicCache

        if stream.cache is None:
            stream.cache = DynamicCache(config=self.lm.model.config)
        positions = (stream.mask.cumsum(dim=1) - 1).clamp_min(0)[:, -ids.shape[1] :]
        self.reading, self.read = True, None
        try:
            self.lm.model(
                input_ids=ids, attention_mask=stream.mask, position_ids=positions, use_cache=True,
                **{self.cache_argument: stream.cache},
            )
        except StopForward:
            pass
        finally:
            self.reading = False
        assert self.read is not None
        return self.read[:, -1].float()


# -- the method ----------------------------------------------------------------------------------
@dataclass
class LayerScan:
    """The reading vector of every layer and how well it separates held-out pairs."""

    directions: torch.Tensor  # [L, d]
    accuracy: torch.Tensor  # [L]
    margin: torch.Tensor  # [L]
    train_pairs: int
    validation_pairs: int

    def ranked_layers(self) -> list[int]:
        return rank_layers(self.accuracy, self.margin)


def scan_layers(
    lm: LoadedModel,
    training: Sequence[TrainingExample],
    validation: Sequence[TrainingExample],
    seed: int,
    batch_size: int = 8,
    max_length: int | None = None,
    shared: SharedWork | None = None,
) -> LayerScan:
    """Reading vectors from the training pairs, scored on the validation pairs, every layer.
    With an enabled ``shared`` store the activations are read once per sweep (ITI reads the
    same pairs)."""
    pairs, held_out = contrast_pairs(training, seed), contrast_pairs(validation, seed + 1, answer_pool=training)
    if len(pairs) < 2 or not held_out:
        raise UserError("RepE needs at least two training pairs and one dev pair")
    positive, negative = pair_activations(lm, pairs, ("residual",), batch_size, max_length, shared)["residual"]
    directions = reading_vectors(positive, negative, seed)
    held_positive, held_negative = pair_activations(lm, held_out, ("residual",), batch_size, max_length, shared)["residual"]
    accuracy, margin = separation(held_positive, held_negative, directions)
    return LayerScan(directions, accuracy, margin, len(pairs), len(held_out))


class RepE(Method):
    """Add a reading vector, or a per-input contrast vector, to one layer's residual stream."""

    name = "repe"
    description = "RepE (Zou et al. 2023): reading vector (PCA) or contrast vector added to one layer's residual stream"
    config_class = RepEConfig
    relative_cost = 0.21  # untuned CLUTRR fit, SmolLM2-135M, next to LoRA's (schedule order only)

    @classmethod
    def check_before_runs(cls, config: MethodConfig, shape: Any) -> None:
        if config.layer is not None and config.layer >= shape.n_layers:
            raise UserError(f"repe.layer={config.layer}: the model has {shape.n_layers} layers (0 to {shape.n_layers - 1})")
        if config.layer_rank >= shape.n_layers:
            raise UserError(f"repe.layer_rank={config.layer_rank}: the model has only {shape.n_layers} layers to rank")

    @classmethod
    def search_space(cls, fixed: set[str]) -> dict[str, Any]:
        space = super().search_space(fixed)
        if "layer" in fixed:  # a fixed layer makes its rank in the scan moot
            space.pop("layer_rank", None)
        return space

    @classmethod
    def default_values(cls, task: Any) -> dict[str, Any]:
        return {"alpha": DEFAULT_ALPHA}

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.config: RepEConfig
        self.control: ReadingControl | ContrastControl | None = None
        self.state: dict[str, Any] = {}
        self.direction: torch.Tensor | None = None

    def prepare(self, lm: LoadedModel) -> None:
        self.lm = lm

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """The contrast vector's pre-hook on the whole model restarts its instructed copies
        from each uncached call's tokens; the reading vector acts inside one layer."""
        contrast = isinstance(self.control, ContrastControl)
        return Capabilities(watches_whole_forward=contrast, scores_continuations=not contrast)

    def resolve_vector(self, evaluation: str) -> str:
        if self.config.vector == "auto":
            return "contrast" if evaluation == "generation" else "reading"
        if self.config.vector == "contrast" and evaluation != "generation":
            raise UserError("repe.vector=contrast needs a generation task; use repe.vector=reading for multiple choice")
        return self.config.vector

    def fit(self, context: FitContext) -> dict[str, Any]:
        lm = self.require_prepared()
        self._detach()
        config = self.config
        vector = self.resolve_vector(context.task.evaluation)
        with context.phase("layer_scan"):
            scan = context.reuse(("repe layer scan",), lambda: scan_layers(
                lm, context.training_examples(), context.dev_examples(), context.seed,
                context.budget.eval_batch_size, context.budget.max_length, context.shared_work,
            ))
        if config.layer is not None:
            if config.layer >= lm.layout.n_layers:
                raise UserError(f"repe.layer={config.layer}: the model has layers 0 to {lm.layout.n_layers - 1}")
            layer = config.layer
        else:
            ranked = scan.ranked_layers()
            layer = ranked[min(config.layer_rank, len(ranked) - 1)]
        alpha = float(config.alpha if config.alpha is not None else DEFAULT_ALPHA)
        self.direction = scan.directions[layer].clone()
        self.state = {
            "vector": vector, "layer": layer, "alpha": alpha,
            "positive_instruction": config.positive_instruction, "negative_instruction": config.negative_instruction,
            "layer_scan": {
                "accuracy": [round(float(value), 4) for value in scan.accuracy],
                "standardised_margin": [round(float(value), 4) for value in scan.margin],
                "ranked_layers": scan.ranked_layers(),
            },
        }
        self._attach(vector, layer, alpha, self.direction)
        return {
            "vector": vector,
            "hyperparameters": {"layer": layer, "alpha": alpha, "vector": vector},
            "layer_scan": {"train_pairs": scan.train_pairs, "validation_pairs": scan.validation_pairs,
                           "validation": "dev", **self.state["layer_scan"]},
        }

    def trainable_parameters(self) -> int:
        return 0

    def stored_values(self) -> int:
        return self.direction.numel() if self.state.get("vector") == "reading" and self.direction is not None else 0

    def remove(self) -> None:
        self._detach()
        self.lm = None

    def _attach(self, vector: str, layer: int, alpha: float, direction: torch.Tensor) -> None:
        lm = self.require_prepared()
        self._detach()
        if vector == "reading":
            self.control = ReadingControl(lm, layer, alpha, direction)
        else:
            self.control = ContrastControl(
                lm, layer, alpha, self.config.positive_instruction, self.config.negative_instruction
            )

    def _detach(self) -> None:
        if self.control is not None:
            self.control.remove()
            self.control = None

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        super().save(directory)
        if not self.state or self.direction is None:
            return
        from safetensors.torch import save_file

        save_file({"direction": self.direction.contiguous()}, str(directory / VECTOR_FILE),
                  metadata={"layer": str(self.state["layer"]), "hidden_size": str(self.direction.numel())})
        (directory / STATE_FILE).write_text(json.dumps(self.state, indent=1))

    def load(self, directory: Path) -> None:
        super().load(directory)
        lm = self.require_prepared()
        from safetensors.torch import load_file

        state = json.loads((directory / STATE_FILE).read_text())
        direction = load_file(str(directory / VECTOR_FILE))["direction"]
        if direction.numel() != lm.layout.hidden_size or state["layer"] >= lm.layout.n_layers:
            raise UserError(
                f"{directory} holds a RepE vector for layer {state['layer']} of a model with hidden size "
                f"{direction.numel()}; this model has {lm.layout.n_layers} layers of size {lm.layout.hidden_size}"
            )
        self.state, self.direction = state, direction
        self._attach(state["vector"], state["layer"], state["alpha"], direction)


@hookimpl
def register_methods(register):
    register(RepE)

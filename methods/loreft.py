"""LoReFT: low-rank linear subspace representation fine-tuning on prompt positions.

Wu, Arora, Wang, Geiger, Jurafsky, Manning and Potts, "ReFT: Representation Finetuning for
Language Models", NeurIPS 2024, arXiv:2404.03592; reference code github.com/stanfordnlp/pyreft
(written again here, without pyreft or pyvene). The LoFiT paper's ReFT baseline (Yin et al.
2024, Table 3 and Table 8).

Site: h, the residual stream after decoder layer l (the layer's output), in every layer. At
an edited position the representation is replaced by

    h <- h + R^T (W h + b - R h)

with R (r x d) of orthonormal rows, W (r x d) and b (r) trained, the base model frozen:
the edit moves h inside the r-dimensional subspace spanned by R towards W h + b. R is kept
orthonormal by ``torch.nn.utils.parametrizations.orthogonal`` (pyreft's choice, defaults
included: Householder map with dynamic trivialisation); W, b are an ``nn.Linear`` (pyreft's
``learned_source``). Init as pyreft: R orthogonal, W and b as ``nn.Linear`` (uniform), drawn from a generator seeded by
the run's seed (also the random completion of R^T that the trivialisation keeps, which torch
draws from the global generator; here a forked, seeded one). An intervention holds
2 * r * d + r trained values.

Positions ("f{p}+l{s}", pyreft's ``get_intervention_locations``): the first p and the last s
tokens of the *prompt*, where for a prompt of n tokens p <- min(p, n // 2) and
s <- min(s, n // 2) (pyreft's code caps both at floor(n / 2); a ceil for s, as some descriptions
have it, does not match that code and is not used). Untied (the default) keeps a separate intervention for the prefix
and the suffix group of each layer; tied shares one. Generated tokens and answer tokens are
never edited: they change only through attention to the edited prompt states. Per layer:
2 * (2 * r * d + r) untied, (2 * r * d + r) tied or with p or s = 0. Llama-2-7B, r 4, f1+l1,
32 layers, d 4096: 64 x 32,772 = 2,097,408 (Table 3's 2.10 M).

Where the prompt is comes from the harness (:mod:`lofit_bench.prompt_positions`): in training
the prompt ends where the loss begins (SFT labels, DPO ``completion_mask``); in generation it
is what ``generate()`` is given; in log-likelihood scoring it is the context, the continuation
not edited (the Scorer then scores each request in one pass over context + continuation,
without its context-cache shortcut). A forward call that starts a sequence without a
declared prompt raises, rather than silently running the base model; a call that extends a KV
cache (a generated token) is never edited. DPO's reference is the base model (no edit), as
in pyreft's DPO example.

Defaults: the paper's Table 8 for Llama-2-7B (all layers): TruthfulQA r 4, f1+l1, lr 1e-3;
MQuAKE and CLUTRR r 8, f3+l3, lr 9e-4. Other tasks need loreft.rank / first_positions /
last_positions / learning_rate.

Deviations from pyreft and the paper, recorded with the run:
- batch size and epochs come from the budget (Table 8 used batch 16 for Llama-2-7B);
- pyreft prepends one pad token to every sequence (an attention-masked "sink" that absorbs
  padded intervention slots), which shifts the real tokens' position ids by one; not done here;
- the parameters are fp32 whatever the model's dtype, the edit computed in fp32 (autocast off)
  and cast back.
No weight decay, as pyreft's LoReFT script (``--weight_decay`` defaults to 0.00), and not configurable:
decoupled weight decay shrinks the +-1 diagonal of the Householder parametrisation, which
torch reads with ``int()``, so after one step of any decay R would be exactly zero.
The orthogonal parametrisation keeps a fixed d x d buffer per intervention (as in pyreft):
memory, not trained values. Saved state is pyreft's: the effective R (d x r), W and b.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal
from torch.utils.hooks import RemovableHandle

from lofit_bench import hookimpl
from lofit_bench.engine.activations import output_hidden, replace_output_hidden
from lofit_bench.engine.architectures import ModelLayout
from lofit_bench.engine.models import LoadedModel
from lofit_bench.engine.training import OptimizerSettings, train
from lofit_bench.errors import UserError
from lofit_bench.method import (
    Capabilities,
    FitContext,
    Method,
    MethodConfig,
    resolve_paper_defaults,
)
from lofit_bench.prompt_positions import PromptListener, PromptSpans
from lofit_bench.search_space import LogUniform

STATE_FILE = "loreft_interventions.safetensors"
SUBMODULE = "loreft"  # where the interventions hang on the model (model.loreft)
WEIGHT_DECAY = 0.0  # pyreft's; see the module docstring for why it must stay 0

#: Paper Table 8, Llama-2-7B, all layers (the paper's batch size 16 is the budget's business).
PAPER_TABLE_8 = {
    "truthfulqa": {"rank": 4, "first_positions": 1, "last_positions": 1, "learning_rate": 1e-3},
    "mquake": {"rank": 8, "first_positions": 3, "last_positions": 3, "learning_rate": 9e-4},
    "clutrr": {"rank": 8, "first_positions": 3, "last_positions": 3, "learning_rate": 9e-4},
}
#: Rank and positions for a task Table 8 has no row for (its generation tasks' setting).
UNLISTED_TASK_SETTINGS = {"rank": 8, "first_positions": 3, "last_positions": 3}
PAPER_BATCH_SIZE = {"truthfulqa": 16, "mquake": 16, "clutrr": 16}


@dataclass
class LoReFTConfig(MethodConfig):
    rank: int | None = field(
        default=None, metadata={"help": "r, rank of the edited subspace; None: paper Table 8", "minimum": 1}
    )
    first_positions: int | None = field(
        default=None, metadata={"help": "p, first prompt tokens edited (the f in f3+l3); None: paper Table 8", "minimum": 0}
    )
    last_positions: int | None = field(
        default=None, metadata={"help": "s, last prompt tokens edited (the l in f3+l3); None: paper Table 8", "minimum": 0}
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "AdamW learning rate; None: paper Table 8 (Llama-2-7B) for the task", "exclusive_minimum": 0,
                  "tune": LogUniform(1e-4, 1e-2)},
    )
    layers: list[int] | None = field(
        default=None,
        metadata={"help": "decoder layers edited (0-based JSON list); None: every layer (paper)", "min_items": 1, "minimum": 0},
    )
    tied: bool = field(
        default=False, metadata={"help": "share one intervention between prefix and suffix positions (pyreft "
                                 "share_weights); default untied, as the paper"}
    )
    dropout: float = field(
        default=0.0,
        metadata={"help": "dropout on the edited representation (pyreft default 0)", "minimum": 0, "exclusive_maximum": 1},
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # types and bounds from the fields
        if self.first_positions == 0 and self.last_positions == 0:
            raise UserError("loreft.first_positions and loreft.last_positions cannot both be 0: nothing would be edited")

# -- the intervention ----------------------------------------------------------------------------
class LowRankRotation(nn.Module):
    """R^T as a d x r matrix with orthonormal columns (pyreft's ``LowRankRotateLayer``)."""

    def __init__(self, hidden_size: int, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        weight = torch.empty(hidden_size, rank, dtype=torch.float32)
        nn.init.orthogonal_(weight, generator=generator)
        self.weight = nn.Parameter(weight)


class LoReFTIntervention(nn.Module):
    """h <- h + R^T (W h + b - R h) on the rows of ``hidden`` it is given ([N, d])."""

    def __init__(self, hidden_size: int, rank: int, dropout: float, generator: torch.Generator) -> None:
        super().__init__()
        if not 1 <= rank <= hidden_size:
            raise UserError(f"loreft.rank={rank} must be between 1 and the hidden size {hidden_size}")
        rotation = LowRankRotation(hidden_size, rank, generator)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            self.rotation = orthogonal(rotation)  # completes R^T to a d x d base with global-RNG columns
        self.learned_source = nn.Linear(hidden_size, rank, dtype=torch.float32)  # W and b
        bound = 1 / math.sqrt(hidden_size)  # nn.Linear's own init, from our generator
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.learned_source.weight, a=math.sqrt(5), generator=generator)
            nn.init.uniform_(self.learned_source.bias, -bound, bound, generator=generator)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # fp32 also under the Trainer's bf16 autocast, so training and evaluation compute alike
        with torch.autocast(hidden.device.type, enabled=False):
            states = hidden.float()
            basis = self.rotation.weight  # R^T, d x r
            edited = states + (self.learned_source(states) - states @ basis) @ basis.T
            return self.dropout(edited).to(hidden.dtype)

    @torch.no_grad()
    def effective_state(self) -> dict[str, torch.Tensor]:
        """What pyreft saves: the effective R^T, W and b (not the parametrisation's internals)."""
        return {"rotation": self.rotation.weight.detach().clone(), "weight": self.learned_source.weight.detach().clone(),
                "bias": self.learned_source.bias.detach().clone()}

    @torch.no_grad()
    def load_effective_state(self, state: dict[str, torch.Tensor]) -> None:
        """pyreft's reload: a fresh parametrisation maps ``original`` to the first r columns of
        the identity, so writing R^T into the trivialisation's base reproduces it exactly."""
        self.learned_source.weight.copy_(state["weight"])
        self.learned_source.bias.copy_(state["bias"])
        rotation = state["rotation"].to(self.rotation.weight.device)
        self.rotation.parametrizations.weight[0].base[:, : rotation.shape[1]] = rotation
        if not torch.equal(self.rotation.weight, rotation):
            raise RuntimeError("the reloaded LoReFT rotation does not reproduce the saved one")


def edited_positions(length: int, first: int, last: int) -> tuple[range, range]:
    """Prompt positions (0-based, within the prompt) of the prefix and suffix groups, pyreft's rule."""
    first, last = min(first, length // 2), min(last, length // 2)
    return range(first), range(length - last, length)


class LoReFTEdits(PromptListener):
    """Every layer's interventions and the hooks that apply them at the declared prompt positions."""

    def __init__(
        self, layout: ModelLayout, layers: list[int], rank: int, first: int, last: int, tied: bool, dropout: float,
        seed: int,
    ) -> None:
        super().__init__()
        bad = [layer for layer in layers if not 0 <= layer < layout.n_layers]
        if bad:
            raise UserError(f"loreft.layers {bad} are outside the model's {layout.n_layers} layers (0..{layout.n_layers - 1})")
        self.layers = sorted(set(layers))
        self.hidden_size, self.rank, self.first, self.last = layout.hidden_size, rank, first, last
        self.tied = tied
        self.groups = ["prefix", "suffix"] if (first and last and not tied) else ["all"]
        generator = torch.Generator().manual_seed(seed)
        self.sites = nn.ModuleDict({
            str(layer): nn.ModuleDict(
                {group: LoReFTIntervention(layout.hidden_size, rank, dropout, generator) for group in self.groups}
            )
            for layer in self.layers
        })
        self.spans: PromptSpans | None = None
        self.masks: dict[str, torch.Tensor] | None = None  # group -> [B, T] positions edited in this call
        self.handles: list[RemovableHandle] = []

    @property
    def interventions(self) -> int:
        return len(self.layers) * len(self.groups)

    def trainable_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def set_prompt(self, spans: PromptSpans | None) -> None:
        self.spans = spans

    # -- attaching -----------------------------------------------------------------------------
    def attach(self, model: nn.Module, layout: ModelLayout) -> None:
        if hasattr(model, SUBMODULE):
            raise RuntimeError(f"the model already carries {SUBMODULE!r}: another LoReFT is attached")
        from lofit_bench.engine.models import module_device

        blocks = layout.decoder_layers(model)
        # Each layer's interventions on that layer's device: a device-mapped model's layers differ.
        for layer in self.layers:
            self.sites[str(layer)].to(module_device(blocks[layer]))
        model.add_module(SUBMODULE, self)
        from lofit_bench.engine.scoring import cache_argument

        self.cache_argument = cache_argument(model)
        self.handles = [
            model.register_forward_pre_hook(self._start_call, with_kwargs=True),
            model.register_forward_hook(self._end_call),
            *(blocks[layer].register_forward_hook(partial(self._edit, str(layer))) for layer in self.layers),
        ]

    def detach(self, model: nn.Module) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        if getattr(model, SUBMODULE, None) is self:
            delattr(model, SUBMODULE)
        self.masks = None

    # -- hooks ---------------------------------------------------------------------------------
    def _start_call(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.masks = None
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs["inputs_embeds"][..., 0]
        cache = kwargs.get(self.cache_argument, kwargs.get("past_key_values"))
        if cache is not None and cache.get_seq_length() > 0:
            return None  # extends a KV cache: generated tokens are never edited
        if self.spans is None:
            raise RuntimeError(
                "LoReFT edits prompt positions, and this forward call did not say where its prompt is. Score "
                "through lofit_bench.engine.scoring.Scorer, or wrap the call in "
                "lofit_bench.prompt_positions.declare_prompt(model, PromptSpans...)"
            )
        if self.spans.reference:
            return None  # DPO's reference: the base model
        batch, width = tokens.shape[:2]
        if self.spans.rows != batch:
            raise RuntimeError(f"LoReFT was told about {self.spans.rows} prompts for a batch of {batch} rows")
        masks = {group: torch.zeros(batch, width, dtype=torch.bool) for group in ("prefix", "suffix")}
        for row, (start, length) in enumerate(zip(self.spans.starts, self.spans.lengths, strict=True)):
            if start + length > width:
                raise RuntimeError(f"prompt span {start}+{length} of row {row} exceeds the call's {width} tokens")
            prefix, suffix = edited_positions(length, self.first, self.last)
            masks["prefix"][row, [start + position for position in prefix]] = True
            masks["suffix"][row, [start + position for position in suffix]] = True
        if self.groups == ["all"]:
            masks = {"all": masks["prefix"] | masks["suffix"]}
        self.masks = {group: mask.to(tokens.device) for group, mask in masks.items()}
        return None

    def _end_call(self, module: nn.Module, args: tuple, output: object) -> None:
        self.masks = None

    def _edit(self, layer: str, module: nn.Module, args: tuple, output: object) -> object:
        if self.masks is None:
            return None
        hidden = output_hidden(output)
        edited = hidden.clone()
        for group, mask in self.masks.items():
            mask = mask.to(hidden.device)  # a no-op unless the model is device-mapped
            edited[mask] = self.sites[layer][group](hidden[mask])
        return replace_output_hidden(output, edited)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: Path, metadata: dict[str, str]) -> None:
        from safetensors.torch import save_file

        tensors = {
            f"{layer}.{group}.{name}": tensor.cpu().contiguous()
            for layer, groups in self.sites.items()
            for group, intervention in groups.items()
            for name, tensor in intervention.effective_state().items()
        }
        shape = {"hidden_size": self.hidden_size, "layers": self.layers, "rank": self.rank, "first": self.first,
                 "last": self.last, "tied": self.tied}
        save_file(tensors, str(path), metadata={"shape": json.dumps(shape), **metadata})

    def load(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        for layer, groups in self.sites.items():
            for group, intervention in groups.items():
                prefix = f"{layer}.{group}."
                intervention.load_effective_state(
                    {name.removeprefix(prefix): tensor for name, tensor in tensors.items() if name.startswith(prefix)}
                )


def saved_shape(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads((handle.metadata() or {}).get("shape", "{}"))


# -- the method -------------------------------------------------------------------------------------
class LoReFT(Method):
    """Low-rank representation edits of the residual stream at the first and last prompt tokens."""

    name = "loreft"
    description = "LoReFT (Wu et al. 2024): low-rank residual-stream edits at the first/last prompt tokens"
    config_class = LoReFTConfig
    relative_cost = 1.24  # untuned CLUTRR fit, SmolLM2-135M, next to LoRA's (schedule order only)
    # The edits are a PromptListener: told each call's prompt, and then given no cached prefix.
    capabilities = Capabilities(needs_prompt_positions=True)

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.config: LoReFTConfig
        self.edits: LoReFTEdits | None = None

    def prepare(self, lm: LoadedModel) -> None:
        if hasattr(lm.model, SUBMODULE):
            raise RuntimeError(f"the model already carries {SUBMODULE!r}: another LoReFT is attached")
        self.lm = lm  # the interventions are built in fit, once the task's Table 8 settings are known

    #: A task Table 8 has no row for: Table 8's rate for the paper's task of the same objective
    #: (MQuAKE for SFT, TruthfulQA for DPO); rank and positions: UNLISTED_TASK_SETTINGS.
    generic_values = {
        "sft": {"learning_rate": PAPER_TABLE_8["mquake"]["learning_rate"]},
        "dpo": {"learning_rate": PAPER_TABLE_8["truthfulqa"]["learning_rate"]},
    }
    generic_source = "paper Table 8's rate for its task of the same objective (MQuAKE: SFT, TruthfulQA: DPO)"

    @classmethod
    def default_values(cls, task: Any) -> dict[str, Any]:
        return {"learning_rate": PAPER_TABLE_8[task.name]["learning_rate"]} if task.name in PAPER_TABLE_8 else {}

    def resolve(self, task: str) -> tuple[dict[str, Any], dict[str, str]]:
        """rank, positions and learning rate: the config's where set, else Table 8 for ``task``;
        a task without a Table 8 row takes rank 8 and f3+l3 (Table 8's generation setting),
        its learning rate from the config (the tuner sets it)."""
        configured = {name: getattr(self.config, name) for name in ("rank", "first_positions", "last_positions",
                                                                     "learning_rate")}
        if task in PAPER_TABLE_8:
            return resolve_paper_defaults(self.name, task, configured, PAPER_TABLE_8, "paper Table 8 (Llama-2-7B)")
        values, sources = resolve_paper_defaults(
            self.name, task, {"learning_rate": configured.pop("learning_rate")}, PAPER_TABLE_8, "paper Table 8 (Llama-2-7B)"
        )
        for name, value in configured.items():
            if value is None:
                values[name], sources[name] = UNLISTED_TASK_SETTINGS[name], "Table 8's MQuAKE/CLUTRR setting (no row for this task)"
            else:
                values[name], sources[name] = value, "config"
        return values, sources

    def fit(self, context: FitContext) -> dict[str, Any]:
        lm = self.require_prepared()
        values, sources = self.resolve(context.task.name)
        if values["first_positions"] == 0 and values["last_positions"] == 0:
            raise UserError("loreft.first_positions and loreft.last_positions cannot both be 0: nothing would be edited")
        self._attach(LoReFTEdits(
            lm.layout, self.config.layers if self.config.layers is not None else list(range(lm.layout.n_layers)),
            values["rank"], values["first_positions"], values["last_positions"], self.config.tied,
            self.config.dropout, seed=context.seed,
        ))
        assert self.edits is not None
        with context.phase("training"):
            result = train(
                lm.model, lm.tokenizer, context.training_examples(), context.task.objective, context.budget,
                OptimizerSettings(values["learning_rate"], weight_decay=WEIGHT_DECAY),
                context.seed, context.work_dir / "loreft", progress=context.progress, on_epoch_end=context.on_epoch_end,
                capabilities=self.capabilities,
            )
        paper_batch = PAPER_BATCH_SIZE.get(context.task.name)
        return {
            "training": result.to_dict(),
            "hyperparameters": {
                **values, "positions": f"f{values['first_positions']}+l{values['last_positions']}",
                "layers": self.edits.layers, "tied": self.config.tied, "dropout": self.config.dropout,
                "weight_decay": WEIGHT_DECAY, "sources": sources,
                **({"paper_batch_size": paper_batch} if paper_batch else {}),
            },
            "interventions": self.edits.interventions,
            "orthogonal_buffer_values": self.edits.interventions * lm.layout.hidden_size ** 2,
            **({"dpo_reference": "the base model (no edit), as pyreft's DPO example"}
               if context.task.objective == "dpo" else {}),
        }

    def trainable_parameters(self) -> int:
        return self.edits.trainable_parameters() if self.edits is not None else 0

    def remove(self) -> None:
        self._detach()
        self.lm = None

    def save(self, directory: Path) -> None:
        super().save(directory)
        if self.edits is not None:
            self.edits.save(directory / STATE_FILE, metadata={"method": self.name})

    def load(self, directory: Path) -> None:
        super().load(directory)
        lm = self.require_prepared()
        shape = saved_shape(directory / STATE_FILE)
        if shape.get("hidden_size") != lm.layout.hidden_size or max(shape.get("layers", [0])) >= lm.layout.n_layers:
            raise UserError(
                f"{directory / STATE_FILE} was trained on a model with hidden size {shape.get('hidden_size')} and layers "
                f"{shape.get('layers')}; this model has hidden size {lm.layout.hidden_size} and {lm.layout.n_layers} layers"
            )
        edits = LoReFTEdits(lm.layout, shape["layers"], shape["rank"], shape["first"], shape["last"], shape["tied"],
                            self.config.dropout, seed=0)
        edits.load(directory / STATE_FILE)
        edits.requires_grad_(False)
        self._attach(edits)

    def _attach(self, edits: LoReFTEdits) -> None:
        lm = self.require_prepared()
        self._detach()
        edits.attach(lm.model, lm.layout)
        self.edits = edits

    def _detach(self) -> None:
        if self.edits is not None and self.lm is not None:
            self.edits.detach(self.lm.model)
        self.edits = None


@hookimpl
def register_methods(register):
    register(LoReFT)

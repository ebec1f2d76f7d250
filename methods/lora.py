"""LoRA: low-rank updates of the attention query and value projections, through peft.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, arXiv:2106.09685.
The LoFiT paper's baseline (Yin et al. 2024, arXiv:2406.01563, Sec. 4.3 and Table 7):
Hugging Face peft on ``q_proj`` and ``v_proj`` of
every layer, rank 8, lora_alpha 8, dropout 0.1, the same SFT / DPO objectives and budget as
LoFiT. Each adapted linear map W (d_out x d_in) stays frozen and gains a low-rank update:

    h = W x + (alpha / r) * B A dropout(x),   A: r x d_in (Kaiming-uniform init), B: d_out x r (init 0)

Trained values: r * (d_in + d_out) per adapted matrix. Llama-2-7B: 32 layers x (q 4096->4096 +
v 4096->4096) x 8 x 8192 = 4,194,304 (Table 3's 4.19 M).

Everything LoRA-specific is peft's (``get_peft_model`` wraps the model at ``prepare``; the
adapter is saved with ``save_pretrained`` and loaded with ``PeftModel.from_pretrained``;
``remove`` calls ``unload``, which puts the original linear modules back, unmerged, so the
base model is bit-identical). Training is the harness's trl loop, given the wrapped model.

DPO (TruthfulQA): the reference is the model without the adapter. The already-wrapped model
goes to trl without ``peft_config``, so trl keeps a frozen copy of the untrained adapter,
named ``"ref"``, and computes the (precomputed, once) reference log-probs with it. B = 0 at
initialisation, so that copy adds exactly zero: the reference is bit-for-bit the
adapter-disabled base model (the test suite checks it). The copy is deleted after training.
trl's DPO also turns dropout off (``disable_dropout=True``), so ``dropout`` acts in SFT only.

Learning rates default to the paper's Table 7 for Llama-2-7B (TruthfulQA 1e-4, MQuAKE 1e-3,
CLUTRR 1e-3); other tasks need ``lora.learning_rate``. Weight decay 0.01, as for every
trained method here (the LoFiT paper's AdamW setting).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lofit_bench import hookimpl
from lofit_bench.engine.models import LoadedModel
from lofit_bench.engine.training import OptimizerSettings, train
from lofit_bench.errors import UserError
from lofit_bench.method import FitContext, Method, MethodConfig, resolve_paper_defaults
from lofit_bench.search_space import LogUniform

ADAPTER_FOLDER = "adapter"  # peft's own format: adapter_config.json + adapter_model.safetensors
ADAPTER_NAME = "default"

#: Paper Table 7, Llama-2-7B (learning rates swept on dev by the authors).
PAPER_TABLE_7 = {
    "truthfulqa": {"learning_rate": 1e-4},
    "mquake": {"learning_rate": 1e-3},
    "clutrr": {"learning_rate": 1e-3},
}


@dataclass
class LoRAConfig(MethodConfig):
    rank: int = field(default=8, metadata={"help": "r, the rank of each update B A (paper: 8)", "minimum": 1})
    alpha: float = field(
        default=8, metadata={"help": "lora_alpha; the update is scaled by alpha / r (paper: 8)", "exclusive_minimum": 0}
    )
    dropout: float = field(
        default=0.1,
        metadata={"help": "dropout on the adapter's input (paper: 0.1; trl's DPO turns it off)", "minimum": 0,
                  "exclusive_maximum": 1},
    )
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "module names that get an adapter, in every layer (paper: q_proj and v_proj)",
                  "min_items": 1, "min_length": 1},
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "AdamW learning rate; None: paper Table 7 (Llama-2-7B) for the task", "exclusive_minimum": 0,
                  "tune": LogUniform(1e-5, 5e-2)},
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay", "minimum": 0})



class LoRA(Method):
    """peft LoRA adapters on the attention query and value projections."""

    name = "lora"
    description = "LoRA (Hu et al. 2022) via peft: rank-8 updates of q_proj and v_proj in every layer"
    config_class = LoRAConfig

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.config: LoRAConfig
        self.peft_model: nn.Module | None = None

    # -- life cycle ------------------------------------------------------------------------
    def prepare(self, lm: LoadedModel) -> None:
        from peft import get_peft_model

        if getattr(lm.model, "peft_config", None):
            raise RuntimeError("the model is already a peft model; remove the other adapter first")
        self.lm = lm
        self._attributes_before = set(vars(lm.model))
        training = lm.model.training
        with _quiet_peft():
            self.peft_model = get_peft_model(lm.model, self.peft_config())
        self.peft_model.train(training)  # the new dropout modules would otherwise start in train mode

    def peft_config(self):
        from peft import LoraConfig

        try:
            return LoraConfig(
                r=self.config.rank,
                lora_alpha=self.config.alpha,
                lora_dropout=self.config.dropout,
                target_modules=list(self.config.target_modules),
                bias="none",
                task_type="CAUSAL_LM",
            )
        except ValueError as error:
            raise UserError(f"peft rejected the LoRA settings: {error}") from None

    #: A task Table 7 has no row for: Table 7's rate for the paper's task of the same objective
    #: (MQuAKE for SFT, TruthfulQA for DPO).
    generic_values = {"sft": dict(PAPER_TABLE_7["mquake"]), "dpo": dict(PAPER_TABLE_7["truthfulqa"])}
    generic_source = "paper Table 7's value for its task of the same objective (MQuAKE: SFT, TruthfulQA: DPO)"

    @classmethod
    def default_values(cls, task: Any) -> dict[str, Any]:
        return dict(PAPER_TABLE_7.get(task.name, {}))

    def fit(self, context: FitContext) -> dict[str, Any]:
        lm = self.require_prepared()
        model = self._require_wrapped()
        values, sources = resolve_paper_defaults(
            self.name, context.task.name, {"learning_rate": self.config.learning_rate}, PAPER_TABLE_7,
            "paper Table 7 (Llama-2-7B)",
        )
        with context.phase("training"):
            result = train(
                model, lm.tokenizer, context.training_examples(), context.task.objective, context.budget,
                OptimizerSettings(values["learning_rate"], weight_decay=self.config.weight_decay),
                context.seed, context.work_dir / "lora", progress=context.progress, on_epoch_end=context.on_epoch_end,
                capabilities=self.capabilities,
            )
        return {
            "training": result.to_dict(),
            "hyperparameters": {
                **values, "weight_decay": self.config.weight_decay, "rank": self.config.rank,
                "alpha": self.config.alpha, "dropout": self.config.dropout,
                "target_modules": list(self.config.target_modules), "sources": sources,
            },
            "adapted_matrices": self.adapted_matrices(),
            **({"dpo_reference": "the adapter-disabled base model (a frozen copy of the B = 0 adapter, "
                                 "deleted after training); dropout off (trl's disable_dropout)"}
               if context.task.objective == "dpo" else {}),
        }

    def evaluation_model(self) -> nn.Module:
        return self._require_wrapped()

    @contextmanager
    def merged(self) -> Iterator[bool]:
        """The adapters added into the base weights (peft's merge_adapter), then taken out again.

        Unmerging subtracts what merging added, which is exact only up to rounding: the base
        weights are copied back bit for bit afterwards, so the run's model check (and the test
        evaluation of a later fold) sees the weights as loaded."""
        from peft.tuners.lora import LoraLayer

        model = self._require_wrapped()
        bases = [module.get_base_layer() for module in model.modules() if isinstance(module, LoraLayer)]
        saved = [(base.weight.detach().clone(), None if base.bias is None else base.bias.detach().clone()) for base in bases]
        model.merge_adapter()
        try:
            yield True
        finally:
            model.unmerge_adapter()
            with torch.no_grad():
                for base, (weight, bias) in zip(bases, saved, strict=True):
                    base.weight.copy_(weight)
                    if bias is not None:
                        base.bias.copy_(bias)

    def trainable_parameters(self) -> int:
        """Values of the adapter's tensors: exactly what ``save_pretrained`` writes."""
        if self.peft_model is None:
            return 0
        from peft import get_peft_model_state_dict

        return sum(tensor.numel() for tensor in get_peft_model_state_dict(self.peft_model, adapter_name=ADAPTER_NAME).values())

    def adapted_matrices(self) -> list[dict[str, Any]]:
        """Each adapted linear map with its shape and its r * (d_in + d_out) trained values."""
        from peft.tuners.lora import LoraLayer

        rows = []
        for name, module in self._require_wrapped().named_modules():
            if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
                base = module.get_base_layer()
                rank = module.r[ADAPTER_NAME]
                rows.append({"module": name.removeprefix("base_model.model."), "d_in": base.in_features,
                             "d_out": base.out_features, "values": rank * (base.in_features + base.out_features)})
        return rows

    def remove(self) -> None:
        if self.peft_model is not None:
            lm = self.require_prepared()
            base = self.peft_model.unload()  # original modules back, unmerged
            if base is not lm.model:
                raise RuntimeError("peft's unload returned another model than the one wrapped")
            # peft 0.18 (the lowest declared) leaves ``peft_config`` on the model after unload.
            for name in set(vars(base)) - self._attributes_before:
                delattr(base, name)
            self.peft_model = None
        self.lm = None

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        super().save(directory)
        if self.peft_model is not None:
            self.peft_model.save_pretrained(str(directory / ADAPTER_FOLDER))

    def load(self, directory: Path) -> None:
        from peft import PeftModel

        super().load(directory)
        lm = self.require_prepared()
        if self.peft_model is not None:
            self.peft_model.unload()
        with _quiet_peft():
            self.peft_model = PeftModel.from_pretrained(lm.model, str(directory / ADAPTER_FOLDER))
        self.peft_model.eval()

    # -- helpers ---------------------------------------------------------------------------
    def _require_wrapped(self) -> nn.Module:
        if self.peft_model is None:
            raise RuntimeError("lora is used before prepare()")
        return self.peft_model


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft asks the model ``is_gradient_checkpointing``, which transformers 5 deprecates (noise)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


@hookimpl
def register_methods(register):
    register(LoRA)

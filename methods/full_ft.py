"""Full fine-tuning: every weight of the model trained with the task's objective.

Not a baseline of the LoFiT paper (no table of Yin et al. 2024 reports it), so its settings
are ours, chosen to be the usual ones: every parameter trained
with AdamW (eps 1e-8, weight decay 0.01, linear decay, gradient clipping 1.0, the harness's
shared settings), the same SFT / DPO objectives, epochs, batch size and sequence length as
every other method. Trained values: all of the model's parameters (tied embeddings once).

Learning rate: 1e-5 for SFT (the common full fine-tuning rate for 0.1B-7B decoder models
with AdamW) and 1e-6 for DPO (trl's DPO default; preference training of all weights is run
well below the SFT rate). Tuned by the harness (:mod:`lofit_bench.sweep.tuning`): log-uniform in
[1e-6, 3e-4], that default first; every trial trains from the original weights.

Precision: trained in fp32. On a bf16 / fp16 model the parameters are cast to fp32 for
training (an AdamW update of ~1e-5 is below bf16's resolution for most weights and would be
lost) and back to the model's dtype afterwards, so the evaluation runs in the same dtype as
every other method's. Optimizer state: two fp32 values per parameter, plus the gradients.

Restoring the model: ``remove()`` must leave the model as it was, so ``prepare`` keeps a copy
of every weight in CPU memory (tied weights once). It is allocated inside the runner's
measured fit phase: on CPU it counts in the peak RSS, on CUDA it is host memory and does not
count in the GPU peak.
The record states its size. Saved state: a safetensors file of the whole state dict
(safetensors' ``save_model``, which stores tied weights once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lofit_bench import hookimpl
from lofit_bench.engine.models import LoadedModel
from lofit_bench.engine.training import OptimizerSettings, TrainResult, train
from lofit_bench.errors import UserError
from lofit_bench.method import FitContext, Method, MethodConfig
from lofit_bench.search_space import LogUniform

STATE_FILE = "model.safetensors"
#: Our defaults (the paper has no full fine-tuning): see the module docstring.
DEFAULT_LEARNING_RATES = {"sft": 1e-5, "dpo": 1e-6}
MIB = 1024 * 1024


@dataclass
class FullFTConfig(MethodConfig):
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "AdamW learning rate; None: 1e-5 for SFT tasks, 1e-6 for DPO (our choice)",
                  "exclusive_minimum": 0, "tune": LogUniform(1e-6, 3e-4)},
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay", "minimum": 0})



class WeightSnapshot:
    """A CPU copy of a model's parameters and buffers (shared tensors once) and their flags."""

    def __init__(self, model: nn.Module) -> None:
        copies: dict[int, torch.Tensor] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        for name, tensor in model.state_dict(keep_vars=False).items():
            key = tensor.untyped_storage().data_ptr() + tensor.storage_offset() * tensor.element_size()
            if key not in copies:
                copies[key] = tensor.detach().to("cpu", copy=True)
            self.tensors[name] = copies[key]
        self.nbytes = sum(tensor.numel() * tensor.element_size() for tensor in copies.values())
        self.requires_grad = {name: parameter.requires_grad for name, parameter in model.named_parameters()}

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put every value (and its dtype and requires_grad flag) back, in place."""
        parameters = dict(model.named_parameters())
        for name, parameter in parameters.items():
            saved = self.tensors[name]
            if parameter.dtype != saved.dtype:
                parameter.data = parameter.data.to(saved.dtype)
        model.load_state_dict(self.tensors, strict=True)
        for name, parameter in parameters.items():
            parameter.requires_grad_(self.requires_grad[name])


class FullFineTuning(Method):
    """Every weight trained, AdamW, fp32 master weights."""

    name = "full-ft"
    description = "Full fine-tuning: every weight trained with AdamW (fp32), same objectives and budget"
    config_class = FullFTConfig
    relative_cost = 1.25  # untuned CLUTRR fit, SmolLM2-135M, next to LoRA's (schedule order only)

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.config: FullFTConfig
        self.original: WeightSnapshot | None = None
        self.trained = False

    # -- life cycle ------------------------------------------------------------------------
    def prepare(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.original = WeightSnapshot(lm.model)  # for remove(); inside the measured fit phase

    @classmethod
    def default_values(cls, task: Any) -> dict[str, Any]:
        return {"learning_rate": DEFAULT_LEARNING_RATES[task.objective]} if task.objective in DEFAULT_LEARNING_RATES else {}

    def fit(self, context: FitContext) -> dict[str, Any]:
        self.require_prepared()
        objective = context.task.objective
        if self.config.learning_rate is not None:
            learning_rate, source = self.config.learning_rate, "config"
        else:
            learning_rate, source = DEFAULT_LEARNING_RATES[objective], f"our default for {objective} (no paper value)"
        result = self._train(context, learning_rate, "full_ft")
        self.trained = True
        assert self.original is not None
        return {
            "training": result.to_dict(),
            "hyperparameters": {"learning_rate": learning_rate, "weight_decay": self.config.weight_decay,
                                "sources": {"learning_rate": source}, "master_dtype": "fp32"},
            "restore_copy_mib": round(self.original.nbytes / MIB, 1),
        }

    def trainable_parameters(self) -> int:
        return self.require_prepared().parameter_count if self.trained else 0

    def remove(self) -> None:
        if self.original is not None and self.lm is not None:
            self.original.restore(self.lm.model)
        self.original = None
        self.trained = False
        self.lm = None

    # -- training ------------------------------------------------------------------------------
    def _train(self, context: FitContext, learning_rate: float, tag: str) -> TrainResult:
        """One run from the original weights: all parameters trainable, in fp32, cast back after."""
        lm = self.require_prepared()
        assert self.original is not None
        self.original.restore(lm.model)
        parameters = list(lm.model.parameters())
        for parameter in parameters:
            if parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
            parameter.requires_grad_(True)
        try:
            with context.phase("training"):
                return train(
                    lm.model, lm.tokenizer, context.training_examples(), context.task.objective, context.budget,
                    OptimizerSettings(learning_rate, weight_decay=self.config.weight_decay), context.seed,
                    context.work_dir / tag, progress=context.progress, on_epoch_end=context.on_epoch_end,
                    capabilities=self.capabilities,
                )
        finally:
            with torch.no_grad():
                for name, parameter in lm.model.named_parameters():
                    original = self.original.tensors[name]
                    if parameter.dtype != original.dtype:
                        parameter.data = parameter.data.to(original.dtype)
                    parameter.requires_grad_(self.original.requires_grad[name])
                    parameter.grad = None

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        super().save(directory)
        if self.trained:
            from safetensors.torch import save_model

            save_model(self.require_prepared().model, str(directory / STATE_FILE), metadata={"method": self.name})

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_model

        super().load(directory)
        lm = self.require_prepared()
        missing, unexpected = load_model(lm.model, str(directory / STATE_FILE), strict=False)
        if missing or unexpected:
            raise UserError(
                f"{directory / STATE_FILE} does not fit this model (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]})"
            )
        self.trained = True


@hookimpl
def register_methods(register):
    register(FullFineTuning)

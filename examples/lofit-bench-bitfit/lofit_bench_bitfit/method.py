"""BitFit: fine-tune only the bias terms of a frozen model.

Ben Zaken, Ravfogel and Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022 (https://aclanthology.org/2022.acl-short.1).

Every affine map of the network is ``h = W x + b``; BitFit freezes every ``W`` and trains
only the ``b``. Two sources of ``b``:

- **Existing biases** (``existing_biases=True``): every parameter of the base model whose
  name ends in ``.bias`` (Qwen2's query/key/value biases, GPT-2's projection and LayerNorm
  biases). They start at the base model's values; ``remove()`` puts those values back.
- **Added biases** (``added_biases``): Llama, Mistral and Gemma have no bias at all, so BitFit
  would have nothing to train. On these, a zero-initialised vector ``b`` of the output width
  is registered on each decoder layer's attention output projection (``self_attn.o_proj``)
  and MLP down projection (``mlp.down_proj``) as the parameter ``bitfit_bias``, and a forward
  hook adds it to the module's output: ``o_proj(x) + b``. At zero the model is exactly
  the base model. ``"auto"`` (the default) adds them only when the model has no bias of
  its own.

Trainable values: the numel of the existing biases (when trained) plus, for added biases,
``n_layers * hidden_size`` per site; on a Llama with ``L`` layers and width ``d`` that is
``2 * L * d`` (256 on lofit-bench's tiny-random-llama, 2 layers x 64).

Weight decay: the Hugging Face Trainer that :func:`lofit_bench.engine.training.train` drives leaves
every parameter whose name contains "bias" out of weight decay, so ``weight_decay`` has no
effect on BitFit's parameters (the BitFit paper used none either). The field is kept so the
config names the same optimizer settings as the other methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lofit_bench.engine.architectures import Architecture
from lofit_bench.engine.models import LoadedModel
from lofit_bench.engine.training import OptimizerSettings, train
from lofit_bench.errors import UserError, did_you_mean
from lofit_bench.method import FitContext, Method, MethodConfig
from lofit_bench.search_space import LogUniform

STATE_FILE = "bitfit_biases.safetensors"
ADDED_PARAMETER = "bitfit_bias"

# Where an added bias goes inside one decoder layer, by site name. The attention output comes
# from lofit-bench's architecture table; every family it knows names its MLP output down_proj.
ADDED_BIAS_SITES: dict[str, Callable[[Architecture], str]] = {
    "attention_output": lambda architecture: architecture.attention_output_path,
    "mlp_output": lambda architecture: "mlp.down_proj",
}


@dataclass
class BitFitConfig(MethodConfig):
    learning_rate: float = field(
        default=1e-3,
        # The harness's tuner samples this field on the dev split (1e-3 first); --method-set fixes it.
        metadata={"help": "AdamW learning rate for the bias terms", "tune": LogUniform(1e-4, 1e-1)},
    )
    weight_decay: float = field(
        default=0.0,
        metadata={
            "help": "AdamW weight decay; no effect on BitFit: the HF Trainer exempts every parameter named '*bias*' from decay"
        },
    )
    existing_biases: bool = field(
        default=True,
        metadata={
            "help": "train every bias the base model already has (parameters named '*.bias')"
        },
    )
    added_biases: str = field(
        default="auto",
        metadata={
            "help": "zero-initialised biases to add and train: 'auto' (both sites, only when the model "
            "has no bias of its own, e.g. Llama), 'none', or a comma list of "
            "attention_output (o_proj output), mlp_output (down_proj output)"
        },
    )


def _add_bias(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of an added bias: the module's output plus its ``bitfit_bias``."""
    return output + getattr(module, ADDED_PARAMETER)


class BitFit(Method):
    """Trains only bias terms; adds zero-initialised ones where the architecture has none."""

    name = "bitfit"
    description = "BitFit (Ben Zaken et al. 2022): train only the bias terms, adding them where the model has none"
    config_class = BitFitConfig

    def __init__(self, config: BitFitConfig | None = None) -> None:
        super().__init__(config)
        self._trained: dict[str, nn.Parameter] = {}
        self._original_values: dict[str, torch.Tensor] = {}
        self._requires_grad_before: dict[str, bool] = {}
        self._added_modules: list[nn.Module] = []
        self._hook_handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- life cycle ------------------------------------------------------------------------
    def prepare(self, lm: LoadedModel) -> None:
        if self.lm is not None:
            raise RuntimeError("bitfit is already prepared; call remove() first")
        model = lm.model
        existing = {
            name: p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"
        }
        sites = self._added_sites(has_own_biases=bool(existing))
        if not sites and not (self.config.existing_biases and existing):
            raise UserError(
                f"bitfit has no bias to train on {lm.name} (it has {len(existing)} bias tensors): "
                "set existing_biases=true or added_biases to 'auto' or a list of sites"
            )
        self.lm = lm
        self._requires_grad_before = {name: p.requires_grad for name, p in model.named_parameters()}
        try:
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            if self.config.existing_biases:
                for name, parameter in existing.items():
                    self._original_values[name] = parameter.detach().clone()
                    parameter.requires_grad_(True)
                    self._trained[name] = parameter
            for site in sites:
                path = ADDED_BIAS_SITES[site](lm.layout.architecture)
                for index in range(lm.layout.n_layers):
                    self._add_bias_at(model, lm.layout.architecture, index, path)
        except BaseException:
            self.remove()  # a half-attached model is worse than none
            raise

    def _added_sites(self, has_own_biases: bool) -> list[str]:
        value = str(self.config.added_biases or "none").strip().lower()
        if value == "auto":
            return [] if has_own_biases else list(ADDED_BIAS_SITES)
        if value in ("", "none"):
            return []
        sites = [site.strip() for site in value.split(",") if site.strip()]
        for site in sites:
            if site not in ADDED_BIAS_SITES:
                raise UserError(
                    f"bitfit: unknown added_biases site {site!r}.{did_you_mean(site, ADDED_BIAS_SITES)} "
                    f"Known: auto, none, {', '.join(ADDED_BIAS_SITES)}"
                )
        return list(dict.fromkeys(sites))

    def _add_bias_at(
        self, model: nn.Module, architecture: Architecture, index: int, path: str
    ) -> None:
        layer_path = f"{architecture.layers_path}.{index}"
        try:
            module = model.get_submodule(f"{layer_path}.{path}")
        except AttributeError as error:
            raise UserError(
                f"bitfit: no module {layer_path}.{path} to add a bias to ({error})"
            ) from None
        if getattr(module, "bias", None) is not None:
            return  # the module has its own bias: existing_biases decides whether it trains
        weight = module.weight
        bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
        module.register_parameter(ADDED_PARAMETER, bias)
        self._hook_handles.append(module.register_forward_hook(_add_bias))
        self._added_modules.append(module)
        self._trained[f"{layer_path}.{path}.{ADDED_PARAMETER}"] = bias

    def fit(self, context: FitContext) -> dict[str, Any]:
        lm = self.require_prepared()
        result = train(
            lm.model,
            lm.tokenizer,
            context.training_examples(),
            context.task.objective,
            context.budget,
            OptimizerSettings(self.config.learning_rate, self.config.weight_decay),
            context.seed,
            context.work_dir,
            progress=context.progress,
            on_epoch_end=context.on_epoch_end,  # lets the tuner score epochs and stop hopeless trials
            capabilities=self.capabilities,  # the default: biases act inside the model, on every position
        )
        return {"training": result.to_dict(), "trained_tensors": len(self._trained)}

    def trainable_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self._trained.values())

    def remove(self) -> None:
        if self.lm is None:
            return
        model = self.lm.model
        for handle in self._hook_handles:
            handle.remove()
        for module in self._added_modules:
            delattr(module, ADDED_PARAMETER)
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self._original_values.items():
                parameters[name].copy_(value)
        for name, parameter in parameters.items():
            parameter.requires_grad_(self._requires_grad_before.get(name, False))
        self._trained, self._original_values, self._requires_grad_before = {}, {}, {}
        self._added_modules, self._hook_handles = [], []
        self.lm = None

    # -- persistence ---------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        super().save(directory)
        tensors = {
            name: parameter.detach().cpu().contiguous() for name, parameter in self._trained.items()
        }
        save_file(tensors, str(directory / STATE_FILE))

    def load(self, directory: Path) -> None:
        """Restore saved biases; re-attaches first if the saved config differs from this one."""
        lm = self.require_prepared()
        prepared_with = self.config
        super().load(directory)
        if self.config != prepared_with:
            saved_config, self.config = self.config, prepared_with
            self.remove()
            self.config = saved_config
            self.prepare(lm)
        tensors = load_file(str(directory / STATE_FILE))
        if set(tensors) != set(self._trained):
            missing = sorted(set(self._trained) - set(tensors))
            unexpected = sorted(set(tensors) - set(self._trained))
            raise UserError(
                f"{directory / STATE_FILE} does not fit this model: missing {missing or 'none'}, "
                f"unexpected {unexpected or 'none'}"
            )
        with torch.no_grad():
            for name, tensor in tensors.items():
                parameter = self._trained[name]
                if parameter.shape != tensor.shape:
                    raise UserError(
                        f"{directory / STATE_FILE}: {name} has shape {tuple(tensor.shape)}, "
                        f"the model's has {tuple(parameter.shape)}"
                    )
                parameter.copy_(tensor.to(device=parameter.device, dtype=parameter.dtype))

"""Per-head edits of the attention output: z <- (1 + scale) * z + shift, head by head.

Shared machinery of the head-level methods: LoFiT (a scale on every head in stage 1, a shift
on K heads in stage 2), ITI (a fixed shift on K heads) and RED (scale and shift on every
head, in LoFiT's variant). The site is the input of each layer's attention output projection
(``o_proj``), the concatenation of the per-head outputs, shape [B, T, H * head_dim]. A
forward pre-hook splits it into heads and edits them at every position, so KV-cached
decoding, where each new token passes through ``o_proj`` on its own, is edited too.

Three rules learnt the hard way with the Hugging Face Trainer and trl:

- The vectors live in one module registered as a *submodule of the model*: the Trainer builds
  its optimizer from ``model.named_parameters()``, and vectors held only by a hook's closure
  would get no error and no update.
- Never ``deepcopy`` a model while an intervention is attached: the copy shares the hook
  function and its vectors, so a DPO "reference" copy would follow the policy.
- No parameter name contains "bias": the Hugging Face Trainer exempts every such parameter
  from weight decay, so LoFiT's bias vector v is called ``shift`` here.

The vectors are fp32 whatever the model's dtype, and so is the edit: on an fp32 model the
hook edits ``o_proj``'s input in place of the original; on a bf16/fp16 model, or under bf16
autocast (``--precision bf16-mixed``), the edited site is not cast back. Near 1 bf16 holds only
..., 0.9961, 1, 1.0078, ..., so a scale of 1 + 1e-3 (stage 1's init) would round to exactly 1 or
to a 4x larger shrink, and a small shift would round away against activations of order 1.
Instead the pre-hook computes the edited site in fp32 and a forward hook replaces ``o_proj``'s
output by the projection of that fp32 input (the weight upcast on the fly, autocast off), cast
once to the model's dtype: adding ``W @ delta`` to the already rounded bf16 output would round a
change below half a bf16 step straight back to it. A zero edit (checked each call) keeps the
model's own output bit for bit; a non-zero one costs one fp32 matmul per edited layer
(benchmarks/test_precision_speed.py measures it). This is a
deliberate deviation from lo-fit, whose vectors are created in the model's dtype (bf16 for
Gemma-7B and Llama-2-13B) and updated without an fp32 master copy, which loses most of a
1e-3-sized initialisation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lofit_bench.engine.architectures import ModelLayout
from lofit_bench.errors import UserError
from lofit_bench.method import Method, MethodConfig

if TYPE_CHECKING:
    from lofit_bench.engine.models import LoadedModel

Head = tuple[int, int]
"""(layer, head) of one attention head, both counted from 0."""


class HeadSite(nn.Module):
    """The scale and/or shift vectors of some heads of one layer.

    Only the selected heads have parameters (``scale`` and ``shift`` are [k, head_dim]); the
    other heads of the layer pass through untouched, so the trained count is exactly
    k * head_dim per vector kind.
    """

    def __init__(self, n_heads: int, head_dim: int, heads: Sequence[int], scale: bool, shift: bool) -> None:
        super().__init__()
        heads = sorted(set(heads))
        if not heads or heads[0] < 0 or heads[-1] >= n_heads:
            raise ValueError(f"heads must be a non-empty subset of 0..{n_heads - 1}, got {heads}")
        if not (scale or shift):
            raise ValueError("a head site needs a scale, a shift or both")
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.register_buffer("heads", torch.tensor(heads, dtype=torch.long))
        for name, wanted in (("scale", scale), ("shift", shift)):
            value = nn.Parameter(torch.zeros(len(heads), head_dim, dtype=torch.float32)) if wanted else None
            self.register_parameter(name, value)

    def per_head(self, values: torch.Tensor) -> torch.Tensor:
        """[k, head_dim] -> [n_heads, head_dim], zero on the heads this site does not edit."""
        if values.shape[0] == self.n_heads:
            return values
        return values.new_zeros(self.n_heads, self.head_dim).index_copy(0, self.heads, values)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The edited site, in ``hidden``'s dtype (exact for fp32; :meth:`difference` otherwise)."""
        heads = hidden.unflatten(-1, (self.n_heads, self.head_dim))
        # With zero vectors both lines are exact identities (x * 1.0, x + 0.0): logits unchanged.
        if self.scale is not None:
            heads = heads * (1 + self.per_head(self.scale)).to(heads.dtype)
        if self.shift is not None:
            heads = heads + self.per_head(self.shift).to(heads.dtype)
        return heads.flatten(-2)

    def difference(self, hidden: torch.Tensor) -> torch.Tensor:
        """edited - hidden, computed and returned in fp32: z * scale + shift per head."""
        heads = hidden.float().unflatten(-1, (self.n_heads, self.head_dim))
        delta = torch.zeros_like(heads)
        if self.scale is not None:
            delta = delta + heads * self.per_head(self.scale)
        if self.shift is not None:
            delta = delta + self.per_head(self.shift)
        return delta.flatten(-2)


class HeadIntervention(nn.Module):
    """Head sites over a set of (layer, head) pairs; :meth:`attach` puts them on a model."""

    def __init__(
        self, layout: ModelLayout, heads: Iterable[Head] | None = None, *, scale: bool = False, shift: bool = False
    ) -> None:
        super().__init__()
        self.n_layers, self.n_heads, self.head_dim = layout.n_layers, layout.n_heads, layout.head_dim
        chosen = all_heads(layout) if heads is None else sorted(set(heads))
        by_layer: dict[int, list[int]] = {}
        for layer, head in chosen:
            if not (0 <= layer < layout.n_layers and 0 <= head < layout.n_heads):
                raise ValueError(f"head {(layer, head)} is outside a {layout.n_layers} x {layout.n_heads} model")
            by_layer.setdefault(layer, []).append(head)
        self.sites = nn.ModuleDict(
            {str(layer): HeadSite(layout.n_heads, layout.head_dim, heads, scale, shift) for layer, heads in by_layer.items()}
        )

    @property
    def heads(self) -> list[Head]:
        return [(int(layer), int(head)) for layer, site in self.sites.items() for head in site.heads.tolist()]

    def vectors(self, kind: str) -> list[nn.Parameter]:
        """Every ``scale`` or every ``shift`` parameter (one per edited layer)."""
        return [getattr(site, kind) for site in self.sites.values() if getattr(site, kind) is not None]

    def trainable_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)

    @torch.no_grad()
    def init_normal_(self, std: float, seed: int) -> HeadIntervention:
        """Every vector ~ N(0, std), drawn from a private generator (reproducible, and the
        global RNG stream the trainer seeds is left alone)."""
        generator = torch.Generator().manual_seed(seed)
        for parameter in self.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
        return self

    @torch.no_grad()
    def head_norms(self, kind: str) -> torch.Tensor:
        """[n_layers, n_heads] L2 norms of the ``kind`` vectors in fp32 (0 for unedited heads)."""
        norms = torch.zeros(self.n_layers, self.n_heads, dtype=torch.float32)
        for layer, site in self.sites.items():
            values = getattr(site, kind)
            if values is not None:
                norms[int(layer), site.heads.cpu()] = values.detach().float().norm(dim=-1).cpu()
        return norms

    def l1_norm(self, kind: str = "scale") -> torch.Tensor:
        """Sum of |x| over every element of every ``kind`` vector (LoFiT's stage-1 penalty), on
        the first vector's device (a device-mapped model's layers live on several)."""
        vectors = self.vectors(kind)
        return sum(values.abs().sum().to(vectors[0].device) for values in vectors)  # type: ignore[return-value]

    def attach(self, model: nn.Module, layout: ModelLayout, name: str) -> Attachment:
        """Register this module as ``model.<name>`` and hook each edited layer's ``o_proj``."""
        if (layout.n_layers, layout.n_heads, layout.head_dim) != (self.n_layers, self.n_heads, self.head_dim):
            raise UserError(
                f"intervention built for {describe_shape(self.n_layers, self.n_heads, self.head_dim)} "
                f"cannot be attached to a model with {describe_shape(layout.n_layers, layout.n_heads, layout.head_dim)}"
            )
        if hasattr(model, name):
            raise RuntimeError(f"the model already has an attribute {name!r}; remove the other intervention first")
        from lofit_bench.engine.models import module_device

        # Each layer's vectors on that layer's device: a device-mapped model's layers differ.
        for layer, site in self.sites.items():
            site.to(module_device(layout.attention_output(model, int(layer))))
        model.add_module(name, self)
        hooks = []
        for layer, site in self.sites.items():
            projection = layout.attention_output(model, int(layer))
            hooks += projection_hooks(projection, site)
        return Attachment(model, name, hooks)


@dataclass
class Attachment:
    """An attached intervention; :meth:`remove` leaves the model exactly as it was."""

    model: nn.Module
    name: str
    hooks: list[RemovableHandle] = field(default_factory=list)

    @property
    def intervention(self) -> HeadIntervention:
        return getattr(self.model, self.name)

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        if self.name in dict(self.model.named_children()):
            delattr(self.model, self.name)

    @contextmanager
    def merged(self, layout: ModelLayout) -> Iterator[None]:
        """Fold the edits into each edited layer's ``o_proj`` and take the hooks off, then put
        everything back as it was. With z' = (1 + a) * z + v, ``o_proj(z') = (W diag(1 + a)) z +
        (W v + b)``: the scale goes into the weight's columns, the shift into the bias (one
        created where the projection has none), so the merged model costs nothing at inference."""
        intervention = self.intervention
        projections = {layer: layout.attention_output(self.model, int(layer)) for layer in intervention.sites}
        saved = {layer: (module.weight.detach().clone(), module.bias) for layer, module in projections.items()}
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        try:
            with torch.no_grad():
                for layer, site in intervention.sites.items():
                    module = projections[layer]
                    weight = module.weight
                    if site.shift is not None:
                        shift = site.per_head(site.shift).flatten().to(weight.device, torch.float32)
                        bias = weight.float() @ shift
                        if module.bias is not None:
                            bias = bias + module.bias.float()
                        module.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=False)
                    if site.scale is not None:
                        scale = (1 + site.per_head(site.scale)).flatten().to(weight.device, torch.float32)
                        weight.copy_((weight.float() * scale).to(weight.dtype))
            yield
        finally:
            with torch.no_grad():
                for layer, module in projections.items():
                    weight, bias = saved[layer]
                    module.weight.copy_(weight)
                    module.bias = bias
            for layer, module in projections.items():
                self.hooks += projection_hooks(module, intervention.sites[layer])

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


class HeadInterventionMethod(Method):
    """The life cycle every head-level method shares (LoFiT, ITI, RED): its vectors hang on the
    model as ``model.<submodule>`` through one :class:`Attachment`, which ``remove()`` takes off."""

    submodule: ClassVar[str]

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.attachment: Attachment | None = None

    def prepare(self, lm: LoadedModel) -> None:
        if hasattr(lm.model, self.submodule):
            raise RuntimeError(f"the model already carries {self.submodule!r}: another {self.name} is attached")
        self.lm = lm

    def remove(self) -> None:
        self._detach()
        self.lm = None

    @contextmanager
    def merged(self) -> Iterator[bool]:
        """The fitted vectors folded into ``o_proj`` for the duration (see :meth:`Attachment.merged`)."""
        if self.attachment is None:
            yield False
            return
        with self.attachment.merged(self.require_prepared().layout):
            yield True

    def _detach(self) -> None:
        if self.attachment is not None:
            self.attachment.remove()
            self.attachment = None


def projection_hooks(projection: nn.Module, site: HeadSite) -> list[RemovableHandle]:
    """The two hooks that edit one layer's attention output: the pre-hook edits ``o_proj``'s
    input; below fp32 the forward hook recomputes its output from the fp32 edited input."""
    pending: list[torch.Tensor] = []  # the fp32 edited input, from the pre-hook to the hook
    return [
        projection.register_forward_pre_hook(partial(_edit_projection_input, site, pending), with_kwargs=True),
        projection.register_forward_hook(partial(_project_edited_input, pending)),
    ]


def _edit_projection_input(
    site: HeadSite, pending: list[torch.Tensor], module: nn.Module, args: tuple, kwargs: dict[str, Any]
) -> tuple[tuple, dict[str, Any]] | None:
    hidden = args[0] if args else kwargs["input"]
    if hidden.dtype != torch.float32 or torch.is_autocast_enabled(hidden.device.type):
        # Below fp32 the edit must not be rounded: o_proj's output is recomputed in fp32 from
        # the fp32 edited input by the forward hook (see the module docstring).
        with torch.autocast(hidden.device.type, enabled=False):
            delta = site.difference(hidden)
            if delta.any():  # a zero edit keeps the model's own output, bit for bit
                pending.append(hidden.float() + delta)
        return None
    if args:
        return (site(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "input": site(kwargs["input"])}


def _project_edited_input(pending: list[torch.Tensor], module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """``o_proj`` applied to the fp32 edited input with its weight upcast, cast once to the output's dtype."""
    if not pending:
        return None
    edited = pending.pop().to(output.device)
    bias = module.bias.float() if getattr(module, "bias", None) is not None else None
    with torch.autocast(output.device.type, enabled=False):
        return torch.nn.functional.linear(edited, module.weight.float(), bias).to(output.dtype)


# -- heads: enumeration and ranking ---------------------------------------------------------
def all_heads(layout: ModelLayout) -> list[Head]:
    return [(layer, head) for layer in range(layout.n_layers) for head in range(layout.n_heads)]


def rank_heads(scores: torch.Tensor) -> list[tuple[int, int, float]]:
    """(layer, head, score) for every head, highest score first (ties: lower layer, head)."""
    layers, heads = scores.shape
    entries = [(layer, head, float(scores[layer, head])) for layer in range(layers) for head in range(heads)]
    return sorted(entries, key=lambda entry: (-entry[2], entry[0], entry[1]))


def select_top_heads(scores: torch.Tensor, k: int) -> list[Head]:
    """The k heads with the highest scores, ranked globally (no per-layer normalisation)."""
    if not 1 <= k <= scores.numel():
        raise ValueError(f"k must be between 1 and {scores.numel()}, got {k}")
    return [(layer, head) for layer, head, _ in rank_heads(scores)[:k]]


def check_head_option(heads: object, name: str) -> None:
    """The head-count rule of every head-level method's ``heads`` option, before a model is
    known: a count of at least 1 (int) or a fraction in (0, 1] (float)."""
    if isinstance(heads, bool) or not isinstance(heads, int | float):
        raise UserError(f"{name} must be a count (e.g. 8) or a fraction of all heads (e.g. 0.03), got {heads!r}")
    if (isinstance(heads, int) and heads < 1) or (isinstance(heads, float) and not 0 < heads <= 1):
        raise UserError(f"{name}={heads}: use a count of at least 1 (int) or a fraction in (0, 1] (float)")


def resolve_head_count(heads: int | float, total_heads: int) -> int:
    """K from a count (int) or a fraction of all heads (float); a fraction rounds, at least 1."""
    if isinstance(heads, bool) or not isinstance(heads, int | float):
        raise UserError(f"heads must be a count (e.g. 8) or a fraction of all heads (e.g. 0.03), got {heads!r}")
    if isinstance(heads, int):
        if not 1 <= heads <= total_heads:
            raise UserError(f"heads={heads}: the model has {total_heads} heads; choose 1 to {total_heads}")
        return heads
    if not 0 < heads <= 1:
        raise UserError(f"heads={heads}: a fraction must be in (0, 1]; pass an int for a count")
    return max(1, min(total_heads, round(heads * total_heads)))


def describe_shape(n_layers: int, n_heads: int, head_dim: int) -> str:
    return f"{n_layers} layers x {n_heads} heads x head_dim {head_dim}"


# -- persistence ----------------------------------------------------------------------------
def save_intervention(intervention: HeadIntervention, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Safetensors with every vector and head index, plus the model shape as metadata."""
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in intervention.state_dict().items()}
    shape = {"n_layers": intervention.n_layers, "n_heads": intervention.n_heads, "head_dim": intervention.head_dim}
    save_file(tensors, str(path), metadata={"shape": json.dumps(shape), **(metadata or {})})


def load_intervention(path: Path, layout: ModelLayout) -> HeadIntervention:
    """Rebuild a saved intervention for ``layout``; another model shape is a clear UserError."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        shape = json.loads((handle.metadata() or {}).get("shape", "{}"))
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    saved = (shape.get("n_layers"), shape.get("n_heads"), shape.get("head_dim"))
    if saved != (layout.n_layers, layout.n_heads, layout.head_dim):
        raise UserError(
            f"{path} was trained on a model with {describe_shape(*saved)}; this model has "
            f"{describe_shape(layout.n_layers, layout.n_heads, layout.head_dim)}"
        )
    heads = [
        (int(name.split(".")[1]), head)
        for name, tensor in tensors.items()
        if name.endswith(".heads")
        for head in tensor.tolist()
    ]
    kinds = {name.rsplit(".", 1)[1] for name in tensors} - {"heads"}
    intervention = HeadIntervention(layout, heads, scale="scale" in kinds, shift="shift" in kinds)
    intervention.load_state_dict(tensors, strict=True)
    return intervention

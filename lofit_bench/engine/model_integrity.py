"""Is the model back as it was loaded? One check for the contract suite and for every run.

Tuning trials and the final test evaluation share one loaded model per fold, so a method
whose ``remove()`` leaves a hook, a patched ``forward``, an added parameter or a merged
weight behind would contaminate every later trial and the score. :class:`ModelStructure`
captures what ``remove()`` must put back; :meth:`ModelStructure.differences` says, in words,
what is not. The contract suite (:mod:`lofit_bench.testing`) captures exact weight values;
a run captures a per-tensor checksum of the weights' bits instead (:func:`tensor_checksum`:
no second copy of the model in memory, one pass over it), and :class:`ModelGuard` turns a
difference into :class:`ModelNotRestored`, a failed run with no score.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

#: Module attributes where torch keeps hooks; any count that differs after remove() is a leftover.
HOOK_TABLES = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)
#: The integer dtype of each element size: a tensor's bits are summed as integers of its own width.
_BITS_BY_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
#: Differences named in a ModelNotRestored message before "and N more".
SHOWN_DIFFERENCES = 3


class ModelNotRestored(Exception):
    """A method's ``remove()`` left the model changed: the run fails and records no score.

    Not a UserError: it is the method's bug, recorded as the run's failure (type
    ``ModelNotRestored``) with the method, the module and what changed in the message.
    """


@dataclass(frozen=True)
class TensorState:
    """One parameter's or buffer's dtype and shape, and its exact value or its bits' checksum."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    value: torch.Tensor | None = None
    checksum: int | None = None

    def same_values(self, other: TensorState) -> bool:
        if self.value is not None and other.value is not None:
            return torch.equal(self.value, other.value)
        return self.checksum == other.checksum


def tensor_checksums(tensors: dict[str, torch.Tensor]) -> dict[str, int | None]:
    """The sum of each tensor's bits read as 32-bit integers, modulo 2**32 (a tensor whose bytes
    are no whole number of aligned words: its elements as integers of their own width).

    Any change of a value changes its bits, and a merge changes many; the sum is exact (no
    rounding, so the same on every run and thread count) and order-free, computed on the
    tensor's own device with one transfer per device. Summing in 32 bits is ~100x faster than
    widening to 64 on CPU (one pass of ~0.1 s over a 135M-parameter model on one core). A
    tensor with no data (``meta``) gets None (compared by dtype and shape only)."""
    sums: dict[str, int | None] = {}
    pending: dict[torch.device, list[tuple[str, torch.Tensor]]] = defaultdict(list)
    with torch.no_grad():
        for name, tensor in tensors.items():
            if tensor.is_meta:
                sums[name] = None
                continue
            data = tensor.detach().reshape(-1)  # a view when contiguous (every weight), else a copy
            try:  # 32-bit words summed in 32 bits (wrapping: exact modulo 2**32): one fast pass
                total = data.view(torch.int32).sum(dtype=torch.int32)
            except RuntimeError:  # a size or offset that is no whole number of words (small tensors)
                total = data.view(_BITS_BY_SIZE.get(data.element_size(), torch.uint8)).sum(dtype=torch.int64)
            pending[total.device].append((name, total.to(torch.int64)))
    for items in pending.values():
        values = torch.stack([value for _, value in items]).tolist()
        sums.update({name: value for (name, _), value in zip(items, values, strict=True)})
    return sums


@dataclass
class ModelStructure:
    """What ``remove()`` must put back: every module (the same objects), parameter, buffer and
    hook, each weight's dtype, shape and value (exact, or as a checksum) and ``requires_grad``."""

    modules: dict[str, tuple[int, type]]
    hooks: dict[str, dict[str, int]]
    patched_forward: list[str]
    tensors: dict[str, TensorState]
    requires_grad: dict[str, bool]

    @classmethod
    def capture(cls, model: nn.Module, exact: bool = True) -> ModelStructure:
        """``exact``: keep a copy of every tensor (the contract suite); else checksums (a run)."""
        from torch.nn.modules import module as torch_module

        modules = dict(model.named_modules(remove_duplicate=False))
        hooks = {
            name: {table: len(getattr(module, table, {})) for table in HOOK_TABLES if getattr(module, table, {})}
            for name, module in modules.items()
        }
        # hooks registered for every module (torch.nn.modules.module.register_module_forward_hook...)
        hooks["<every module>"] = {
            table: len(getattr(torch_module, table)) for table in dir(torch_module)
            if table.startswith("_global_") and table.endswith("hooks") and getattr(torch_module, table)
        }
        state = model.state_dict(keep_vars=True)
        checksums = {} if exact else tensor_checksums(state)
        tensors = {
            name: TensorState(
                tensor.dtype, tuple(tensor.shape),
                value=tensor.detach().clone() if exact else None, checksum=checksums.get(name),
            )
            for name, tensor in state.items()
        }
        return cls(
            modules={name: (id(module), type(module)) for name, module in modules.items()},
            hooks=hooks,
            patched_forward=sorted(name for name, module in modules.items() if "forward" in vars(module)),
            tensors=tensors,
            requires_grad={name: parameter.requires_grad for name, parameter in model.named_parameters()},
        )

    def differences(self, other: ModelStructure) -> list[str]:
        """What ``other`` (the model after remove) has that differs from this one, in words."""
        found: list[str] = []
        added = sorted(set(other.modules) - set(self.modules))
        lost = sorted(set(self.modules) - set(other.modules))
        found += [f"submodule {name!r} was added" for name in added]
        found += [f"submodule {name!r} is gone" for name in lost]
        found += [
            f"submodule {name!r} is another object or class ({other.modules[name][1].__name__})"
            for name in self.modules.keys() & other.modules.keys() if self.modules[name] != other.modules[name]
        ]
        found += [
            f"hooks on {name or 'the model'!r}: {other.hooks.get(name, {})} instead of {self.hooks.get(name, {})}"
            for name in sorted(self.hooks.keys() | other.hooks.keys())
            if self.hooks.get(name, {}) != other.hooks.get(name, {})
        ]
        found += [f"{name or 'the model'!r} has a patched forward" for name in other.patched_forward
                  if name not in self.patched_forward]
        found += [f"tensor {name!r} was added" for name in sorted(set(other.tensors) - set(self.tensors))]
        found += [f"tensor {name!r} is gone" for name in sorted(set(self.tensors) - set(other.tensors))]
        for name in sorted(self.tensors.keys() & other.tensors.keys()):
            before, after = self.tensors[name], other.tensors[name]
            if before.dtype != after.dtype or before.shape != after.shape:
                found.append(
                    f"tensor {name!r} is {after.dtype}, {after.shape} instead of the base model's {before.dtype}, {before.shape}"
                )
            elif not before.same_values(after):
                found.append(f"tensor {name!r} differs from the base model's ({after.dtype}, {after.shape})")
        found += [f"parameter {name!r} has requires_grad=True" for name, flag in sorted(other.requires_grad.items())
                  if flag and not self.requires_grad.get(name, False)]
        return found


class ModelGuard:
    """The loaded model's structure and weight checksums, captured once; :meth:`verify` after
    every ``remove()`` (each tuning trial's, the run's) raises :class:`ModelNotRestored`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.seconds = 0.0
        started = time.perf_counter()
        self.baseline = ModelStructure.capture(model, exact=False)
        self.seconds += time.perf_counter() - started

    def verify(self, method: str, when: str) -> None:
        started = time.perf_counter()
        differences = self.baseline.differences(ModelStructure.capture(self.model, exact=False))
        self.seconds += time.perf_counter() - started
        if differences:
            shown = "; ".join(differences[:SHOWN_DIFFERENCES])
            more = f"; and {len(differences) - SHOWN_DIFFERENCES} more" if len(differences) > SHOWN_DIFFERENCES else ""
            raise ModelNotRestored(
                f"method {method!r} did not restore the model in remove() {when}: {shown}{more}. No score is "
                "recorded: a later trial or the test evaluation would have run on a changed model "
                "(lofit_bench.testing.MethodContract diagnoses the method)"
            )

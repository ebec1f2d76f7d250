"""``--precision``: how the frozen model computes, separately from the dtype its weights are kept in.

``fp32``: every matmul in the weights' dtype (``--dtype``), as before this option existed.
``bf16-mixed``: the weights stay fp32 and the frozen model's matmuls run in bf16 under
``torch.autocast``; trained tensors (LoFiT's, ITI's, RED's vectors, LoRA's adapters) and the
optimizer state stay fp32, and head edits are applied and projected in fp32
(:mod:`lofit_bench.engine.interventions`). ``auto`` (the default) is ``bf16-mixed`` on a CUDA device that
supports bf16 and ``fp32`` elsewhere: on a CPU, bf16 autocast pays only with native bf16 units
(AMX-BF16 or AVX512-BF16; about 5x slower without), so choosing it there warns when they are
missing. The resolved value is part of a run's identity and of its record (``model.precision``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cache

import torch

from lofit_bench.errors import UserError, warn

PRECISIONS = ("auto", "fp32", "bf16-mixed")


def resolve_precision(precision: str, device_kind: str, dtype: str = "auto") -> str:
    """``fp32`` or ``bf16-mixed`` for ``precision`` on a ``cpu``/``cuda`` device, with weights in
    ``dtype``; bf16-mixed with weights that are not fp32 is a UserError (nothing to mix)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if dtype not in ("auto", "fp32"):
            return "fp32"  # --dtype bf16 asks for pure bf16 weights and matmuls
        return "bf16-mixed" if device_kind == "cuda" else "fp32"
    if precision == "bf16-mixed" and dtype not in ("auto", "fp32"):
        raise UserError(f"--precision bf16-mixed keeps fp32 weights and autocasts the matmuls; drop --dtype {dtype} or use --precision fp32")
    return precision


def weights_dtype(precision: str, dtype: str) -> str:
    """The dtype the model is loaded in: fp32 under bf16-mixed (``auto`` would be bf16 on CUDA)."""
    return "fp32" if precision == "bf16-mixed" else dtype


@contextlib.contextmanager
def computing_in(precision: str, device: str) -> Iterator[None]:
    """The frozen model's matmuls in bf16 inside this block under ``bf16-mixed``; nothing under fp32."""
    if precision != "bf16-mixed":
        yield
        return
    device_type = torch.device(device).type
    if device_type == "cpu" and not cpu_has_native_bf16():
        warn("--precision bf16-mixed on a CPU without native bf16 units (AMX-BF16, AVX512-BF16): "
             "expect it several times slower than fp32; use --precision fp32")
    with torch.autocast(device_type, dtype=torch.bfloat16):
        yield


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix or vector instructions (/proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags))

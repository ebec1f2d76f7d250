"""Divergence in the training loop: a run whose loss or trained tensors stop being finite is
stopped and failed (:class:`~lofit_bench.errors.Diverged`), never recorded as "ok"."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from lofit_bench.errors import Diverged


def first_non_finite(named_tensors: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first tensor holding NaN or infinity, or None."""
    import torch

    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all()):
            return name
    return None


def divergence_hint(learning_rate: float) -> str:
    return f"the learning rate was {learning_rate:g}; lower it (METHOD.learning_rate with --method-set)"


def non_finite_stop(learning_rate: float):
    """A Trainer callback that raises :class:`Diverged` at the first non-finite loss or gradient norm.

    Needs ``logging_steps=1`` and ``logging_nan_inf_filter=False`` (otherwise the Trainer logs a
    NaN loss as the average of the finite ones before it, which reads like a healthy run).
    """
    from transformers import TrainerCallback

    class NonFiniteStop(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, int | float) and not math.isfinite(value):
                    loss = "" if key == "loss" else f" (loss {(logs or {}).get('loss')})"
                    raise Diverged(
                        f"training diverged at step {state.global_step}: the {key} is {value}{loss}; "
                        f"{divergence_hint(learning_rate)}"
                    )

    return NonFiniteStop()


def check_finite_metrics(metrics: dict[str, Any], fold: str) -> None:
    bad = {name: value for name, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)}
    if bad:
        listing = ", ".join(f"{name} = {value}" for name, value in bad.items())
        raise Diverged(f"evaluation on fold {fold} gave non-finite metrics ({listing}): the model's outputs are not finite")

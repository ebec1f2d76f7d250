"""Faults a run must survive or report: divergence, non-finite results, artefacts that cannot
be written.

A diverged run is never "ok": the training loop stops at the first non-finite loss (a
:class:`~transformers.TrainerCallback`) and checks the trained tensors at the end; a metric
that is not finite fails the run too. An artefact (a method's saved state) that cannot be
written costs the artefact, never the run's result: the partial folder is removed and the
record says what happened.
"""

from __future__ import annotations

import errno
import math
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lofit_bench.errors import Diverged, warn
from lofit_bench.run_record import ArtifactsError


def check_finite_metrics(metrics: dict[str, Any], fold: str) -> None:
    bad = {name: value for name, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)}
    if bad:
        listing = ", ".join(f"{name} = {value}" for name, value in bad.items())
        raise Diverged(f"evaluation on fold {fold} gave non-finite metrics ({listing}): the model's outputs are not finite")


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


def save_artifacts(method: Any, directory: Path) -> ArtifactsError | None:
    """``method.save(directory)``; when writing fails, remove the partial folder, warn on one
    line and return what went wrong (the record's ``artifacts_error``): the run's result is
    kept either way."""
    try:
        method.save(directory)
        return None
    except Exception as error:  # noqa: BLE001 - safetensors reports I/O errors as its own type
        if not isinstance(error, OSError) and not _is_io_error(error):
            raise
        shutil.rmtree(directory, ignore_errors=True)
        disk_full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or _says_disk_full(error)
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        message = f"could not save the method's state to {directory}: {reason}"
        warn(f"{message}; the run's result is kept in its record, without artefacts")
        return ArtifactsError(message=message, disk_full=disk_full)


def _is_io_error(error: BaseException) -> bool:
    return "IoError" in str(error) or _says_disk_full(error)


def _says_disk_full(error: BaseException) -> bool:
    text = str(error)
    return "No space left" in text or "code: 28" in text or "Disk quota exceeded" in text

"""Faults a run must survive or report: non-finite results, artefacts that cannot be written.

A diverged run is never "ok": the training loop stops at the first non-finite loss
(:mod:`lofit_bench.engine.divergence`); a metric that is not finite fails the run too. An artefact (a method's saved state) that cannot be
written costs the artefact, never the run's result: the partial folder is removed and the
record says what happened.
"""

from __future__ import annotations

import errno
import math
import shutil
from pathlib import Path
from typing import Any

from lofit_bench.errors import Diverged, warn
from lofit_bench.records.record import ArtifactsError


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
        disk_full = is_disk_full(error)
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        message = f"could not save the method's state to {directory}: {reason}"
        warn(f"{message}; the run's result is kept in its record, without artefacts")
        return ArtifactsError(message=message, disk_full=disk_full)


def _is_io_error(error: BaseException) -> bool:
    return "IoError" in str(error) or _says_disk_full(error)


#: How libraries that wrap an OSError say ENOSPC/EDQUOT: the OS's words, safetensors' Rust
#: ``Io`` error code, and SQLite's ``SQLITE_FULL`` (Optuna's database, through SQLAlchemy).
DISK_FULL_WORDS = ("No space left", "code: 28", "Disk quota exceeded", "database or disk is full")


def _says_disk_full(error: BaseException) -> bool:
    text = str(error)
    return any(words in text for words in DISK_FULL_WORDS)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, says the disk (or quota) is full."""
    return disk_full_cause(error) is not None


def disk_full_cause(error: BaseException) -> BaseException | None:
    """The error in ``error``'s chain that says the disk (or quota) is full, or None.

    Follows ``__cause__``/``__context__`` and SQLAlchemy's ``orig``: Optuna reports a full
    SQLite file as ``StorageInternalError`` ("An exception is raised during the commit...")
    raised from SQLAlchemy's ``OperationalError``, which wraps ``sqlite3.OperationalError:
    database or disk is full``."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or _says_disk_full(current):
            return current
        orig = getattr(current, "orig", None)
        pending += [current.__cause__, current.__context__, orig if isinstance(orig, BaseException) else None]
    return None


def error_message(error: BaseException) -> str:
    """A failed run's one-line message: the error's first line, and when a full disk lies
    underneath a library's own words, what the disk said."""
    message = str(error).splitlines()[0] if str(error) else ""
    cause = disk_full_cause(error)
    if cause is not None and cause is not error:
        said = getattr(cause, "strerror", None) or (str(cause).splitlines() or [type(cause).__name__])[0]
        message = f"{message} ({type(cause).__name__}: {said})" if message else f"{type(cause).__name__}: {said}"
    return message


#: A short text every fitted model is run on once before it is scored (its logits must be finite).
PROBE_TEXT = "Q: What is the capital of France?\nA: Paris"


def check_finite_outputs(method: Any, lm: Any) -> None:
    """Run the fitted model once on :data:`PROBE_TEXT`: non-finite logits, or decoder-layer
    outputs too large for a norm to square (an edit that overflows the hidden states, e.g.
    ``iti.alpha=1e30``: the model then answers the same whatever it is asked), fail the fit as
    :class:`Diverged` instead of a run scored on constant output. One forward pass of a dozen
    tokens; the layer outputs are read by hooks removed at once (not ``output_hidden_states``,
    which makes transformers leave hooks of its own on the model)."""
    import torch

    from lofit_bench.prompt_positions import PromptSpans, declare_prompt

    model = method.evaluation_model()
    input_ids = lm.tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    device = next(model.parameters()).device
    largest = [0.0]

    def record(_module: Any, _inputs: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        largest[0] = max(largest[0], float(hidden.detach().abs().float().max()))

    handles = [layer.register_forward_hook(record) for layer in lm.layout.decoder_layers(lm.model)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), declare_prompt(model, PromptSpans.right_padded([input_ids.shape[1]])):
            logits = model(input_ids=input_ids.to(device)).logits
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    # A norm squares the hidden state: past ~1.8e19 the square is inf in float32 and the norm outputs zeros.
    if not bool(torch.isfinite(logits).all()) or not largest[0] < math.sqrt(torch.finfo(torch.float32).max):
        raise Diverged(
            f"the fitted {method.name} model's hidden states reach {largest[0]:.3g} on a probe text, beyond what its "
            "norms can square (its output no longer depends on the input); lower the method's strength or "
            "initialisation scale"
        )

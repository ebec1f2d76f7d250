"""Frozen-model work computed once per sweep: a content-keyed store under ``OUT/shared/``.

Several runs of a sweep read the same frozen model on the same texts: ITI's probes, RepE's
layer scan and LoFiT's ``head_source=iti`` read the same last-token activations of the same
contrast pairs; LoFiT runs that differ only in K (or in stage-2 values) train the same stage 1.
A method asks its :class:`~lofit_bench.method.FitContext` for such a value through
:meth:`SharedWork.fetch`; the first run computes and stores it, every later run (of this
sweep, or of a later sweep on the same ``--out``) reads it back.

An entry is keyed by its content: the run's *scope* (the model's settings and content
fingerprint, the device kind, the task and its plugin, the fold) plus the fields the caller
names (the texts' hash, the seed, the config and budget values the value depends on). Two
values with the same key are the same computation, so a reused value is the one the run would
have computed (the tests compare them).

Safe under ``--jobs N`` and Ray on one filesystem: the writer of an entry holds ``flock`` on
``<kind>/<key>.lock`` while it computes, so no two processes compute or write one entry and
a second process waits for the first instead of doing the work twice. The entry is written
into a temporary folder and renamed into place, so a crashed writer leaves no half entry (its
lock dies with it, and the next run computes the value). Ray workers on other machines without
a shared filesystem each keep their own store (correct, just less reuse). Where ``fcntl`` does
not exist (Windows) there is no lock: two processes may both compute an entry, and the first
rename wins.

Layout: ``OUT/shared/<kind>/<key>/`` with ``tensors.safetensors`` and ``entry.json`` (the key's
fields, who computed it, in how many seconds, and the caller's JSON metadata).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

TENSORS_FILE = "tensors.safetensors"
ENTRY_FILE = "entry.json"

#: What a computation returns and an entry holds: named tensors and JSON metadata.
Value = tuple[dict[str, torch.Tensor], dict[str, Any]]


def content_hash(value: Any) -> str:
    """A stable hash of JSON-able ``value`` (dict keys sorted; other objects by ``str``)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


#: The run identity's fields (:func:`lofit_bench.sweep.spec.run_identity`) that every entry of a
#: run's store is scoped by: what model, read how, on which task.
SCOPE_FIELDS = ("model", "model_fingerprint", "task", "task_plugin")


def run_scope(identity: dict[str, Any], fold: str) -> dict[str, Any]:
    """The scope of a run's entries for one fold: the model's settings (dtype, device kind,
    revision...) and content fingerprint, the task and its plugin, and the fold."""
    return {name: identity.get(name) for name in SCOPE_FIELDS} | {"fold": fold}


def examples_hash(examples: Any) -> str:
    """A content hash of a list of training examples (dataclasses: every field and the type)."""
    from dataclasses import asdict

    return content_hash([asdict(example) | {"type": type(example).__name__} for example in examples])


@dataclass
class SharedUse:
    """One entry a fit asked for: computed here, or reused (from whom, saving how long)."""

    kind: str
    key: str
    reused: bool
    created_by: str | None = None
    compute_s: float | None = None


@dataclass
class SharedWork:
    """The store of one run and fold (see the module docstring). ``root`` None: disabled,
    every :meth:`fetch` computes (``--no-shared-work``, and a FitContext built by hand)."""

    root: Path | None = None
    scope: dict[str, Any] = field(default_factory=dict)
    #: Who computes an entry here (the run's record name), written into the entry.
    owner: str = ""
    #: Every entry asked for by this fold, in order (recorded as ``shared_work``).
    uses: list[SharedUse] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def key(self, kind: str, fields: dict[str, Any]) -> str:
        return content_hash({"kind": kind, "scope": self.scope, "fields": fields})

    def fetch(self, kind: str, fields: dict[str, Any], compute: Callable[[], Value]) -> Value:
        """The value of ``compute()`` for (``kind``, ``fields``) in this scope: read from the
        store when a run computed it before, else computed here and stored. ``fields`` must
        name everything the value depends on besides the scope; ``compute`` returns named
        CPU tensors and JSON-able metadata."""
        if self.root is None:
            return compute()
        key = self.key(kind, fields)
        folder = self.root / _safe(kind)
        entry = folder / key
        with _exclusive(folder / f"{key}.lock"):
            if (entry / ENTRY_FILE).exists():
                try:
                    value, facts = _read(entry)
                except Exception:  # noqa: BLE001 - a damaged entry (a file deleted by hand) is computed again
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    self.uses.append(SharedUse(kind, key, True, facts.get("created_by"), facts.get("compute_s")))
                    return value
            started = time.perf_counter()
            tensors, meta = compute()
            seconds = round(time.perf_counter() - started, 3)
            _write(entry, tensors, {"kind": kind, "scope": self.scope, "fields": fields, "created_by": self.owner,
                                    "compute_s": seconds, "meta": meta})
        self.uses.append(SharedUse(kind, key, False, self.owner, seconds))
        return tensors, meta

    def records(self) -> list[dict[str, Any]]:
        """The uses as plain data, for the fold's record."""
        from dataclasses import asdict

        return [asdict(use) for use in self.uses]


def _safe(kind: str) -> str:
    return "".join(character if character.isalnum() or character in "-_." else "-" for character in kind)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (blocking: a second process waits for the writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, the rename still keeps entries whole
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write(entry: Path, tensors: dict[str, torch.Tensor], facts: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    staging = entry.with_name(f".{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, str(staging / TENSORS_FILE))
    (staging / ENTRY_FILE).write_text(json.dumps(facts, indent=1, sort_keys=True, default=str))
    try:
        staging.rename(entry)
    except OSError:  # another process's entry landed first (no lock on this platform): keep it
        shutil.rmtree(staging, ignore_errors=True)


def _read(entry: Path) -> tuple[Value, dict[str, Any]]:
    from safetensors.torch import load_file

    facts = json.loads((entry / ENTRY_FILE).read_text())
    return (load_file(str(entry / TENSORS_FILE)), facts.get("meta", {})), facts

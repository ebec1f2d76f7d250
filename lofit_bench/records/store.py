"""Run records on disk: one JSON file per (method, task, seed), written atomically.

A record is the only thing reports read, so it carries everything needed to interpret a
number: configs, budget, model, split sizes and ids, metrics, parameters, memory, times and
library versions. Its fields are typed in :mod:`lofit_bench.records.record`; this module writes
records (validated first) and reads them back (validated and migrated, or reported).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from lofit_bench.errors import DiskFull, UserError, warn
from lofit_bench.records.record import RECORD_SCHEMA, RecordError, RunRecord, parse_record
from lofit_bench.records.run_folder import RunFolder

__all__ = ["RECORD_SCHEMA", "RunRecord", "load_records", "read_record", "save_record"]

#: Distributions whose versions every record keeps (None when not installed).
ENVIRONMENT_PACKAGES = (
    "lofit-bench", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "numpy",
    "scikit-learn", "safetensors", "tokenizers", "pluggy", "lm_eval", "optuna",
)
#: What a run's result depends on in the source tree: a change here makes the commit "dirty";
#: files elsewhere (reports, run folders written into the checkout) do not.
SOURCE_PATHS = ("lofit_bench", "methods", "tasks", "pyproject.toml")


def run_key(identity: dict[str, Any]) -> str:
    """A stable hash of everything that changes a run's result (see ``lofit_bench.sweep.identity.run_identity``):
    resume skips a run only when a finished record has the same key."""
    payload = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file.

    The JSON is strict (no ``NaN``/``Infinity`` literals, which strict readers reject): a
    non-finite number is written as ``null``, and when the payload is a mapping its places are
    listed under ``NON_FINITE_KEY`` with the value they had (``"metrics.mc2": "NaN"``).
    """
    write_text_atomic(path, json_text(payload))


def json_text(payload: Any) -> str:
    """``payload`` as the strict JSON text :func:`write_json_atomic` writes (non-finite numbers
    as ``null``, listed under ``NON_FINITE_KEY``), newline-terminated."""
    found: dict[str, str] = {}
    payload = finite_json(payload, "", found)
    if found and isinstance(payload, dict):
        payload[NON_FINITE_KEY] = found
    return json.dumps(payload, indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n"


NON_FINITE_KEY = "non_finite"


def finite_json(value: Any, where: str, found: dict[str, str]) -> Any:
    """A copy of ``value`` with every non-finite float replaced by None (noted in ``found``)."""
    if isinstance(value, dict):
        return {key: finite_json(item, f"{where}.{key}" if where else str(key), found) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item, f"{where}[{index}]", found) for index, item in enumerate(value)]
    if not isinstance(value, float | int | str | bool | type(None)) and hasattr(value, "item"):
        try:
            value = value.item()  # numpy / torch scalars
        except (ValueError, RuntimeError):
            return value
    if isinstance(value, float) and not math.isfinite(value):
        found[where] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return None
    return value


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a
    failure midway leaves the old file (or none), never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; records and reports are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass
class RecordFolder:
    """The records of a folder, and the files in it that are not records this version reads."""

    records: list[RunRecord]
    #: (file, why it was left out), in file order.
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def read_record_folder(runs_dir: Path) -> RecordFolder:
    """Every record under ``runs_dir`` (its ``records/`` folder or the folder itself).

    Reading never fails as a whole: a file that is not a record lofit-bench can read
    (unreadable, not UTF-8, not JSON, not a valid record, another schema) is named in one
    warning and listed in ``skipped``, so a report can say what it left out.
    """
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is not a folder; pass the --out folder of a `lofit-bench run`")
    folder = RecordFolder([])
    seen: dict[str, Path] = {}
    for path in iter_record_files(runs_dir):
        record, problem = read_record(path)
        if record is None:
            warn(f"skipped {path}: {problem}")
            folder.skipped.append((path, problem))
            continue
        if record.key in seen:  # a copy under another name is the same run, never a second seed
            problem = f"the same run (key {record.key}) as {seen[record.key].name}; a copy counts once"
            warn(f"skipped {path}: {problem}")
            folder.skipped.append((path, problem))
            continue
        seen[record.key] = path
        folder.records.append(record)
    return folder


def load_records(runs_dir: Path) -> list[RunRecord]:
    """The readable records of ``runs_dir`` (see :func:`read_record_folder`)."""
    return read_record_folder(runs_dir).records


def read_record(path: Path) -> tuple[RunRecord | None, str]:
    """(record, "") or (None, why it is not a readable record of this schema)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    except UnicodeDecodeError:
        return None, "not UTF-8 text, so not a run record"
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error}); delete it and rerun that run"
    found: dict[str, str] = {}
    finite_json(payload, "", found)
    if found:  # lofit-bench writes null there: the file was edited, or written by another tool
        listed = ", ".join(f"{where} = {value}" for where, value in list(found.items())[:3])
        return None, (
            f"it holds {len(found)} NaN or Infinity literal(s) ({listed}), which lofit-bench never writes "
            "(it writes null and lists them under non_finite): edited or written by another tool; rerun that run"
        )
    try:
        record = parse_record(payload)
    except RecordError as error:
        return None, str(error)
    record.source = path
    return record, ""


def save_record(path: Path, record: RunRecord) -> Path | None:
    """Write ``record`` to ``path``, validated first; when writing fails, keep the result: say
    so on one line of stderr (even with --quiet) and write it to a fallback folder (or print
    it). Returns where it went (None: printed only). A record that does not validate (a bug:
    the runner fills typed fields) is still written, so no result is lost, with a warning
    that names the problem; readers will then skip it and say why.
    Raises :class:`~lofit_bench.errors.DiskFull` after saving what it could when the disk is full."""
    payload = record.to_json()
    try:
        parse_record(payload)  # what a reader will check
    except RecordError as error:
        warn(f"the record {path.name} does not match the record schema ({error}); it is written anyway")
    try:
        write_json_atomic(path, payload)
        return path
    except OSError as error:
        failure = error
    fallback = Path(tempfile.gettempdir()) / "lofit-bench-unsaved" / path.name
    try:
        write_json_atomic(fallback, payload)
        where: Path | None = fallback
        kept = f"saved it to {fallback} instead; move it into {path.parent} to keep it"
    except OSError:
        where = None
        found: dict[str, str] = {}
        text = json.dumps(finite_json(payload, "", found), default=_json_default, allow_nan=False)
        print(f"lofit-bench: unsaved record {path.name}: {text}", file=sys.stderr)
        kept = "printed it on stderr (one line starting 'lofit-bench: unsaved record')"
    reason = failure.strerror or str(failure)
    print(f"lofit-bench: warning: could not write record {path}: {reason}; {kept}", file=sys.stderr)
    if failure.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFull(
            f"the disk is full (writing {path}); the sweep stopped. Free space and rerun the same "
            "command: finished runs are skipped and the rest resume"
        )
    return where


def iter_record_files(runs_dir: Path) -> Iterator[Path]:
    records = RunFolder(runs_dir).records
    folder = records if records.is_dir() else runs_dir
    yield from sorted(folder.glob("*.json"))


def environment() -> dict[str, Any]:
    """Library versions, platform and the lofit-bench git commit, for reproducibility."""
    versions = {}
    for package in ENVIRONMENT_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "versions": versions,
        **_git_state(),
    }


#: The module each recorded distribution is imported as (where the names differ).
IMPORT_NAMES = {"lofit-bench": "lofit_bench", "scikit-learn": "sklearn"}


def imported_libraries() -> list[str]:
    """The recorded distributions this process imported: the libraries that took part in the
    run (a report warns about version differences only among those)."""
    import sys

    return [package for package in ENVIRONMENT_PACKAGES if IMPORT_NAMES.get(package, package) in sys.modules]


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def _git_state() -> dict[str, Any]:
    """The checkout's commit (``-dirty`` appended) and whether the code differs from it: only
    :data:`SOURCE_PATHS` count, so a sweep writing its records into the checkout never makes
    its own later runs look dirty. Both None outside a git checkout (an installed package)."""
    source = Path(__file__).resolve().parents[2]  # the checkout: lofit_bench/records/store.py -> repository root
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=False
        )
        if result.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHS],
            cwd=source, capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    dirty = bool(changed)
    return {"git_commit": result.stdout.strip() + ("-dirty" if dirty else ""), "git_dirty": dirty}

"""Run records: one JSON file per (method, task, seed), written atomically.

A record is the only thing reports read, so it carries everything needed to interpret a
number: configs, budget, model, split sizes and ids, metrics, parameters, memory, times and
library versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from lofit_bench.errors import UserError

RECORD_SCHEMA = 1
RECORDS_FOLDER = "records"
#: Distributions whose versions every record keeps (None when not installed).
ENVIRONMENT_PACKAGES = (
    "lofit-bench", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "numpy",
    "scikit-learn", "safetensors", "tokenizers", "pluggy", "lm_eval",
)


def run_key(identity: dict[str, Any]) -> str:
    """A stable hash of everything that changes a run's result (see ``runner.run_identity``):
    resume skips a run only when a finished record has the same key."""
    payload = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def record_path(out_dir: Path, method: str, task: str, seed: int, key: str) -> Path:
    return out_dir / RECORDS_FOLDER / f"{method}--{task}--seed{seed}--{key[:8]}.json"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2, sort_keys=False, default=_json_default)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; records are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
        os.chmod(temporary, 0o644)
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


def load_records(runs_dir: Path) -> list[dict[str, Any]]:
    """Every record under ``runs_dir`` (its ``records/`` folder or the folder itself)."""
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is not a folder; pass the --out folder of a `lofit-bench run`")
    records = []
    for path in iter_record_files(runs_dir):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise UserError(f"{path} is not valid JSON ({error}); delete it and rerun that run") from None
        if not isinstance(record, dict) or record.get("schema") != RECORD_SCHEMA:
            continue
        record["_path"] = str(path)
        records.append(record)
    return records


def iter_record_files(runs_dir: Path) -> Iterator[Path]:
    folder = runs_dir / RECORDS_FOLDER if (runs_dir / RECORDS_FOLDER).is_dir() else runs_dir
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
        "git_commit": _git_commit(),
    }


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=source, capture_output=True, text=True, check=False
    ).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")

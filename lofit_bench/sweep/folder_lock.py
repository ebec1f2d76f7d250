"""An advisory lock on a sweep's ``--out`` folder: two sweeps never write one folder at once.

Without it, two sweeps on the same folder both see a run as not done, both run it, and the
last writer wins. The lock is ``flock`` on ``OUT/.lofit-bench.lock``, which also holds who took
it (pid, host, start time, command) so the refusal can name the other process. The kernel
drops the lock when its process dies, so a killed sweep (``kill -9``) never leaves a stale
lock behind; the file itself stays and is harmless. Re-entrant within a process (the CLI
takes it before loading the model, :func:`~lofit_bench.sweep.runner.run_sweep` takes it again).
Where ``fcntl`` does not exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lofit_bench.errors import UserError
from lofit_bench.records.run_folder import RunFolder

#: resolved folder -> [open lock file, depth] for the locks this process holds.
_held: dict[Path, list] = {}


@contextmanager
def out_folder_lock(out: RunFolder | Path) -> Iterator[None]:
    """Hold the lock on the run folder (refusing with a UserError naming the holder when taken)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    run_folder = RunFolder.of(out)
    folder = run_folder.root.resolve()
    if folder in _held:
        _held[folder][1] += 1
        try:
            yield
        finally:
            _held[folder][1] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RunFolder.LOCK
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    except OSError as error:
        raise UserError(f"cannot create the lock file {path}: {error.strerror or error}; choose another --out") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = _describe_holder(handle.read())
        handle.close()
        raise UserError(
            f"another sweep is writing to {run_folder} ({holder}); wait for it to finish, or use another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv[:1] + sys.argv[1:])[:500],
    }))
    handle.flush()
    _held[folder] = [handle, 1]
    try:
        yield
    finally:
        del _held[folder]
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started_at']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


def holding_out_folder_lock(function):
    """Decorate ``function(specs, out, ...)`` to run holding the lock on the run folder ``out``."""
    import functools
    import inspect

    signature = inspect.signature(function)

    @functools.wraps(function)
    def locked(*args, **kwargs):
        with out_folder_lock(signature.bind(*args, **kwargs).arguments["out"]):
            return function(*args, **kwargs)

    return locked

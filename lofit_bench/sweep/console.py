"""The sweep's console: one line per finished run and, on a terminal, one live status line.

A run reports its phase (``load_model``, ``fit: head_selection``, ``evaluate`` ...) by writing
a small status file under ``OUT/.status/``; the sweep's process reads those files to draw
``[3/12 done] lofit on clutrr: fit: bias_tuning 2:13 | lora on mquake: evaluate 0:40 | ETA 6 min``.
Child processes write their own output (library progress bars, warnings, logs) into
``OUT/logs/<run>.log`` instead of the terminal unless ``--verbose`` is given.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from lofit_bench.records.run_folder import RunFolder
from lofit_bench.records.store import write_text_atomic

VERBOSE_VARIABLE = "LOFIT_BENCH_VERBOSE"

#: Environment that keeps libraries' own progress bars and info logs off the console.
QUIET_LIBRARIES = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def verbose() -> bool:
    return bool(os.environ.get(VERBOSE_VARIABLE))


def quiet_libraries(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Silence library bars and logs in this process and the processes it starts, unless
    ``--verbose`` asked for them (values the user set are kept)."""
    if verbose():
        return
    for name, value in QUIET_LIBRARIES.items():
        environ.setdefault(name, value)


def redirect_output(log_file: Path) -> None:
    """Send this process's stdout and stderr (Python's and native code's) to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    descriptor = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)


# -- a run's side -----------------------------------------------------------------------------
class RunStatus:
    """Where one run tells its sweep which phase it is in."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.started: float | None = None

    def set(self, phase: str) -> None:
        if self.path is None:
            return
        now = time.time()
        self.started = self.started or now
        try:
            write_text_atomic(self.path, json.dumps({"phase": phase, "since": now, "started": self.started, "pid": os.getpid()}))
        except OSError:  # the console is a courtesy; a run never fails for it
            self.path = None


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- the sweep's side ------------------------------------------------------------------------
def cost_model(took: list[tuple[float, float]]) -> tuple[float, float | None] | None:
    """(a, b) of ``seconds = a + b * cost`` fitted to finished runs' (cost, seconds) by least
    squares, both kept >= 0; b None when every finished run had cost 0 (nothing is known yet of
    what a unit of cost takes). None when nothing finished."""
    if not took:
        return None
    costs = [cost for cost, _ in took]
    seconds = [value for _, value in took]
    mean_cost, mean_seconds = sum(costs) / len(costs), sum(seconds) / len(seconds)
    spread = sum((cost - mean_cost) ** 2 for cost in costs)
    if spread == 0:
        return (mean_seconds, None) if mean_cost == 0 else (0.0, mean_seconds / mean_cost)
    b = sum((cost - mean_cost) * (value - mean_seconds) for cost, value in took) / spread
    a = mean_seconds - b * mean_cost
    if b < 0:
        return mean_seconds, 0.0
    if a < 0:
        return 0.0, sum(cost * value for cost, value in took) / sum(cost * cost for cost in costs)
    return a, b


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class SweepConsole:
    """Prints finished runs as lines and keeps a live status line on a terminal."""

    def __init__(
        self,
        total: int,
        folder: RunFolder,
        echo: Callable[[str], None] = print,
        stream: TextIO | None = None,
        live: bool | None = None,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        costs: dict[str, float] | None = None,
        jobs: int = 1,
    ) -> None:
        self.total = total
        #: record stem -> the run's expected cost (:func:`lofit_bench.sweep.schedule.expected_cost`), for the ETA.
        self.costs = dict(costs or {})
        self.jobs = max(1, jobs)
        self.took: list[tuple[float, float]] = []  # (expected cost, seconds) of each run finished here
        self.folder = folder
        self.echo = echo
        self.stream = stream or sys.stderr
        self.live = (self.stream.isatty() and not os.environ.get("CI")) if live is None else live
        self.refresh_s = refresh_s
        self.clock = clock
        self.started = clock()
        self.done = 0
        self.ran = 0  # finished here, not skipped
        self.running: dict[str, str] = {}  # record stem -> label
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False

    # -- events
    def skipped(self, label: str, text: str) -> None:
        self.done += 1
        self._print(f"[{self.done}/{self.total}] {label}: {text}")

    def submitted(self, stem: str, label: str) -> None:
        with self._lock:
            self.running[stem] = label

    def finished(self, stem: str, label: str, text: str, seconds: float | None = None) -> None:
        """A run ended; ``seconds``: what it took (its record's total; None for a failed run)."""
        with self._lock:
            self.running.pop(stem, None)
            if seconds is not None and stem in self.costs:
                self.took.append((self.costs[stem], seconds))
        self.done += 1
        self.ran += 1
        eta = self.eta()
        suffix = f" | ETA {_minutes(eta)}" if eta is not None and self.done < self.total else ""
        self._print(f"[{self.done}/{self.total}] {label}: {text}{suffix}")
        self.folder.status(stem).unlink(missing_ok=True)

    def eta(self) -> float | None:
        """Seconds left; None before the first run ends.

        With the runs' expected costs (the schedule's, :mod:`lofit_bench.sweep.schedule`): each run
        left is expected to take ``a + b * cost`` seconds, ``a`` and ``b`` fitted to what the
        finished runs actually took, a running run what is left of that; their sum is shared by
        the ``jobs`` running at a time. Runs of very different costs (a zero-shot row next to a
        tuned LoFiT) then no longer count the same, as they do at the plain pace (wall time per
        finished run x runs left), which is the fallback when the costs are not known or the
        finished runs say nothing yet about the cost of those left.
        """
        if not self.ran:
            return None
        pace = (self.clock() - self.started) / self.ran * (self.total - self.done)
        with self._lock:
            running = dict(self.running)
            took = list(self.took)
        left = [stem for stem in self.costs if stem in running]
        if not took or any(stem not in self.costs for stem in running):
            return pace
        model = cost_model(took)
        if model is None or (model[1] is None and any(self.costs[stem] > 0 for stem in left)):
            return pace
        a, b = model
        now = time.time()
        seconds = 0.0
        for stem in left:
            expected = a + (b or 0.0) * self.costs[stem]
            status = read_status(self.folder.status(stem))
            started = float(status.get("started", now)) if status else now
            seconds += max(0.0, expected - (now - started))
        return seconds / min(self.jobs, max(1, len(left)))

    # -- the live line
    def status_line(self) -> str:
        with self._lock:
            running = dict(self.running)
        parts = []
        now = time.time()
        for stem, label in running.items():
            status = read_status(self.folder.status(stem))
            if status is None:
                continue  # submitted, not started yet (waiting for a slot)
            parts.append(f"{label}: {status.get('phase', '?')} {_clock(now - float(status.get('since', now)))}")
        eta = self.eta()
        parts.append(f"ETA {_minutes(eta)}" if eta is not None else "ETA after the first run")
        return f"[{self.done}/{self.total} done] " + " | ".join(parts)

    def __enter__(self) -> SweepConsole:
        if self.live:
            self._thread = threading.Thread(target=self._refresh, name="lofit-bench-console", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.refresh_s)
        with self._lock:
            self._clear()

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            line = self.status_line()
            width = os.get_terminal_size(self.stream.fileno()).columns if self.stream.isatty() else 200
            with self._lock:
                self.stream.write("\r\033[K" + line[: max(20, width - 1)])
                self.stream.flush()
                self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False

    def _print(self, line: str) -> None:
        with self._lock:
            self._clear()
            self.echo(line)

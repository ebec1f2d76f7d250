"""Stopping a sweep from outside: Ctrl-C, SIGTERM and ``kill -9`` of the real command, with real
run processes (the ``process`` executor on the tiny model).

Ctrl-C is sent to the sweep's whole process group, as a terminal does, so the runs' processes
get it too, at the moments that used to print tracebacks: before any run, while a run's process
is still importing, and while the next run's process imports, twice in a row. The moments are
found by watching the run folder and the process table (``/proc``), never by sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.usefixtures("builtin_plugins_only"),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc"),
]

TINY_SWEEP = ["run", "--methods", "zero-shot", "--tasks", "mquake", "--model", "tiny-random-llama", "--budget", "smoke",
              "--budget-set", "eval_examples=2", "--seeds", "1,2,3"]
#: The README's promise: a run's process stops within 2 s of its sweep being killed.
ORPHAN_SECONDS = 2.0


class Sweep:
    """``lofit-bench run`` in its own session (its own process group, as a terminal's job)."""

    def __init__(self, tmp_path: Path) -> None:
        self.out = tmp_path / "out"
        self.stderr_file = tmp_path / "stderr.txt"
        environ = dict(os.environ, OMP_NUM_THREADS="1")
        with open(tmp_path / "stdout.txt", "w") as stdout, open(self.stderr_file, "w") as stderr:
            self.process = subprocess.Popen([sys.executable, "-m", "lofit_bench", *TINY_SWEEP, "--out", str(self.out)],
                                            stdout=stdout, stderr=stderr, start_new_session=True, env=environ)
        self.workers_seen: set[int] = set()

    @property
    def stderr(self) -> str:
        return self.stderr_file.read_text()

    def records(self) -> list[Path]:
        return sorted((self.out / "records").glob("*.json"))

    def descendants(self) -> set[int]:
        return descendants(self.process.pid)

    def new_worker(self) -> int | None:
        """A run's process started since the last call (the pool's spawned interpreter)."""
        for pid in self.descendants():
            if pid not in self.workers_seen and "spawn_main" in command_line(pid):
                self.workers_seen.add(pid)
                return pid
        return None

    def wait_for(self, condition: Callable[[], object], what: str) -> None:
        deadline = time.monotonic() + 300
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"the sweep ended (exit {self.process.returncode}) before {what}: {self.stderr}")
            assert time.monotonic() < deadline, f"never saw {what}"
            time.sleep(0.01)

    def ctrl_c(self) -> None:
        # Not in the milliseconds in which the sweep starts a run's process with SIGINT ignored
        # (a Ctrl-C then is lost by design; see executors.children_ignore_interrupts).
        self.wait_for(lambda: not ignores_sigint(self.process.pid), "the sweep take Ctrl-C")
        os.killpg(self.process.pid, signal.SIGINT)

    def finish(self) -> int:
        try:
            return self.process.wait(timeout=120)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def descendants(root: int) -> set[int]:
    parents = {int(entry.name): parent_of(int(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit()}
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def ignores_sigint(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def still_alive_after(pids: set[int], seconds: float) -> set[int]:
    """The processes of ``pids`` still running after up to ``seconds`` of polling."""
    deadline = time.monotonic() + seconds
    while (left := {pid for pid in pids if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def assert_stopped_cleanly(sweep: Sweep, code: int, expected_code: int, line: str) -> None:
    stderr = sweep.stderr
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr
    assert code == expected_code, stderr
    assert [text for text in stderr.splitlines() if text.startswith("lofit-bench:")] == [line], stderr


INTERRUPTED = "lofit-bench: interrupted; finished runs are saved in their records"


@pytest.mark.parametrize("moment", ["before any run", "while a run's process imports", "while the next run's process imports, twice"])
def test_ctrl_c_at_any_moment_is_one_line_exit_130_and_no_process_left(tmp_path, moment):
    sweep = Sweep(tmp_path)
    if moment == "before any run":
        sweep.wait_for(lambda: (sweep.out / ".lofit-bench.lock").exists(), "the sweep take its folder")
    else:
        sweep.wait_for(sweep.new_worker, "a run's process")
        if moment.startswith("while the next"):
            sweep.wait_for(sweep.records, "a finished run")
            sweep.wait_for(sweep.new_worker, "the next run's process")
    processes = sweep.descendants()
    sweep.ctrl_c()
    if moment.endswith("twice"):
        time.sleep(0.3)  # a second Ctrl-C during the cleanup of the first
        os.killpg(sweep.process.pid, signal.SIGINT)
    code = sweep.finish()
    assert_stopped_cleanly(sweep, code, 130, INTERRUPTED)
    assert not still_alive_after(processes, ORPHAN_SECONDS)
    if moment.startswith("while the next"):
        assert len(sweep.records()) >= 1  # finished runs are kept


def test_sigterm_stops_like_ctrl_c_keeping_finished_records_and_ending_the_runs(tmp_path):
    sweep = Sweep(tmp_path)
    sweep.wait_for(sweep.records, "a finished run")
    sweep.wait_for(sweep.new_worker, "the next run's process")
    finished = {path: path.read_bytes() for path in sweep.records()}
    processes = sweep.descendants()
    sweep.process.send_signal(signal.SIGTERM)  # `kill PID`: the command alone, not its group
    code = sweep.finish()
    assert_stopped_cleanly(sweep, code, 143, "lofit-bench: stopped by SIGTERM; finished runs are saved in their records")
    assert not still_alive_after(processes, ORPHAN_SECONDS)
    assert {path: path.read_bytes() for path in finished} == finished


def test_after_kill_9_of_the_sweep_no_run_process_or_resource_tracker_is_left(tmp_path):
    sweep = Sweep(tmp_path)
    sweep.wait_for(sweep.new_worker, "a run's process")
    processes = sweep.descendants()
    assert any("resource_tracker" in command_line(pid) for pid in processes)  # the one that used to linger
    sweep.process.kill()
    sweep.finish()
    assert not still_alive_after(processes, ORPHAN_SECONDS), [command_line(pid) for pid in processes if alive(pid)]

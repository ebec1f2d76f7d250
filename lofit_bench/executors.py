"""Executors: where the runs of a sweep execute.

Every executor runs each (method, task, seed) in a fresh child process by default, so one
run's crash (an exception, a NaN, running out of memory, a plugin's segfault) becomes a
failed record while the sweep goes on, and so each run's peak memory is its own. Workers
return the record; the parent writes it, so remote workers need no shared filesystem.

- ``inline``: in this process (debugging, tests). No crash isolation.
- ``process`` (default): one child process per run; ``--jobs N`` runs N at a time, each
  pinned to its own GPU when there are several, and on CPU each given its share of the
  cores as torch threads (unless ``OMP_NUM_THREADS`` says otherwise): N runs fighting over
  every core are several times slower than N runs with a share each. A child whose parent
  sweep dies (killed, Ctrl-C) stops too, instead of computing a result nobody will write.
- ``ray``: Ray tasks on a local or remote cluster (``pip install lofit-bench[ray]``).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from lofit_bench.errors import UserError

EXECUTORS = ("process", "inline", "ray")

Record = dict[str, Any]


def _run_spec(spec: Any, out_dir: str, progress: bool) -> Record:
    """Executed in the worker: one run, returning its record (never raising for run errors)."""
    from lofit_bench.runner import execute_run

    return execute_run(spec, Path(out_dir), progress=progress)


def _run_spec_in_child(spec: Any, out_dir: str, progress: bool, threads: int | None) -> Record:
    """The process executor's worker: :func:`_run_spec` with a thread share and a parent watch."""
    _exit_with_parent(os.getppid())
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return _run_spec(spec, out_dir, progress)


def _exit_with_parent(parent: int, interval: float = 2.0) -> None:
    """End this process when ``parent`` is gone (its sweep was killed): the record has no reader."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="lofit-bench-parent-watch", daemon=True).start()


def threads_per_job(jobs: int, cpu_count: int | None = None, environ: dict[str, str] | None = None) -> int | None:
    """torch threads for each of ``jobs`` concurrent CPU runs; None: leave torch's default.

    The user's ``OMP_NUM_THREADS`` wins; one job keeps torch's default (every core).
    """
    environ = os.environ if environ is None else environ
    if jobs <= 1 or environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (cpu_count or os.cpu_count() or 1) // jobs)


def crashed_record(spec: Any, message: str) -> Record:
    """The record of a run whose process died before it could report (killed, segfault, OOM)."""
    from lofit_bench.runner import empty_record

    record = empty_record(spec)
    record["status"] = "failed"
    record["error"] = {"type": "WorkerCrashed", "message": message, "traceback": ""}
    return record


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def _place(spec: Any, slot: int, gpus: int) -> Any:
    """Pin a run to one GPU (round robin) when several are visible and the device is 'auto'."""
    if gpus > 1 and spec.model.device == "auto":
        return dataclasses.replace(spec, model=dataclasses.replace(spec.model, device=f"cuda:{slot % gpus}"))
    return spec


def execute(
    specs: list[Any],
    out_dir: Path,
    executor: str = "process",
    jobs: int = 1,
    progress: bool = True,
    ray_address: str | None = None,
) -> Iterator[tuple[Any, Record]]:
    """Yield (spec, record) as runs finish, in completion order."""
    if executor == "inline":
        for spec in specs:
            yield spec, _run_spec(spec, str(out_dir), progress)
    elif executor == "process":
        yield from _execute_in_processes(specs, out_dir, max(1, jobs), progress)
    elif executor == "ray":
        yield from _execute_on_ray(specs, out_dir, max(1, jobs), progress, ray_address)
    else:
        raise UserError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")


def _execute_in_processes(specs: list[Any], out_dir: Path, jobs: int, progress: bool) -> Iterator[tuple[Any, Record]]:
    gpus = _gpu_count()
    threads = threads_per_job(jobs) if gpus == 0 else None
    context = multiprocessing.get_context("spawn")
    pending = list(enumerate(specs))
    running: dict[Future, Any] = {}
    # One pool per run (max_tasks_per_child=1 would do too, but a crash breaks a whole pool):
    # a killed child then fails only its own run.
    pools: dict[Future, ProcessPoolExecutor] = {}

    def submit() -> None:
        slot, spec = pending.pop(0)
        spec = _place(spec, slot, gpus)
        pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        future = pool.submit(_run_spec_in_child, spec, str(out_dir), progress and jobs == 1, threads)
        running[future] = spec
        pools[future] = pool

    try:
        while pending or running:
            while pending and len(running) < jobs:
                submit()
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                spec = running.pop(future)
                pool = pools.pop(future)
                try:
                    record = future.result()
                except BrokenProcessPool:
                    record = crashed_record(spec, "the run's process died without reporting (killed, out of memory or a crash in native code)")
                except Exception as error:  # noqa: BLE001 - e.g. an unpicklable result
                    record = crashed_record(spec, f"{type(error).__name__}: {error}")
                pool.shutdown(wait=True)
                yield spec, record
    finally:
        for pool in pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


def _execute_on_ray(
    specs: list[Any], out_dir: Path, jobs: int, progress: bool, address: str | None
) -> Iterator[tuple[Any, Record]]:
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install 'lofit-bench[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    gpus_per_run = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    remote_run: Callable = ray.remote(num_gpus=gpus_per_run, max_retries=0)(_run_spec)
    try:
        in_flight: dict[Any, Any] = {}
        pending = list(specs)
        while pending or in_flight:
            while pending and len(in_flight) < jobs:
                spec = pending.pop(0)
                in_flight[remote_run.remote(spec, str(out_dir), False)] = spec
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for reference in done:
                spec = in_flight.pop(reference)
                try:
                    record = ray.get(reference)
                except Exception as error:  # noqa: BLE001 - worker died or task failed in Ray itself
                    record = crashed_record(spec, f"Ray task failed: {type(error).__name__}: {str(error).splitlines()[0]}")
                yield spec, record
    finally:
        if started_here:
            ray.shutdown()

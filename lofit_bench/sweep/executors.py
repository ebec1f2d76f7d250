"""Executors: where the runs of a sweep execute.

Every executor runs each (method, task, seed) in a fresh child process by default, so one
run's crash (an exception, a NaN, running out of memory, a plugin's segfault) becomes a
failed record while the sweep goes on, and so each run's peak memory is its own. Workers
return the record; the parent writes it, so remote workers need no shared filesystem.

- ``inline``: in this process (debugging, tests). No crash isolation.
- ``process`` (default): one child process per run; ``--jobs N`` runs N at a time. On a GPU
  machine each run takes ``gpus_per_run`` GPUs from a queue of free ones when it starts and
  gives them back when it ends (finished, failed or crashed), and its process sees only those
  (``CUDA_VISIBLE_DEVICES``, set before torch can initialise CUDA there), so inside the run
  they are ``cuda:0..k-1`` and nothing can land on another run's GPU; a CPU-only run sees
  none. The parent never initialises CUDA: it only counts the GPUs. On CPU each run is given
  its share of the cores as torch threads (unless ``OMP_NUM_THREADS`` says otherwise): N runs
  fighting over every core are several times slower than N runs with a share each. A child
  ignores SIGINT (a terminal's Ctrl-C reaches the whole process group): the sweep ends its
  children itself when interrupted (Ctrl-C, SIGTERM), and a child whose sweep died
  (``kill -9``) notices within a second and stops, instead of computing a result nobody
  will write.
- ``ray``: Ray tasks on a local or remote cluster (``pip install lofit-bench[ray]``), each
  asking Ray for ``gpus_per_run`` GPUs when the cluster has GPUs (Ray then sets the task's
  ``CUDA_VISIBLE_DEVICES`` itself).

Each is an :class:`Executor` registered through the ``register_executors`` hook, the same hook
a plugin uses to add its own (a Slurm or Kubernetes executor): it receives the runs and yields
each one's record, computed by :func:`run_in_worker` wherever the executor runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, ClassVar

from lofit_bench import hookimpl
from lofit_bench.errors import UserError
from lofit_bench.records.record import Placement, RunError, RunRecord

if TYPE_CHECKING:
    from lofit_bench.records.run_folder import RunFolder
    from lofit_bench.sweep.spec import RunSpec

Record = RunRecord


@dataclasses.dataclass(frozen=True)
class ExecutorOptions:
    """What the sweep tells every executor (the same object whichever executor runs)."""

    jobs: int = 1  # runs at a time, for executors that run several
    progress: bool = True  # the runs' own progress bars (on only where one run owns the terminal)
    address: str | None = None  # a cluster to join (``--ray-address``), for executors that use one
    gpus: Sequence[str] | None = None  # GPUs to hand out (``CUDA_VISIBLE_DEVICES`` entries); None: this machine's


class Executor(ABC):
    """Where the runs of a sweep execute. Subclass, set ``name`` and ``description``, implement
    :meth:`execute`, and register the class through the ``register_executors`` hook.

    An executor never writes records: it yields each run's record and the sweep writes it, so a
    remote executor needs no shared filesystem for records (a run's artefacts and logs go to
    the run folder wherever the run executes).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: Runs share the sweep's own process: no crash isolation, no per-run log file, no parallelism.
    in_process: ClassVar[bool] = False
    #: Executors that take a cluster address (``--ray-address``); others refuse one.
    takes_address: ClassVar[bool] = False

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options

    @abstractmethod
    def execute(self, specs: list[RunSpec], folder: RunFolder) -> Iterator[tuple[RunSpec, Record]]:
        """Yield ``(spec, record)`` for every spec as its run ends, in completion order. A run that
        dies without reporting must still yield a record (:func:`crashed_record`)."""


def run_in_worker(spec: RunSpec, folder: RunFolder, progress: bool = False) -> Record:
    """One run, wherever an executor runs it: its record (never raising for the run's own errors).

    Imported here, not at the top: a child process must set its visible GPUs before the
    modules that bring torch are loaded.
    """
    from lofit_bench.sweep.worker import execute_run

    return execute_run(spec, folder, progress=progress)


def _run_in_child(spec: RunSpec, folder: RunFolder, progress: bool, threads: int | None) -> Record:
    """The process executor's worker: :func:`run_in_worker` with a thread share."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    record = run_in_worker(spec, folder, progress)
    # What this process was shown, read here rather than told by the parent: the proof that it saw its GPUs only.
    record.placement = Placement(cuda_visible_devices=os.environ.get(VISIBLE_DEVICES))
    return record


def _start_child(devices: str | None, parent: int) -> None:
    """Pool initializer, run in the child before any task (hence before torch) is unpickled:
    its visible GPUs, and a watch that ends it when the sweep's process ``parent`` is gone."""
    if devices is not None:
        os.environ[VISIBLE_DEVICES] = devices
    _exit_with_parent(parent)


def _exit_with_parent(parent: int, interval: float = 0.25) -> None:
    """End this process when ``parent`` is gone (its sweep was killed, even with ``kill -9``):
    the record has no reader, and a child waiting for its task would otherwise wait forever
    (it holds the task queue's write end itself) and keep multiprocessing's resource tracker
    alive with it. ``parent`` is passed in, not read here: the sweep may have died before this
    process got this far."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="lofit-bench-parent-watch", daemon=True).start()


@contextlib.contextmanager
def children_ignore_interrupts() -> Iterator[None]:
    """Processes started inside start with SIGINT ignored. Ctrl-C reaches the terminal's whole
    process group; a run's process must not print a ``KeyboardInterrupt`` traceback at any point
    of its life, not even while its interpreter still imports ``site`` or torch, and Python keeps
    an ignored SIGINT it inherits (a handler would not survive ``exec``). The sweep's process
    ends its children itself (:func:`_end_workers`). A Ctrl-C in the few milliseconds of a
    process start is lost (press it again); off the main thread this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _end_workers(process_pool: ProcessPoolExecutor) -> None:
    """Terminate a pool's worker processes and wait for them: ``shutdown()`` alone would let a
    running run compute on for a result nobody will write (its process ignores SIGINT)."""
    terminate = getattr(process_pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
    else:
        for process in list((process_pool._processes or {}).values()):  # noqa: SLF001 - no public way before 3.14
            process.terminate()
    process_pool.shutdown(wait=True, cancel_futures=True)


def threads_per_job(jobs: int, cpu_count: int | None = None, environ: dict[str, str] | None = None) -> int | None:
    """torch threads for each of ``jobs`` concurrent CPU runs; None: leave torch's default.

    The user's ``OMP_NUM_THREADS`` wins; one job keeps torch's default (every core).
    """
    environ = os.environ if environ is None else environ
    if jobs <= 1 or environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (cpu_count or os.cpu_count() or 1) // jobs)


def crashed_record(spec: RunSpec, message: str) -> Record:
    """The record of a run whose process died before it could report (killed, segfault, OOM)."""
    from lofit_bench.sweep.worker import empty_record

    record = empty_record(spec)
    record.status = "failed"
    record.error = RunError(type="WorkerCrashed", message=message)
    return record


VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may hand out, as ``CUDA_VISIBLE_DEVICES`` entries, without
    initialising CUDA (``torch.cuda.is_initialized()`` stays false): the variable's own list
    when it is set, else as many indices as the driver reports."""
    environ = os.environ if environ is None else environ
    if VISIBLE_DEVICES in environ:
        entries = [entry.strip() for entry in environ[VISIBLE_DEVICES].split(",")]
        devices = []
        for entry in entries:
            if not entry or entry.startswith("-"):
                break  # CUDA stops at the first invalid entry
            devices.append(entry)
        return devices
    try:
        import torch

        return [str(index) for index in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken driver means no GPU to hand out
        return []


class GpuPool:
    """The free GPUs of this machine: a run takes some when it starts and gives them back when
    it ends, so a run never waits on a busy GPU while another is idle and no GPU serves two runs."""

    def __init__(self, devices: Sequence[str]) -> None:
        self.devices = list(devices)
        self.free = list(devices)

    def acquire(self, count: int) -> list[str] | None:
        """``count`` free GPUs (lowest first), or None when fewer are free now."""
        if count > len(self.free):
            return None
        taken, self.free = self.free[:count], self.free[count:]
        return taken

    def release(self, devices: Sequence[str]) -> None:
        if len(set(devices)) != len(devices) or any(device in self.free or device not in self.devices for device in devices):
            raise RuntimeError(f"GPUs {list(devices)} were not taken from this pool")
        self.free = [device for device in self.devices if device in self.free or device in devices]


def gpus_wanted(spec: RunSpec, gpus: int) -> int:
    """GPUs a run takes from the pool: ``gpus_per_run`` when its device is ``auto`` or ``cuda``
    and the machine has GPUs, else none (a CPU run, or a run pinned with ``cuda:N``)."""
    if gpus == 0 or spec.model.device not in ("auto", "cuda"):
        return 0
    wanted = getattr(spec.model, "gpus_per_run", 1)
    if wanted > gpus:
        raise UserError(
            f"a run of {spec.model.name} asks for {wanted} GPUs (--gpus-per-run), but {gpus} "
            f"{'is' if gpus == 1 else 'are'} visible"
        )
    return wanted


def _visible_for(spec: RunSpec, devices: list[str]) -> tuple[RunSpec, str | None]:
    """The spec as its child must see it, and that child's ``CUDA_VISIBLE_DEVICES`` (None: as is)."""
    if devices:
        return spec, ",".join(devices)
    device = spec.model.device
    if device.startswith("cuda:"):  # pinned: that GPU alone, which the child calls cuda:0
        return dataclasses.replace(spec, model=dataclasses.replace(spec.model, device="cuda")), device.split(":", 1)[1]
    if device == "cpu":
        return spec, ""  # a CPU run sees no GPU at all
    return spec, None  # no GPU on this machine: nothing to hide


def execute(
    specs: list[RunSpec],
    folder: RunFolder,
    executor: str = "process",
    jobs: int = 1,
    progress: bool = True,
    ray_address: str | None = None,
    gpus: Sequence[str] | None = None,
) -> Iterator[tuple[RunSpec, Record]]:
    """Yield (spec, record) as runs finish, in completion order, on the executor named ``executor``.

    ``gpus`` (the GPUs to hand out, as ``CUDA_VISIBLE_DEVICES`` entries) defaults to this
    machine's; tests pass a fake list.
    """
    options = ExecutorOptions(jobs=max(1, jobs), progress=progress, address=ray_address, gpus=gpus)
    yield from executor_class(executor)(options).execute(specs, folder)


def executor_class(name: str) -> type[Executor]:
    """The registered executor called ``name`` (a UserError listing the known ones otherwise)."""
    from lofit_bench.plugins import get_host

    return get_host().executors.get(name)


class InlineExecutor(Executor):
    name = "inline"
    description = "in this process, one run after another (debugging; no crash isolation)"
    in_process = True

    def execute(self, specs: list[RunSpec], folder: RunFolder) -> Iterator[tuple[RunSpec, Record]]:
        for spec in specs:
            yield spec, run_in_worker(spec, folder, self.options.progress)


class ProcessExecutor(Executor):
    name = "process"
    description = "each run in its own child process, --jobs at a time (the default)"

    def execute(self, specs: list[RunSpec], folder: RunFolder) -> Iterator[tuple[RunSpec, Record]]:
        options = self.options
        yield from _execute_in_processes(specs, folder, options.jobs, options.progress, options.gpus)


class RayExecutor(Executor):
    name = "ray"
    description = "Ray tasks on a local or remote cluster (--ray-address); pip install 'lofit-bench[ray]'"
    takes_address = True

    def execute(self, specs: list[RunSpec], folder: RunFolder) -> Iterator[tuple[RunSpec, Record]]:
        options = self.options
        yield from _execute_on_ray(specs, folder, options.jobs, options.progress, options.address)


@hookimpl
def register_executors(register):
    for executor in (ProcessExecutor, InlineExecutor, RayExecutor):
        register(executor)


def _execute_in_processes(
    specs: list[RunSpec], folder: RunFolder, jobs: int, progress: bool, gpus: Sequence[str] | None = None
) -> Iterator[tuple[RunSpec, Record]]:
    pool = GpuPool(visible_gpus() if gpus is None else gpus)
    wanted = {id(spec): gpus_wanted(spec, len(pool.devices)) for spec in specs}  # too many asked: fail now
    threads = threads_per_job(jobs) if not pool.devices else None
    context = multiprocessing.get_context("spawn")
    pending = list(specs)
    running: dict[Future, tuple[RunSpec, list[str], str | None]] = {}
    # One pool per run (max_tasks_per_child=1 would do too, but a crash breaks a whole pool):
    # a killed child then fails only its own run.
    pools: dict[Future, ProcessPoolExecutor] = {}

    def submit() -> bool:
        """Start the next run if the GPUs it wants are free; False when it must wait for some."""
        devices = pool.acquire(wanted[id(pending[0])])
        if devices is None:
            return False
        spec = pending.pop(0)
        child_spec, visible = _visible_for(spec, devices)
        process_pool = ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_start_child,
                                           initargs=(visible, os.getpid()))
        with children_ignore_interrupts():  # the pool starts its process here
            future = process_pool.submit(_run_in_child, child_spec, folder, progress and jobs == 1, threads)
        running[future] = (spec, devices, visible)
        pools[future] = process_pool
        return True

    try:
        while pending or running:
            while pending and len(running) < jobs and submit():
                pass
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                spec, devices, visible = running.pop(future)
                process_pool = pools.pop(future)
                try:
                    record = future.result()
                except BrokenProcessPool:
                    record = crashed_record(spec, "the run's process died without reporting (killed, out of memory or a crash in native code)")
                    record.placement = Placement(cuda_visible_devices=visible)
                except Exception as error:  # noqa: BLE001 - e.g. an unpicklable result
                    record = crashed_record(spec, f"{type(error).__name__}: {error}")
                    record.placement = Placement(cuda_visible_devices=visible)
                process_pool.shutdown(wait=True)
                pool.release(devices)  # after the process is gone: its CUDA memory is freed
                yield spec, record
    finally:  # interrupted (Ctrl-C, SIGTERM) or stopped (a full disk): end the runs still running
        for process_pool in pools.values():
            _end_workers(process_pool)


def _execute_on_ray(
    specs: list[RunSpec], folder: RunFolder, jobs: int, progress: bool, address: str | None
) -> Iterator[tuple[RunSpec, Record]]:
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
    cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
    wanted = {id(spec): gpus_wanted(spec, cluster_gpus) for spec in specs}
    # Ray hides the other GPUs from a task (its CUDA_VISIBLE_DEVICES) and, for GPU tasks, starts a
    # fresh worker process per task by default, so a run's CUDA memory goes with it.
    remote_run: Callable = ray.remote(max_retries=0)(run_in_worker)
    try:
        in_flight: dict[Any, Any] = {}
        pending = list(specs)
        while pending or in_flight:
            while pending and len(in_flight) < jobs:
                spec = pending.pop(0)
                in_flight[remote_run.options(num_gpus=wanted[id(spec)]).remote(spec, folder, False)] = spec
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

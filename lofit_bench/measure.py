"""Peak memory and wall time, measured the same way for every method.

On CUDA the figure is torch's peak allocated memory above what was allocated when the
measured phase started (the loaded model), and the peak reserved memory, read from the run's
own device(s) by index (never "the current device"), reset at the start of each phase. A
model sharded over several GPUs is measured on each: per device and the sum (``peak_mib`` is
the highest per-phase sum). On CPU it is the process's peak resident set size (sampled) minus
the RSS when the phase started, i.e. after the model was loaded. The two are labelled and
never mixed: a CPU figure is never shown as GPU memory. Each CUDA phase starts with the
allocator's cache emptied, so its reserved figure is its own, not the last phase's cached
blocks. A sharded model's ``peak_mib`` sums peaks reached at different times and says so
(``peak_aggregation``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

MIB = 1024 * 1024
SUM_OF_DEVICE_PEAKS = "sum of per-device peaks (each reached at its own time: an upper bound on the summed allocation)"


def _rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # pragma: no cover - psutil ships with our dependencies
        with open("/proc/self/statm") as handle:
            import os

            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class MemoryMeter:
    """Tracks peak memory over one or more phases of a run.

    ``devices`` are every device the model computes on (several when it is device-mapped);
    only the CUDA ones are measured. ``cuda`` is the counter API, ``torch.cuda`` unless a test
    gives a fake.
    """

    device: str
    devices: list[str] = field(default_factory=list)
    peak_mib: float = 0.0
    reserved_mib: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    reserved_phases: dict[str, float] = field(default_factory=dict)
    per_device: dict[str, dict[str, Any]] = field(default_factory=dict)
    cuda: Any = None

    @property
    def kind(self) -> str:
        return "cuda_peak_allocated" if self.device.startswith("cuda") else "cpu_peak_rss_delta"

    @property
    def cuda_devices(self) -> list[str]:
        return [device for device in (self.devices or [self.device]) if device.startswith("cuda")]

    @contextmanager
    def phase(self, name: str, interval: float = 0.02) -> Iterator[None]:
        if self.device.startswith("cuda"):
            with self._cuda_phase(name):
                yield
            return
        baseline = _rss_bytes()
        highest = [baseline]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(interval):
                highest[0] = max(highest[0], _rss_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield
        finally:
            stop.set()
            sampler.join()
            highest[0] = max(highest[0], _rss_bytes())
            self._note(name, (highest[0] - baseline) / MIB)

    @contextmanager
    def _cuda_phase(self, name: str) -> Iterator[None]:
        cuda = self.cuda or torch.cuda
        devices = [torch.device(device) for device in self.cuda_devices]
        starts = {}
        for device in devices:
            cuda.synchronize(device)
            with cuda.device(device):
                cuda.empty_cache()  # cached blocks of the last phase would count as this one's reserved
            cuda.reset_peak_memory_stats(device)
            starts[device] = cuda.memory_allocated(device)
        try:
            yield
        finally:
            allocated_sum = reserved_sum = 0.0
            for device in devices:
                cuda.synchronize(device)
                allocated = (cuda.max_memory_allocated(device) - starts[device]) / MIB
                reserved = cuda.max_memory_reserved(device) / MIB
                entry = self.per_device.setdefault(
                    str(device), {"peak_allocated_mib": 0.0, "peak_reserved_mib": 0.0, "per_phase_mib": {}, "per_phase_reserved_mib": {}}
                )
                entry["peak_allocated_mib"] = round(max(entry["peak_allocated_mib"], allocated), 1)
                entry["peak_reserved_mib"] = round(max(entry["peak_reserved_mib"], reserved), 1)
                entry["per_phase_mib"][name] = round(max(entry["per_phase_mib"].get(name, 0.0), allocated), 1)
                entry["per_phase_reserved_mib"][name] = round(max(entry["per_phase_reserved_mib"].get(name, 0.0), reserved), 1)
                allocated_sum += allocated
                reserved_sum += reserved
            self.reserved_phases[name] = round(max(self.reserved_phases.get(name, 0.0), reserved_sum), 1)
            self.reserved_mib = max(self.reserved_mib, reserved_sum)
            self._note(name, allocated_sum)

    def _note(self, name: str, peak: float) -> None:
        self.phases[name] = round(max(self.phases.get(name, 0.0), peak), 1)
        self.peak_mib = max(self.peak_mib, peak)

    def to_dict(self) -> dict[str, object]:
        result: dict[str, object] = {
            "kind": self.kind,
            "device": self.device,
            "peak_mib": round(self.peak_mib, 1),
            "per_phase_mib": dict(self.phases),
        }
        if self.device.startswith("cuda"):
            result["peak_reserved_mib"] = round(self.reserved_mib, 1)
            result["per_phase_reserved_mib"] = dict(self.reserved_phases)
            result["devices"] = self.cuda_devices
            result["per_device"] = {device: dict(values) for device, values in self.per_device.items()}
            if len(self.cuda_devices) > 1:
                result["peak_aggregation"] = SUM_OF_DEVICE_PEAKS
        return result


class Stopwatch:
    """Accumulates wall time per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def to_dict(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in self.seconds.items()}

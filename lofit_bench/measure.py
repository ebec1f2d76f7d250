"""Peak memory and wall time, measured the same way for every method.

On CUDA the figure is torch's peak allocated (and reserved) memory, reset at the start of
the measured phase. On CPU it is the process's peak resident set size (sampled) minus the
RSS when the phase started, i.e. after the model was loaded. The two are labelled and never
mixed: a CPU figure is never shown as GPU memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

MIB = 1024 * 1024


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
    """Tracks peak memory over one or more phases of a run."""

    device: str
    peak_mib: float = 0.0
    reserved_mib: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "cuda_peak_allocated" if self.device.startswith("cuda") else "cpu_peak_rss_delta"

    @contextmanager
    def phase(self, name: str, interval: float = 0.02) -> Iterator[None]:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            try:
                yield
            finally:
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - start) / MIB
                self.reserved_mib = max(self.reserved_mib, torch.cuda.max_memory_reserved() / MIB)
                self._note(name, peak)
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

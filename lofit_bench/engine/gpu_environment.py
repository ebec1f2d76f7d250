"""What a run's record says about the GPU it used, and handing a finished fold's GPU memory back.

Called in the run's own process, after its model is loaded (never in the CLI process, which
must not initialise CUDA).
"""

from __future__ import annotations

import gc
import subprocess

import torch


def gpu_environment(devices: list[str]) -> tuple[list[str] | None, str | None, str | None]:
    """(GPU names, NVIDIA driver version, torch's CUDA version) for the CUDA ``devices`` a
    model is on; (None, None, None) on CPU."""
    indices = [torch.device(device).index or 0 for device in devices if device.startswith("cuda")]
    if not indices:
        return None, None, None
    names = [torch.cuda.get_device_name(index) for index in indices]
    return names, nvidia_driver_version(), torch.version.cuda


def nvidia_driver_version() -> str | None:
    """The driver version NVML reports (nvidia-ml-py), else nvidia-smi's; None if neither answers."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - not installed, or no NVML: try the command line
        pass
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def release_model_memory() -> None:
    """Collect what the last fold left (model, optimizer, caches) and return CUDA's cached blocks,
    so the next fold's model loads into freed memory rather than beside the old one."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()

"""A run's identity: everything that changes its result, as plain data. The record keeps it and
its hash is the run's key (resume skips a run whose key has an ``ok`` record)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lofit_bench.plugins import get_host

if TYPE_CHECKING:
    from lofit_bench.sweep.spec import ModelSettings, RunSpec


def run_identity(spec: RunSpec, model_fingerprint: str | None = None) -> dict[str, Any]:
    """Everything that changes a run's result, as plain data: the method's resolved config
    (defaults filled in) and the plugin that provides it (distribution and version), the task
    and its plugin, the budget, the model settings with the model's content fingerprint, the
    device kind and the seed, plus a hash of the files a task reads from outside its plugin
    (``--lm-eval-include`` folders) where it reads any. The record keeps it (``identity``) and its hash is the key."""
    host = get_host()
    method_class = host.methods.get(spec.method)
    from lofit_bench.engine.precision import resolve_precision

    settings = asdict(spec.model)
    settings["device"] = device_kind(spec.model.device)
    # fp32, what every run computed before --precision existed, is left out: those keys stay valid.
    precision = resolve_precision(settings.pop("precision"), settings["device"], spec.model.dtype)
    if precision != "fp32":
        settings["precision"] = precision
    identity = {
        "method": spec.method,
        "method_config": method_class.config_class.from_dict(spec.method_options).to_dict(),
        "method_plugin": _plugin_identity(host, host.methods.owner(spec.method)),
        "task": spec.task,
        "task_plugin": _plugin_identity(host, host.tasks.owner(spec.task)),
        "budget": spec.budget.to_dict(),
        "model": settings,
        "model_fingerprint": model_fingerprint or model_source_fingerprint(spec.model),
        "seed": spec.seed,
    } | ({"tuned_on_seed": spec.tuning_seed} if spec.tuning_seed is not None and spec.tuning_seed != spec.seed else {})
    task_source = host.tasks.get(spec.task).source_fingerprint()
    if task_source is not None:  # only where a task reads files from outside its plugin: other keys stay as they were
        identity["task_source"] = task_source
    return identity


def _plugin_identity(host: Any, plugin: str) -> str:
    distribution = host.distribution_of(plugin)
    return f"{distribution['name']}=={distribution['version']}" if distribution else plugin


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda`` (the GPU's index does not change a result); never initialises CUDA."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


def model_source_fingerprint(model: ModelSettings) -> str:
    """A content hash of the model a run will load, computed without loading it: for a local
    folder its config and weight files (name, size, first MiB); for a short name the packages
    its weights come from; for a hub id the id (the revision is part of the settings)."""
    from importlib import metadata

    from lofit_bench.engine.models import MODELS, model_source_kind

    digest = hashlib.sha256(model.name.encode())
    kind = model_source_kind(model.name)
    if kind == "short":
        for package in (*MODELS[model.name].packages, "transformers"):  # the weights' package; tiny models' init code
            try:
                digest.update(f"{package}=={metadata.version(package)}".encode())
            except metadata.PackageNotFoundError:
                pass
    elif kind == "folder":
        folder = Path(model.name).expanduser()
        for path in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            digest.update(path.name.encode())
            digest.update(str(path.stat().st_size).encode())
            with open(path, "rb") as handle:
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


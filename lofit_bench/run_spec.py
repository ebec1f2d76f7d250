"""What one run is: the model settings and the run spec, and the identity its key hashes.

Plain data that crosses process boundaries (the sweep's executors hand specs to child
processes or Ray workers); :mod:`lofit_bench.run_one` executes one spec, and
:mod:`lofit_bench.runner` plans and runs sweeps of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lofit_bench.budget import Budget
from lofit_bench.errors import UserError, did_you_mean
from lofit_bench.models import DEFAULT_MODEL
from lofit_bench.plugins import get_host
from lofit_bench.records import run_key
from lofit_bench.run_folder import RunFolder


@dataclass(frozen=True)
class ModelSettings:
    """How a run loads its model (``--model-args``, sweep files' ``model_args``)."""

    name: str = DEFAULT_MODEL
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    revision: str | None = None  # a hub branch, tag or commit; the resolved commit is recorded
    attn_implementation: str | None = None  # e.g. eager, sdpa, flash_attention_2
    gpus_per_run: int = 1  # GPUs each run takes; above 1 the frozen model is sharded (device_map)
    device_map: str | None = None  # accelerate's strategy: auto, balanced, balanced_low_0, sequential
    precision: str = "auto"  # fp32 or bf16-mixed (autocast); auto: bf16-mixed on CUDA, fp32 on CPU

    def __post_init__(self) -> None:
        if self.dtype not in MODEL_DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; use one of {', '.join(MODEL_DTYPES)}")
        device = self.device
        if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
        gpus = self.gpus_per_run
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise UserError(f"gpus_per_run must be a whole number of at least 1, got {gpus!r}")
        from lofit_bench.precision import resolve_precision

        resolve_precision(self.precision, device_kind(self.device) if self.device != "auto" else "cpu", self.dtype)
        if self.device_map is not None and self.device.startswith("cuda:"):
            raise UserError(f"device_map={self.device_map!r} shards the model over its run's GPUs; drop device={self.device}")

    @classmethod
    def from_args(cls, text: str | dict[str, Any]) -> dict[str, Any]:
        """Fields from lm-eval-style model arguments, ``pretrained=NAME,revision=REV,dtype=bf16``
        (or a mapping, from a sweep file), checked against this class: ``pretrained`` is the
        model name; values are typed by field (``true``/``false``, whole numbers)."""
        if isinstance(text, str):
            items: dict[str, Any] = {}
            for item in filter(None, (part.strip() for part in text.split(","))):
                key, separator, value = item.partition("=")
                if not separator or not key.strip():
                    raise UserError(f"model argument {item!r} must look like KEY=VALUE (e.g. pretrained=org/name,revision=main)")
                items[key.strip()] = value.strip()
        elif isinstance(text, dict):
            items = dict(text)
        else:
            raise UserError(f"model arguments must be KEY=VALUE,... or a table, got {text!r}")
        types = {item.name: item.type for item in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in items.items():
            name = "name" if key == "pretrained" else key
            if name not in types or key == "name":
                known = ["pretrained", *(field_name for field_name in types if field_name != "name")]
                raise UserError(f"unknown model argument {key!r}.{did_you_mean(key, known)} Known: {', '.join(known)}")
            values[name] = _typed_model_argument(key, value, types[name])
        return values

    @property
    def effective_device_map(self) -> str | None:
        """The device map a run loads with: the one asked for, or ``auto`` for several GPUs."""
        return self.device_map or ("auto" if self.gpus_per_run > 1 else None)


MODEL_DTYPES = ("auto", "fp32", "bf16", "fp16")
#: ``--tune-per``: tune once per (method, task, fold) on the first seed, or on every seed.
TUNE_PER = ("fold", "seed")


def _typed_model_argument(key: str, value: Any, annotation: str) -> Any:
    if "bool" in annotation:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise UserError(f"model argument {key}={value!r} must be true or false")
    if "int" in annotation:
        try:
            if isinstance(value, bool) or int(value) != float(value):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise UserError(f"model argument {key}={value!r} must be a whole number") from None
    return str(value)


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one run; plain data, so it can cross process boundaries."""

    method: str
    task: str
    seed: int
    budget: Budget
    model: ModelSettings = field(default_factory=ModelSettings)
    method_options: dict[str, Any] = field(default_factory=dict)
    #: What the key hashes (:func:`run_identity`); filled by :func:`plan_sweep`, else on first use.
    identity: dict[str, Any] | None = None
    #: Where tuning trials are stored (an Optuna RDB URL); None: a SQLite file in the run's folder.
    #: Not part of the identity: where trials are kept does not change them.
    tune_storage: str | None = None
    #: Whether the run reads and writes the sweep's shared frozen-model work (``OUT/shared/``,
    #: :mod:`lofit_bench.shared_work`); False: it computes everything itself
    #: (``--no-shared-work``). Not part of the identity: a reused value is the one it computes.
    share_work: bool = True
    #: The seed whose tuning this run uses (``--tune-per fold``): the values are tuned once per
    #: (method, task, fold) on the first seed's run, and every other seed trains once with them.
    #: None: the run tunes with its own seed (``--tune-per seed``, or a one-seed sweep). Part of
    #: the identity of a run whose seed differs from it (its values come from another seed).
    tuning_seed: int | None = None
    #: The sweep's declared axes this run lies on (``lofit.heads``, ``train_examples``;
    #: :mod:`lofit_bench.sweep_grid`). Not part of the identity: declaring an axis changes
    #: how the report reads a result, not the result.
    axes: tuple[str, ...] = ()
    #: Other runs' outputs this run reads (``heads:TASK`` -> a heads.json), filled by the sweep
    #: once those runs finished (:func:`lofit_bench.run_inputs.resolve_inputs`). Not part of
    #: the identity: the option that asks for them (``head_source=run:TASK``) is.
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        if self.identity is None:
            object.__setattr__(self, "identity", run_identity(self))
        return run_key(self.identity)

    def record_path(self, folder: RunFolder) -> Path:
        """Where this run's record lives in ``folder``."""
        return folder.record(self.method, self.task, self.seed, self.key)

    def record_stem(self, folder: RunFolder) -> str:
        """The record's file name without ``.json``: its artefacts, log and trials are named after it."""
        return self.record_path(folder).stem


def run_identity(spec: RunSpec, model_fingerprint: str | None = None) -> dict[str, Any]:
    """Everything that changes a run's result, as plain data: the method's resolved config
    (defaults filled in) and the plugin that provides it (distribution and version), the task
    and its plugin, the budget, the model settings with the model's content fingerprint, the
    device kind and the seed, plus a hash of the files a task reads from outside its plugin
    (``--lm-eval-include`` folders) where it reads any. The record keeps it (``identity``) and its hash is the key."""
    host = get_host()
    method_class = host.methods.get(spec.method)
    from lofit_bench.precision import resolve_precision

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

    from lofit_bench.models import MODELS, model_source_kind

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


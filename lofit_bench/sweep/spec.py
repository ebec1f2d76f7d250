"""What one run is: the model settings and the run spec, and the identity its key hashes.

Plain data that crosses process boundaries (the sweep's executors hand specs to child
processes or Ray workers); :mod:`lofit_bench.sweep.worker` executes one spec, and
:mod:`lofit_bench.sweep.runner` plans and runs sweeps of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lofit_bench.budget import Budget
from lofit_bench.engine.model_names import DEFAULT_MODEL
from lofit_bench.errors import UserError, did_you_mean
from lofit_bench.records.run_folder import RunFolder
from lofit_bench.records.store import run_key


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
        from lofit_bench.engine.precision import resolve_precision

        resolve_precision(self.precision, self.device.split(":")[0] if self.device != "auto" else "cpu", self.dtype)
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
    #: :mod:`lofit_bench.sweep.grid`). Not part of the identity: declaring an axis changes
    #: how the report reads a result, not the result.
    axes: tuple[str, ...] = ()
    #: Other runs' outputs this run reads (``heads:TASK`` -> a heads.json), filled by the sweep
    #: once those runs finished (:func:`lofit_bench.sweep.run_inputs.resolve_inputs`). Not part of
    #: the identity: the option that asks for them (``head_source=run:TASK``) is.
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        if self.identity is None:
            raise ValueError(
                "this RunSpec has no identity yet: plan runs with plan_sweep, or fill it with "
                "dataclasses.replace(spec, identity=lofit_bench.sweep.identity.run_identity(spec))"
            )
        return run_key(self.identity)

    def record_path(self, folder: RunFolder) -> Path:
        """Where this run's record lives in ``folder``."""
        return folder.record(self.method, self.task, self.seed, self.key)

    def record_stem(self, folder: RunFolder) -> str:
        """The record's file name without ``.json``: its artefacts, log and trials are named after it."""
        return self.record_path(folder).stem

"""The run record, typed: what one (method, task, seed) run leaves behind.

The runner fills a :class:`RunRecord`; reports, statistics and heatmaps read one. On disk it
is one JSON file per run (:mod:`lofit_bench.records.store` writes and reads them), checked on
write and on read against the JSON Schema generated from these classes
(:func:`json_schema`; shipped as ``lofit_bench/data/run_record.schema.json`` for tools that
are not Python: a notebook, a dashboard, a database import).

What the harness knows the shape of is typed here. What a method or a tuner reports about
its own fit (``FoldRecord.fit``, ``FoldRecord.tuning``), the method's config and the budget
stay JSON objects: their fields belong to the method or the budget, which record them.

**Schema versions** (``RunRecord.schema``, now :data:`RECORD_SCHEMA`). Adding an optional
field keeps the version: older records lack it and load with its default. Removing or
renaming a field, or changing a field's type or meaning, bumps the version and adds to
:data:`MIGRATIONS` a function that turns a record of the previous version into the new one,
so every older record still loads (migrated in memory; the file is left as written). A
record of a newer schema than this lofit-bench reads, or of a version with no migration, is
reported by name and left out, never read as if it were current.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

RECORD_SCHEMA = 1
#: version N -> a function turning a record (a JSON object) of version N into version N + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "run_record.schema.json"

Status = Literal["running", "ok", "failed"]
JSONObject = dict[str, Any]


class RecordError(ValueError):
    """A JSON object that is not a run record this lofit-bench can read (the message says why)."""


def _strict(cls):
    """Reject unknown fields when validating (a misspelt field is an error, not lost data)."""
    cls.__pydantic_config__ = {"extra": "forbid"}
    return cls


@_strict
@dataclass
class PluginDistribution:
    """The installed distribution that provides a method or task plugin."""

    name: str
    version: str


@_strict
@dataclass
class MethodInfo:
    name: str
    #: What the user set (``--method-set``, sweep files); the rest are the method's defaults.
    options: JSONObject = field(default_factory=dict)
    plugin: str | None = None
    plugin_distribution: PluginDistribution | None = None
    #: The resolved config the run used (defaults filled in; the chosen trial's when tuned).
    config: JSONObject | None = None


@_strict
@dataclass
class TaskInfo:
    name: str
    plugin: str | None = None
    plugin_distribution: PluginDistribution | None = None
    objective: str | None = None
    evaluation: str | None = None
    metrics: list[str] = field(default_factory=list)
    #: Teacher-forced measures beside ``metrics`` (``Task.secondary_metrics``).
    secondary_metrics: list[str] = field(default_factory=list)
    primary_metric: str | None = None
    license: str | None = None
    #: fold -> split -> number of examples.
    split_sizes: dict[str, dict[str, int]] = field(default_factory=dict)


@_strict
@dataclass
class ModelInfo:
    """The model as loaded (``LoadedModel.describe()``)."""

    name: str
    source: str | None = None
    fingerprint: str | None = None
    model_type: str | None = None
    parameters: int | None = None
    layers: int | None = None
    heads_per_layer: int | None = None
    head_dim: int | None = None
    dtype: str | None = None
    device: str | None = None
    devices: list[str] = field(default_factory=list)
    revision: str | None = None
    commit: str | None = None
    attn_implementation: str | None = None
    #: module -> device of a sharded model (``hf_device_map``); None when it is on one device.
    device_map: dict[str, str] | None = None
    #: fp32, or bf16-mixed (the frozen model's matmuls in bf16 under autocast); None: before it existed.
    precision: str | None = None


@_strict
@dataclass
class SideEffects:
    """What the fit changed on held-out text no task uses (:mod:`lofit_bench.engine.side_effects`):
    KL(base || fitted) of the next-token distributions and the change in cross-entropy, nats."""

    kl_from_base: float
    cross_entropy_base: float
    cross_entropy_fitted: float
    cross_entropy_change: float
    texts: int
    tokens: int
    source: str = ""


@_strict
@dataclass
class Retention:
    """Another task scored after the fit with no training on it (``budget.also_eval``), against
    the base model's score on the same examples (:mod:`lofit_bench.engine.retention`)."""

    metric: str
    base: float | None
    fitted: float | None
    change: float | None
    examples: int
    #: Every metric of the task, base and fitted (means over the task's folds).
    base_metrics: dict[str, float | None] = field(default_factory=dict)
    fitted_metrics: dict[str, float | None] = field(default_factory=dict)


@_strict
@dataclass
class Locality:
    """MQuAKE: held-out single-hop facts whose answer the fit left as the base model gave it."""

    facts: int
    unchanged: int
    share_unchanged: float


@_strict
@dataclass
class InferenceSpeed:
    """Greedy generation tokens/s on the same prompts and batch (:mod:`lofit_bench.engine.inference_speed`)."""

    base_tokens_per_s: float
    as_run_tokens_per_s: float
    #: As it would be served: merged into the weights where the method can merge, else as run.
    served_tokens_per_s: float
    served_as: str
    prompts: int
    new_tokens: int
    batch_size: int


@_strict
@dataclass
class SharedWorkUse:
    """One entry of the sweep's shared frozen-model work a fold asked for
    (:mod:`lofit_bench.shared_work`): computed by this run, or reused from another's."""

    #: ``activations``, ``iti-probes``, ``lofit-stage1``, ``tuned-values`` or a plugin's kind.
    kind: str
    #: The entry's content key (``OUT/shared/<kind>/<key>``).
    key: str
    reused: bool
    #: The record name of the run that computed it.
    created_by: str | None = None
    #: Seconds its computation took (what a reuse saved).
    compute_s: float | None = None


@_strict
@dataclass
class FoldRecord:
    """One fold: its data, what the fit reported, and the test evaluation of the fitted model."""

    split_sizes: dict[str, int] = field(default_factory=dict)
    #: The method's own fit report (steps, losses, chosen heads, phases, ...).
    fit: JSONObject = field(default_factory=dict)
    #: The tuner's report: mode, every trial, the chosen values (see :mod:`lofit_bench.sweep.tuning`).
    tuning: JSONObject | None = None
    train_ids: list[str] = field(default_factory=list)
    #: metric -> value on the fold's test split (None: the value was not finite).
    metrics: dict[str, float | None] = field(default_factory=dict)
    eval_size: int = 0
    eval_ids: list[str] = field(default_factory=list)
    eval_tokens: int = 0
    #: One entry per test example: its id and its metric values (and what the task adds).
    per_example: list[JSONObject] = field(default_factory=list)
    evaluation_details: JSONObject | None = None
    #: The fold's trainable parameters (the run's ``trainable_parameters`` is its first fold's).
    trainable_parameters: int | None = None
    #: What the fit changed on held-out text (None: ``budget.side_effect_texts`` is 0).
    side_effects: SideEffects | None = None
    #: task name -> its score after this fit against the base model's (``budget.also_eval``).
    retention: dict[str, Retention] = field(default_factory=dict)
    locality: Locality | None = None
    inference_speed: InferenceSpeed | None = None
    #: Shared frozen-model work the fit asked for, computed here or reused (in order).
    shared_work: list[SharedWorkUse] = field(default_factory=list)


@_strict
@dataclass
class TrainableParameters:
    count: int
    percent_of_base: float
    stored_values: int
    base_parameters: int


@_strict
@dataclass
class Timings:
    """Wall seconds per phase of the run, summed over folds."""

    load_model: float = 0.0
    fit: float = 0.0
    evaluate: float = 0.0
    #: Measuring the base and the fitted model beyond the task (side effects, retention, locality).
    fit_effects: float = 0.0
    total_s: float = 0.0
    #: The fit's parts as the method timed them, plus ``other``.
    fit_phases: dict[str, float] = field(default_factory=dict)
    #: Checking the model after every ``remove()`` (:mod:`lofit_bench.engine.model_integrity`): the
    #: checksums after load plus each check; part of ``fit`` (trials) and of no phase (the last).
    model_check: float = 0.0


@_strict
@dataclass
class Throughput:
    train_tokens: int = 0
    train_tokens_per_s: float | None = None
    eval_tokens: int = 0
    eval_tokens_per_s: float | None = None


@_strict
@dataclass
class Memory:
    """Peak memory (:class:`lofit_bench.measure.MemoryMeter`); the CUDA fields only on a GPU."""

    kind: str
    device: str
    peak_mib: float
    per_phase_mib: dict[str, float] = field(default_factory=dict)
    peak_reserved_mib: float | None = None
    per_phase_reserved_mib: dict[str, float] | None = None
    devices: list[str] | None = None
    per_device: dict[str, JSONObject] | None = None
    #: What ``peak_mib`` is when several GPUs were measured: the sum of per-device peaks,
    #: reached at different times (an upper bound on the summed allocation); None: one device.
    peak_aggregation: str | None = None


@_strict
@dataclass
class Environment:
    python: str | None = None
    platform: str | None = None
    processor: str | None = None
    cpu_count: int | None = None
    torch_threads: int | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    git_commit: str | None = None  # "-dirty" appended when the code differed from the commit
    git_dirty: bool | None = None  # whether it did (None: not a git checkout, or a record written before 0.2)
    #: The recorded libraries the run's process imported (None: a record written before 0.2).
    used_libraries: list[str] | None = None
    #: The GPU(s) the run used, the NVIDIA driver and torch's CUDA version (None on CPU).
    gpus: list[str] | None = None
    gpu_driver: str | None = None
    cuda: str | None = None


@_strict
@dataclass
class RunError:
    type: str
    message: str
    traceback: str = ""
    #: The installed plugin whose code raised it, with its distribution and the function
    #: (``'bitfit' (lofit-bench-bitfit 0.1.0), in BitFit.fit``); None: no plugin code raised it.
    plugin: str | None = None
    #: The run stopped because the disk (or a quota) was full, e.g. the tuning database could
    #: not grow: the sweep stops after recording it (exit code 3) instead of failing every run.
    disk_full: bool = False


@_strict
@dataclass
class ArtifactsError:
    message: str
    disk_full: bool = False


@_strict
@dataclass
class Placement:
    cuda_visible_devices: str | None = None


@_strict
@dataclass
class RunRecord:
    """One run's record. ``status`` is ``ok`` (everything below ``folds`` is filled),
    ``failed`` (``error`` says why; what finished before is kept) or ``running`` (written by
    no finished run; a crashed run's record is the part known before it started)."""

    schema: int
    key: str
    status: Status
    method: MethodInfo
    task: TaskInfo
    seed: int
    #: The budget as the run used it (``Budget.to_dict()``, overrides included).
    budget: JSONObject
    model_settings: JSONObject = field(default_factory=dict)
    #: What the run key hashes (``lofit_bench.sweep.identity.run_identity``).
    identity: JSONObject = field(default_factory=dict)
    #: The sweep's declared axes this run lies on (method grid fields ``METHOD.FIELD``, budget
    #: fields): the report plots along them instead of warning that budgets differ.
    axes: list[str] = field(default_factory=list)
    environment: Environment | None = None
    started_at: str | None = None
    finished_at: str | None = None
    pid: int | None = None
    #: The run's own output (``logs/<record>.log``, relative to the sweep's folder).
    log: str | None = None
    placement: Placement | None = None
    model: ModelInfo | None = None
    folds: dict[str, FoldRecord] = field(default_factory=dict)
    #: metric -> mean over folds (None: not finite); absent until the run finished.
    metrics: dict[str, float | None] | None = None
    trainable_parameters: TrainableParameters | None = None
    timings: Timings | None = None
    throughput: Throughput | None = None
    memory: Memory | None = None
    #: The saved method states, relative to the sweep's folder.
    artifacts: str | None = None
    artifacts_error: ArtifactsError | None = None
    error: RunError | None = None
    #: Where a non-finite number was written as null, and what it was ("metrics.mc2": "NaN").
    non_finite: dict[str, str] | None = None

    #: The file a record was read from (set by the reader; not part of the record).
    source: ClassVar[Path | None] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        return f"{self.method.name}/{self.task.name}/seed {self.seed}"

    @property
    def model_name(self) -> str:
        """The loaded model's name, else the one asked for."""
        return (self.model.name if self.model else None) or self.model_settings.get("name") or "?"

    @property
    def file_name(self) -> str:
        return self.source.name if self.source else f"{self.method.name}--{self.task.name}--seed{self.seed}"

    def to_json(self) -> JSONObject:
        """The record as a JSON object; a typed field that is None is left out (a failed run
        has no ``memory``), while None inside a free-form object (a budget's
        ``train_examples: null``) is kept."""
        return _to_json(self)


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = ((item.name, getattr(value, item.name)) for item in dataclasses.fields(value))
        return {name: _to_json(item) for name, item in items if item is not None}
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    return value


@cache
def _adapter():
    from pydantic import TypeAdapter

    return TypeAdapter(RunRecord)


def json_schema() -> JSONObject:
    """The JSON Schema (draft 2020-12) of a record, generated from :class:`RunRecord`."""
    schema = _adapter().json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://lofit-bench.invalid/run_record.schema.v{RECORD_SCHEMA}.json"
    schema["description"] = (
        f"A lofit-bench run record, schema {RECORD_SCHEMA}. " + (RunRecord.__doc__ or "").split("\n")[0]
    )
    return schema


def schema_text() -> str:
    """The shipped schema file's content (``lofit_bench/data/run_record.schema.json``)."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def parse_record(payload: Any) -> RunRecord:
    """A typed record from a JSON object, migrated to the current schema; :class:`RecordError`
    (one line: which field, what is wrong) when it is not a record this version reads."""
    if not isinstance(payload, dict):
        raise RecordError(f"not a run record (a JSON {type(payload).__name__}, not an object)")
    payload = migrate(payload)
    from pydantic import ValidationError

    try:  # strict, as JSON: "42" is not a seed, 42 is a valid float
        return _adapter().validate_json(json.dumps(payload, allow_nan=True, default=str), strict=True)
    except ValidationError as error:
        raise RecordError(_first_problem(error)) from None


def migrate(payload: JSONObject) -> JSONObject:
    """``payload`` brought to :data:`RECORD_SCHEMA` by :data:`MIGRATIONS`, one version at a time."""
    version = payload.get("schema")
    if isinstance(version, bool) or not isinstance(version, int):
        raise RecordError(f"not a run record of lofit-bench (no whole-number 'schema' field; got {version!r})")
    if version > RECORD_SCHEMA:
        raise RecordError(
            f"a record of schema {version}, newer than this lofit-bench reads ({RECORD_SCHEMA}); "
            "upgrade lofit-bench to read it"
        )
    while version < RECORD_SCHEMA:
        step = MIGRATIONS.get(version)
        if step is None:
            raise RecordError(
                f"a record of schema {version}, which this lofit-bench cannot migrate to {RECORD_SCHEMA}; "
                "read it with the lofit-bench version that wrote it"
            )
        payload = step(dict(payload))
        version += 1
        payload["schema"] = version
    return payload


def _first_problem(error: Any) -> str:
    problems = error.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return f"not a valid run record: {where}: {first['msg']}{more}"

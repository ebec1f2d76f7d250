"""Runs: one (method, task, seed) on one model under one budget, and sweeps of them.

A run walks one straight path per fold of the task: load model -> method.prepare ->
method.fit on the fold's training data -> task.evaluate on the fold's test split ->
method.save -> method.remove. Its record is written atomically as soon as it ends, so a
later failure never loses it; a failed run is recorded with its error and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import multiprocessing
import os
import sys
import tempfile
import traceback
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lofit_bench.budget import Budget
from lofit_bench.console import (
    LOGS_FOLDER,
    RunStatus,
    SweepConsole,
    redirect_output,
    status_path,
    verbose,
)
from lofit_bench.errors import DiskFull, UserError, did_you_mean, install_warning_format, warn
from lofit_bench.faults import check_finite_metrics, save_artifacts
from lofit_bench.lock import holding_out_folder_lock
from lofit_bench.measure import MemoryMeter, Stopwatch
from lofit_bench.method import FitContext, Method
from lofit_bench.models import DEFAULT_MODEL, load_model
from lofit_bench.names import inside
from lofit_bench.plugins import PluginWarning, get_host
from lofit_bench.preflight import check_before_runs
from lofit_bench.progress import progress_enabled
from lofit_bench.records import (
    RECORD_SCHEMA,
    RECORDS_FOLDER,
    environment,
    read_record,
    record_path,
    run_key,
    save_record,
)
from lofit_bench.scoring import Scorer
from lofit_bench.search_space import declared_space
from lofit_bench.tuning import BEST_STATE, TUNING_FOLDER, Tuner, TuningPlan, sqlite_storage

ARTIFACTS_FOLDER = "artifacts"


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

    def __post_init__(self) -> None:
        if self.dtype not in MODEL_DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; use one of {', '.join(MODEL_DTYPES)}")
        device = self.device
        if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
        gpus = self.gpus_per_run
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise UserError(f"gpus_per_run must be a whole number of at least 1, got {gpus!r}")
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

    @property
    def key(self) -> str:
        if self.identity is None:
            object.__setattr__(self, "identity", run_identity(self))
        return run_key(self.identity)

    def record_path(self, out_dir: Path) -> Path:
        return record_path(out_dir, self.method, self.task, self.seed, self.key)


@dataclass
class RunOutcome:
    spec: RunSpec
    status: str  # "ok", "failed" or "skipped"
    path: Path
    error: str | None = None


def plan_sweep(
    methods: list[str],
    tasks: list[str],
    budget: Budget,
    model: ModelSettings,
    seeds: list[int] | None = None,
    method_options: dict[str, dict[str, Any]] | None = None,
    tune_storage: str | None = None,
) -> list[RunSpec]:
    """Validate every name up front (one clear error for all unknown ones), then expand.
    ``tune_storage``: an Optuna storage URL for every run's trials (None: SQLite per run)."""
    host = get_host()
    method_classes = dict(zip(methods, host.methods.resolve(methods), strict=True))
    for task_name, task_class in zip(tasks, host.tasks.resolve(tasks), strict=True):
        task_class().data_summary()  # reads every split: a missing or broken file fails here
        trained = [name for name, cls in method_classes.items() if cls.uses_training_data]
        if task_class.objective == "none" and trained:
            raise UserError(
                f"task {task_name} provides no training data, but method(s) {', '.join(trained)} train; "
                "use it with fit-free methods such as zero-shot"
            )
    method_options = method_options or {}
    for name, options in method_options.items():
        if name not in method_classes:
            raise UserError(f"options were given for method {name!r}, which is not in --methods ({', '.join(methods)})")
        method_classes[name].config_class.from_dict(options)  # fail now, not after an hour
    check_before_runs(method_classes, method_options, budget, model, seeds)
    model_fingerprint = model_source_fingerprint(model)
    specs = [
        RunSpec(method, task, seed, budget, model, dict(method_options.get(method, {})), tune_storage=tune_storage)
        for method in dict.fromkeys(methods)
        for task in dict.fromkeys(tasks)
        for seed in dict.fromkeys(seeds or list(budget.seeds))
    ]
    return [dataclasses.replace(spec, identity=run_identity(spec, model_fingerprint)) for spec in specs]


def run_identity(spec: RunSpec, model_fingerprint: str | None = None) -> dict[str, Any]:
    """Everything that changes a run's result, as plain data: the method's resolved config
    (defaults filled in) and the plugin that provides it (distribution and version), the task
    and its plugin, the budget, the model settings with the model's content fingerprint, the
    device kind and the seed. The record keeps it (``identity``) and its hash is the key."""
    host = get_host()
    method_class = host.methods.get(spec.method)
    settings = asdict(spec.model)
    settings["device"] = device_kind(spec.model.device)
    return {
        "method": spec.method,
        "method_config": method_class.config_class.from_dict(spec.method_options).to_dict(),
        "method_plugin": _plugin_identity(host, host.methods.owner(spec.method)),
        "task": spec.task,
        "task_plugin": _plugin_identity(host, host.tasks.owner(spec.task)),
        "budget": spec.budget.to_dict(),
        "model": settings,
        "model_fingerprint": model_fingerprint or model_source_fingerprint(spec.model),
        "seed": spec.seed,
    }


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


def check_output_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(f"cannot write to output folder {out_dir}: {error.strerror or error}; choose another --out") from None
    for folder in (out_dir / RECORDS_FOLDER, out_dir / ARTIFACTS_FOLDER):  # the folders runs write into
        try:
            folder.mkdir(exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as error:
            raise UserError(f"cannot write to {folder}: {error.strerror or error}; fix its permissions or choose another --out") from None


@holding_out_folder_lock
def run_sweep(
    specs: list[RunSpec],
    out_dir: Path,
    force: bool = False,
    progress: bool = True,
    echo=print,
    executor: str = "process",
    jobs: int = 1,
    ray_address: str | None = None,
    quiet: bool = False,
    live: bool | None = None,
) -> list[RunOutcome]:
    """Run every spec, skipping those whose record already says ``ok`` (unless ``force``).

    Each record is written atomically the moment its run ends, so an interrupted sweep
    (Ctrl-C, kill -9) loses only the runs in flight, and rerunning it resumes where it stopped.
    See :mod:`lofit_bench.executors` for where runs execute. ``progress`` turns on the runs'
    own progress bars; the console (:mod:`lofit_bench.console`) prints one line per finished
    run and, on a terminal (``live``), a status line; ``quiet`` prints nothing.
    """
    from lofit_bench.executors import execute

    check_output_folder(out_dir)
    labels = {spec.key: f"{spec.method} on {spec.task} (seed {spec.seed}, {spec.model.name})" for spec in specs}
    outcomes: dict[str, RunOutcome] = {}
    pending = []
    console = SweepConsole(len(specs), out_dir, echo=(lambda *_: None) if quiet else echo, live=False if quiet else live)
    with console:
        for spec in specs:
            path = spec.record_path(out_dir)
            if not force and _finished(path):
                console.skipped(labels[spec.key], f"already done, skipped ({path.name}; --force reruns)")
                outcomes[spec.key] = RunOutcome(spec, "skipped", path)
            else:
                pending.append(spec)
                status_path(out_dir, path.stem).unlink(missing_ok=True)  # left by a killed sweep
                console.submitted(path.stem, labels[spec.key])
        if pending and not quiet:
            where = "in this process" if executor == "inline" else f"{executor} executor, {jobs} at a time"
            logs = "" if executor == "inline" or verbose() else f"; each run's own output goes to {out_dir / LOGS_FOLDER}"
            echo(f"running {len(pending)} run(s) ({where}{logs})")
        for spec, record in execute(pending, out_dir, executor, jobs, progress, ray_address):
            path = save_record(spec.record_path(out_dir), record) or Path("(printed on stderr)")
            if record["status"] == "ok":
                summary = ", ".join(f"{name} {value:.3f}" for name, value in record["metrics"].items())
                console.finished(path.stem, labels[spec.key], f"{summary} ({record['timings']['total_s']:.0f} s)")
                outcomes[spec.key] = RunOutcome(spec, "ok", path)
            else:
                error = record["error"]
                failure = f"FAILED: {error['type']}: {error['message']} (recorded in {path})"
                console.finished(path.stem, labels[spec.key], failure)
                if quiet:  # an error is said even then
                    print(f"lofit-bench: {labels[spec.key]}: {failure}", file=sys.stderr)
                outcomes[spec.key] = RunOutcome(spec, "failed", path, f"{error['type']}: {error['message']}")
            if (record.get("artifacts_error") or {}).get("disk_full"):
                raise DiskFull(
                    f"the disk is full (saving the artefacts of {path.name}, whose record is kept); the sweep "
                    "stopped. Free space and rerun the same command: finished runs are skipped and the rest resume"
                )
    return [outcomes[spec.key] for spec in specs]


def _finished(path: Path) -> bool:
    if not path.exists():
        return False
    record, problem = read_record(path)
    if record is None:
        warn(f"{path} is not a readable record ({problem}); that run is done again and its record replaced")
        return False
    return record.get("status") == "ok"


def fit_phase_table(phases: dict[str, float], fit_seconds: float) -> dict[str, float]:
    """Seconds per part of the fit, as the method named them, plus ``other`` for the rest
    (preparing the method, tokenising, saving state)."""
    table = {name: round(seconds, 3) for name, seconds in phases.items()}
    table["other"] = round(max(0.0, fit_seconds - sum(phases.values())), 3)
    return table


def empty_record(spec: RunSpec) -> dict[str, Any]:
    """The part of a record known before a run starts (a crashed run's record is just this)."""
    return {
        "schema": RECORD_SCHEMA,
        "key": spec.key,
        "status": "running",
        "method": {"name": spec.method, "options": spec.method_options},
        "task": {"name": spec.task},
        "seed": spec.seed,
        "budget": spec.budget.to_dict(),
        "model_settings": asdict(spec.model),
        "identity": spec.identity if spec.identity is not None else run_identity(spec),
        "environment": environment(),
        "started_at": _now(),
        "pid": os.getpid(),
    }


def execute_run(spec: RunSpec, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Run one spec and return its record (status ``failed`` with the error if it raised).

    In a sweep's child process the run's own output (library bars, warnings, logs) goes to
    ``OUT/logs/<record>.log`` unless ``--verbose``; its phases go to the sweep's console.
    """
    stem = spec.record_path(out_dir).stem
    install_warning_format()
    with warnings.catch_warnings():  # the sweep's process has reported broken plugins already
        warnings.simplefilter("ignore", PluginWarning)
        get_host()
    record = empty_record(spec)
    if multiprocessing.parent_process() is not None and not verbose():
        log_file = out_dir / LOGS_FOLDER / f"{stem}.log"
        redirect_output(log_file)
        record["log"] = str(log_file.relative_to(out_dir))
    status = RunStatus(status_path(out_dir, stem))
    try:
        _execute(spec, out_dir, record, progress_enabled(progress), status)
        record["status"] = "ok"
    except Exception as error:  # noqa: BLE001 - a failed run is data, not the end of the sweep
        record["status"] = "failed"
        record["error"] = {
            "type": type(error).__name__,
            "message": str(error).splitlines()[0] if str(error) else "",
            "traceback": traceback.format_exc(),
        }
    record["finished_at"] = _now()
    return record


def _execute(spec: RunSpec, out_dir: Path, record: dict[str, Any], progress: bool, status: RunStatus) -> None:
    from transformers import set_seed

    host = get_host()
    method_class = host.methods.get(spec.method)
    task = host.tasks.get(spec.task)()
    watch = Stopwatch()
    record["method"]["plugin"] = host.methods.owner(spec.method)
    record["method"]["plugin_distribution"] = host.distribution_of(host.methods.owner(spec.method))
    record["task"]["plugin_distribution"] = host.distribution_of(host.tasks.owner(spec.task))
    record["task"].update(
        plugin=host.tasks.owner(spec.task),
        objective=task.objective,
        evaluation=task.evaluation,
        metrics=list(task.metrics),
        primary_metric=task.primary_metric,
        license=task.license,
        split_sizes=task.data_summary(),
    )
    folds: dict[str, Any] = {}
    record["folds"] = folds
    fit_phases: dict[str, float] = {}
    memory: MemoryMeter | None = None
    artifacts = inside(out_dir, out_dir / ARTIFACTS_FOLDER / spec.record_path(out_dir).stem)
    for fold in task.folds:

        def report(phase: str, fold: str = fold) -> None:
            status.set(phase if len(task.folds) == 1 else f"{fold}: {phase}")

        report("load_model")
        with watch.phase("load_model"):
            lm = load_model(
                spec.model.name, spec.model.dtype, spec.model.device, spec.model.trust_remote_code,
                revision=spec.model.revision, attn_implementation=spec.model.attn_implementation,
                device_map=spec.model.effective_device_map,
            )
        record["model"] = lm.describe()
        base_parameters = lm.parameter_count  # before prepare: adapters and hook modules are not the base
        memory = memory or MemoryMeter(lm.device, devices=lm.devices)
        set_seed(spec.seed)
        fold_record: dict[str, Any] = {"split_sizes": task.data_summary()[fold]}
        folds[fold] = fold_record
        with tempfile.TemporaryDirectory(prefix="lofit-bench-") as work:
            context = FitContext(
                lm, task, fold, spec.budget, spec.seed, Path(work), progress,
                on_phase=lambda name: report(f"fit: {name}"),
            )
            report("fit")
            with memory.phase("fit"), watch.phase("fit"):
                method, fold_record["fit"], fold_record["tuning"] = fit_method(spec, method_class, task, fold, lm, context, out_dir)
            record["method"]["config"] = method.config.to_dict()
            for name, seconds in context.phases.seconds.items():
                fit_phases[name] = fit_phases.get(name, 0.0) + seconds
            fold_record["train_ids"] = [example.id for example in context.training_examples()] if method.uses_training_data else []
        scorer = Scorer(
            method.evaluation_model(), lm.tokenizer, spec.budget.eval_batch_size, progress,
            capabilities=method.capabilities,
        )
        report("evaluate")
        with memory.phase("evaluate"), watch.phase("evaluate"):
            result = task.evaluate(scorer, fold, "test", limit=spec.budget.eval_examples)
        fold_record["metrics"] = result.metrics
        check_finite_metrics(result.metrics, fold)
        fold_record["eval_size"] = result.size
        fold_record["eval_ids"] = result.example_ids
        fold_record["eval_tokens"] = scorer.tokens_processed
        fold_record["per_example"] = result.per_example
        if result.details:
            fold_record["evaluation_details"] = result.details
        save_artifacts(method, artifacts / fold, record)
        record["trainable_parameters"] = {
            "count": method.trainable_parameters(),
            "percent_of_base": 100.0 * method.trainable_parameters() / base_parameters,
            "stored_values": method.stored_values(),
            "base_parameters": base_parameters,
        }
        method.remove()
        del lm, method, scorer
    record["metrics"] = _average_over_folds(folds)
    record["timings"] = watch.to_dict() | {
        "total_s": round(sum(watch.seconds.values()), 3),
        "fit_phases": fit_phase_table(fit_phases, watch.seconds.get("fit", 0.0)),
    }
    eval_tokens = sum(fold["eval_tokens"] for fold in folds.values())
    # Tokens and seconds of the trainings that made the final model (the chosen trial's when tuned).
    trainings = [fold["fit"].get("training") or {} for fold in folds.values()]
    train_tokens = sum(training.get("tokens", 0) for training in trainings)
    train_seconds = sum(training.get("seconds", 0.0) for training in trainings)
    record["throughput"] = {
        "train_tokens": train_tokens,
        "train_tokens_per_s": round(train_tokens / train_seconds, 1) if train_tokens and train_seconds else None,
        "eval_tokens": eval_tokens,
        "eval_tokens_per_s": round(eval_tokens / watch.seconds["evaluate"], 1) if watch.seconds.get("evaluate") else None,
    }
    record["memory"] = memory.to_dict() if memory else None
    record["artifacts"] = str(artifacts.relative_to(out_dir))


def fit_method(
    spec: RunSpec, method_class: type[Method], task: Any, fold: str, lm: Any, context: FitContext, out_dir: Path
) -> tuple[Method, dict[str, Any], dict[str, Any]]:
    """The fitted method of one fold, with its fit record and tuning record: tuned on the dev
    split when the budget says so and the method declares something the user left free
    (:mod:`lofit_bench.tuning`), else one fit with the method's own values."""
    plan = TuningPlan.for_run(method_class, spec.method_options, task) if spec.budget.tune else None
    if plan is None or not plan.space:
        method = method_class.from_options(spec.method_options)
        method.prepare(lm)
        if plan is None:
            note = {"mode": "off", "note": "budget.tune is false: the method's default (paper) values"}
        else:
            fixed = ", ".join(sorted(declared_space(method_class.config_class))) or "no field"
            note = {"mode": "on", "trials_run": 0, "note": f"nothing to tune (declares {fixed}; set by the user or none)"}
        return method, method.fit(context), note
    stem = spec.record_path(out_dir).stem
    tuner = Tuner(
        method_class, plan, task, fold,
        storage=spec.tune_storage or sqlite_storage(out_dir, stem),
        study_name=f"{stem}-{fold}",
        state_dir=inside(out_dir, out_dir / TUNING_FOLDER / stem / fold / BEST_STATE),
        seed=spec.seed,
    )
    tuned = tuner.tune(lm, context)
    return tuned.method, tuned.fit, tuned.record


def _average_over_folds(folds: dict[str, Any]) -> dict[str, float]:
    """Unweighted mean over folds (the paper averages TruthfulQA's two folds)."""
    names = next(iter(folds.values()))["metrics"].keys()
    return {name: sum(fold["metrics"][name] for fold in folds.values()) / len(folds) for name in names}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")

"""Executing one run: load the model, fit the method per fold, evaluate once on test, record.

A run walks one straight path per fold of the task: load model -> method.prepare ->
method.fit on the fold's training data (tuned on the dev split when the budget says so) ->
task.evaluate on the fold's test split -> method.save -> method.remove. It fills a typed
:class:`~lofit_bench.records.record.RunRecord`; a run that raised is a ``failed`` record with
its error, never a lost one. Both the sweep (:mod:`lofit_bench.sweep.runner`) and the executors
(:mod:`lofit_bench.sweep.executors`) import this module; it imports neither.
"""

from __future__ import annotations

import datetime as _dt
import multiprocessing
import os
import tempfile
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lofit_bench.engine.divergence import check_finite_metrics
from lofit_bench.engine.fit_effects import BaseMeasures, measure_base, measure_fitted
from lofit_bench.engine.gpu_environment import gpu_environment, release_model_memory
from lofit_bench.engine.model_integrity import ModelGuard
from lofit_bench.engine.models import load_model
from lofit_bench.engine.precision import computing_in, resolve_precision, weights_dtype
from lofit_bench.engine.scoring import Scorer
from lofit_bench.errors import install_warning_format
from lofit_bench.measure import MemoryMeter, Stopwatch
from lofit_bench.method import FitContext, Method
from lofit_bench.plugin_boundary import raised_in_plugin
from lofit_bench.plugins import PluginWarning, get_host
from lofit_bench.progress import progress_enabled
from lofit_bench.records.record import (
    RECORD_SCHEMA,
    Environment,
    FoldRecord,
    Memory,
    MethodInfo,
    ModelInfo,
    PluginDistribution,
    RunError,
    RunRecord,
    SharedWorkUse,
    TaskInfo,
    Throughput,
    Timings,
    TrainableParameters,
)
from lofit_bench.records.run_folder import RunFolder
from lofit_bench.records.store import environment, imported_libraries
from lofit_bench.search_space import declared_space
from lofit_bench.shared_work import SharedWork, run_scope
from lofit_bench.sweep.console import RunStatus, redirect_output, verbose
from lofit_bench.sweep.faults import (
    check_finite_outputs,
    error_message,
    is_disk_full,
    save_artifacts,
)
from lofit_bench.sweep.identity import device_kind, run_identity
from lofit_bench.sweep.preflight import check_prompt_texts
from lofit_bench.sweep.spec import RunSpec
from lofit_bench.sweep.tune_per_fold import fit_with_values_of_first_seed, run_tuner
from lofit_bench.sweep.tuning import TuningPlan, untuned_fill


def fit_phase_table(phases: dict[str, float], fit_seconds: float) -> dict[str, float]:
    """Seconds per part of the fit, as the method named them, plus ``other`` for the rest
    (preparing the method, tokenising, saving state)."""
    table = {name: round(seconds, 3) for name, seconds in phases.items()}
    table["other"] = round(max(0.0, fit_seconds - sum(phases.values())), 3)
    return table


def empty_record(spec: RunSpec) -> RunRecord:
    """The part of a record known before a run starts (a crashed run's record is just this)."""
    return RunRecord(
        schema=RECORD_SCHEMA,
        key=spec.key,
        status="running",
        method=MethodInfo(name=spec.method, options=dict(spec.method_options)),
        task=TaskInfo(name=spec.task),
        seed=spec.seed,
        budget=spec.budget.to_dict(),
        model_settings=asdict(spec.model),
        identity=spec.identity if spec.identity is not None else run_identity(spec),
        axes=list(spec.axes),
        environment=Environment(**environment()),
        started_at=_now(),
        pid=os.getpid(),
    )


def execute_run(spec: RunSpec, folder: RunFolder, progress: bool = True) -> RunRecord:
    """Run one spec and return its record (status ``failed`` with the error if it raised).

    In a sweep's child process the run's own output (library bars, warnings, logs) goes to
    ``OUT/logs/<record>.log`` unless ``--verbose``; its phases go to the sweep's console.
    """
    stem = spec.record_stem(folder)
    install_warning_format()
    with warnings.catch_warnings():  # the sweep's process has reported broken plugins already
        warnings.simplefilter("ignore", PluginWarning)
        get_host()
    record = empty_record(spec)
    if multiprocessing.parent_process() is not None and not verbose():
        log_file = folder.log(stem)
        redirect_output(log_file)
        record.log = folder.relative(log_file)
    status = RunStatus(folder.status(stem))
    try:
        _execute(spec, folder, record, progress_enabled(progress), status)
        record.status = "ok"
    except Exception as error:  # noqa: BLE001 - a failed run is data, not the end of the sweep
        record.status = "failed"
        record.error = RunError(
            type=type(error).__name__,
            message=error_message(error),
            traceback=traceback.format_exc(),
            plugin=raised_in_plugin(error.__traceback__),
            disk_full=is_disk_full(error),
        )
    record.finished_at = _now()
    if record.environment is not None:
        record.environment.used_libraries = imported_libraries()
    return record


def _distribution(host: Any, plugin: str) -> PluginDistribution | None:
    found = host.distribution_of(plugin)
    return PluginDistribution(**found) if found else None


def _execute(spec: RunSpec, folder: RunFolder, record: RunRecord, progress: bool, status: RunStatus) -> None:
    from transformers import set_seed

    host = get_host()
    method_class = host.methods.get(spec.method)
    task = host.tasks.get(spec.task)()
    watch = Stopwatch()
    record.method.plugin = host.methods.owner(spec.method)
    record.method.plugin_distribution = _distribution(host, record.method.plugin)
    task_plugin = host.tasks.owner(spec.task)
    record.task = TaskInfo(
        name=spec.task,
        plugin=task_plugin,
        plugin_distribution=_distribution(host, task_plugin),
        objective=task.objective,
        evaluation=task.evaluation,
        metrics=list(task.metrics),
        secondary_metrics=list(getattr(task, "secondary_metrics", ())),
        primary_metric=task.primary_metric,
        license=task.license,
        split_sizes=task.data_summary(),
    )
    fit_phases: dict[str, float] = {}
    model_check_seconds = 0.0  # the model guards' checks, over folds
    memory: MemoryMeter | None = None
    base: BaseMeasures | None = None
    artifacts = folder.artifacts(spec.record_stem(folder))
    precision = resolve_precision(spec.model.precision, device_kind(spec.model.device), spec.model.dtype)
    for fold in task.folds:

        def report(phase: str, fold: str = fold) -> None:
            status.set(phase if len(task.folds) == 1 else f"{fold}: {phase}")

        report("load_model")
        with watch.phase("load_model"):
            lm = load_model(
                spec.model.name, weights_dtype(precision, spec.model.dtype), spec.model.device, spec.model.trust_remote_code,
                revision=spec.model.revision, attn_implementation=spec.model.attn_implementation,
                device_map=spec.model.effective_device_map,
            )
        check_prompt_texts(spec.method, method_class.config_class.from_dict(spec.method_options), spec.budget.max_length,
                           lm.tokenizer)  # before any work: a text the budget cannot hold fails the run at once
        record.model = record.model or ModelInfo(**lm.describe(), precision=precision)  # every fold loads the same model
        if record.environment is not None and record.environment.gpus is None:
            record.environment.gpus, record.environment.gpu_driver, record.environment.cuda = gpu_environment(lm.devices)
        base_parameters = lm.parameter_count  # before prepare: adapters and hook modules are not the base
        guard = ModelGuard(lm.model)  # trials and the test evaluation share this model: remove() must restore it
        memory = memory or MemoryMeter(lm.device, devices=lm.devices)
        report("measure base model")
        with watch.phase("fit_effects"):  # before the method touches the model: the base side of every comparison
            base = measure_base(lm, task, fold, spec.budget, host, previous=base)
        set_seed(spec.seed)
        fold_record = FoldRecord(split_sizes=task.data_summary()[fold])
        record.folds[fold] = fold_record
        shared = SharedWork(
            root=folder.shared if spec.share_work else None,
            scope=run_scope(spec.identity or run_identity(spec), fold), owner=spec.record_stem(folder),
        )
        with tempfile.TemporaryDirectory(prefix="lofit-bench-") as work:
            context = FitContext(
                lm, task, fold, spec.budget, spec.seed, Path(work), progress,
                on_phase=lambda name: report(f"fit: {name}"), shared_work=shared, inputs=dict(spec.inputs),
            )
            report("fit")
            try:
                with memory.phase("fit"), watch.phase("fit"), computing_in(precision, lm.device):
                    method, fold_record.fit, fold_record.tuning = fit_method(
                        spec, method_class, task, fold, lm, context, folder, guard
                    )
                    check_finite_outputs(method, lm)  # an overflowing edit is a failed run, not a score
            finally:
                fold_record.shared_work = [SharedWorkUse(**use) for use in shared.records()]
            record.method.config = method.config.to_dict()
            for name, seconds in context.phases.seconds.items():
                fit_phases[name] = fit_phases.get(name, 0.0) + seconds
            fold_record.train_ids = [example.id for example in context.training_examples()] if method.uses_training_data else []
        scorer = Scorer(
            method.evaluation_model(), lm.tokenizer, spec.budget.eval_batch_size, progress,
            capabilities=method.capabilities,
        )
        report("evaluate")
        with memory.phase("evaluate"), watch.phase("evaluate"), computing_in(precision, lm.device):
            result = task.evaluate(scorer, fold, "test", limit=spec.budget.eval_examples)
        check_finite_metrics(result.metrics, fold)
        fold_record.eval_size = result.size
        fold_record.eval_ids = list(result.example_ids)
        fold_record.eval_tokens = scorer.tokens_processed
        fold_record.per_example = list(result.per_example)
        fold_record.evaluation_details = result.details or None
        report("side effects")
        with watch.phase("fit_effects"):
            measure_fitted(base, method, spec.budget, fold_record)
        record.artifacts_error = save_artifacts(method, artifacts / fold) or record.artifacts_error
        fold_record.trainable_parameters = method.trainable_parameters()
        if record.trainable_parameters is None:  # the run's figure is its first fold's; each fold keeps its own
            record.trainable_parameters = TrainableParameters(
                count=fold_record.trainable_parameters,
                percent_of_base=100.0 * fold_record.trainable_parameters / base_parameters,
                stored_values=method.stored_values(),
                base_parameters=base_parameters,
            )
        method.remove()
        guard.verify(spec.method, f"after the run (fold {fold})" if len(task.folds) > 1 else "after the run")
        fold_record.metrics = dict(result.metrics)  # only once the model is known to be uncontaminated
        model_check_seconds += guard.seconds
        del lm, method, scorer, context, guard  # the context and the guard hold the model too
        release_model_memory()  # before the next fold loads its own copy
    record.metrics = _average_over_folds(record.folds)
    seconds = watch.to_dict()
    record.timings = Timings(
        load_model=seconds.get("load_model", 0.0),
        fit=seconds.get("fit", 0.0),
        evaluate=seconds.get("evaluate", 0.0),
        fit_effects=seconds.get("fit_effects", 0.0),
        total_s=round(sum(watch.seconds.values()), 3),
        fit_phases=fit_phase_table(fit_phases, watch.seconds.get("fit", 0.0)),
        model_check=round(model_check_seconds, 3),
    )
    eval_tokens = sum(fold.eval_tokens for fold in record.folds.values())
    # Tokens and seconds of the trainings that made the final model (the chosen trial's when tuned).
    trainings = [fold.fit.get("training") or {} for fold in record.folds.values()]
    train_tokens = sum(training.get("tokens", 0) for training in trainings)
    train_seconds = sum(training.get("seconds", 0.0) for training in trainings)
    record.throughput = Throughput(
        train_tokens=train_tokens,
        train_tokens_per_s=round(train_tokens / train_seconds, 1) if train_tokens and train_seconds else None,
        eval_tokens=eval_tokens,
        eval_tokens_per_s=round(eval_tokens / watch.seconds["evaluate"], 1) if watch.seconds.get("evaluate") else None,
    )
    record.memory = Memory(**memory.to_dict()) if memory else None
    record.artifacts = folder.relative(artifacts)


def fit_method(
    spec: RunSpec, method_class: type[Method], task: Any, fold: str, lm: Any, context: FitContext, folder: RunFolder,
    guard: ModelGuard | None = None,
) -> tuple[Method, dict[str, Any], dict[str, Any]]:
    """The fitted method of one fold, with its fit record and tuning record: tuned on the dev
    split when the budget says so and the method declares something the user left free
    (:mod:`lofit_bench.sweep.tuning`), else one fit with the method's own values. ``guard`` checks
    the model after each tuning trial's ``remove()``."""
    plan = TuningPlan.for_run(method_class, spec.method_options, task, lm) if spec.budget.tune else None
    if plan is None or not plan.space:
        filled, sources = untuned_fill(method_class, spec.method_options, task, lm)
        method = method_class.from_options({**filled, **spec.method_options})
        method.prepare(lm)
        if plan is None:
            note = {"mode": "off", "note": "budget.tune is false: the method's default (paper) values"}
        else:
            fixed = ", ".join(sorted(declared_space(method_class.config_class))) or "no field"
            note = {"mode": "on", "trials_run": 0, "note": f"nothing to tune (declares {fixed}; set by the user or none)"}
        if filled:  # a task the method has no values of its own for (a plugin task)
            note |= {"filled": filled, "sources": sources}
        return method, method.fit(context), note
    check_removed = (lambda when: guard.verify(spec.method, when)) if guard is not None else None
    if spec.tuning_seed is not None:
        return fit_with_values_of_first_seed(spec, method_class, plan, task, fold, lm, context, folder, check_removed)
    tuned = run_tuner(spec, method_class, plan, task, fold, folder, check_removed).tune(lm, context)
    return tuned.method, tuned.fit, tuned.record


def _average_over_folds(folds: dict[str, FoldRecord]) -> dict[str, float | None]:
    """Unweighted mean over folds (the paper averages TruthfulQA's two folds)."""
    names = next(iter(folds.values())).metrics.keys()
    return {name: sum(fold.metrics[name] for fold in folds.values()) / len(folds) for name in names}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")

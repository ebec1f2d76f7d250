"""Sweeps: plan every (method, task, seed) run of a command, then run the ones not done yet.

A run's record is written atomically as soon as it ends, so a later failure never loses it;
a failed run is recorded with its error and the sweep goes on. What one run is lives in
:mod:`lofit_bench.sweep.spec`, how one run executes in :mod:`lofit_bench.sweep.worker`, and where
runs execute (child processes, this process, Ray) in :mod:`lofit_bench.sweep.executors`.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lofit_bench.budget import Budget
from lofit_bench.errors import DiskFull, UserError, warn
from lofit_bench.metrics import format_metric
from lofit_bench.plugin_boundary import plugin_code
from lofit_bench.plugins import get_host
from lofit_bench.records.run_folder import RunFolder
from lofit_bench.records.store import read_record, save_record
from lofit_bench.sweep.console import SweepConsole, verbose
from lofit_bench.sweep.executors import execute, executor_class
from lofit_bench.sweep.folder_lock import holding_out_folder_lock
from lofit_bench.sweep.grid import budget_points, declared_axes, method_configs
from lofit_bench.sweep.identity import model_source_fingerprint, run_identity
from lofit_bench.sweep.preflight import check_before_runs
from lofit_bench.sweep.run_inputs import check_sources, resolve_inputs, source_task
from lofit_bench.sweep.schedule import expected_cost, longest_first
from lofit_bench.sweep.spec import TUNE_PER, ModelSettings, RunSpec
from lofit_bench.sweep.worker import execute_run

__all__ = [
    "ModelSettings", "RunFolder", "RunOutcome", "RunSpec", "check_output_folder", "execute_run",
    "model_source_fingerprint", "plan_sweep", "run_identity", "run_sweep",
]


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
    tune_per: str = "fold",
    share_work: bool = True,
    method_grid: dict[str, dict[str, list[Any]]] | None = None,
    budget_axis: dict[str, list[Any]] | None = None,
) -> list[RunSpec]:
    """Validate every name up front (one clear error for all unknown ones), then expand.
    ``tune_storage``: an Optuna storage URL for every run's trials (None: SQLite per run).
    ``tune_per``: ``fold`` tunes each (method, task, fold) once, on the first seed, and the
    other seeds train once with its values; ``seed`` tunes every seed. ``share_work`` False:
    no run reads or writes the shared frozen-model work (``--no-shared-work``).
    ``method_grid`` (method -> field -> values) gives one config per combination and
    ``budget_axis`` (budget field -> values) one budget per point (:mod:`lofit_bench.sweep.grid`)."""
    if tune_per not in TUNE_PER:
        raise UserError(f"unknown --tune-per {tune_per!r}; use one of {', '.join(TUNE_PER)}")
    host = get_host()
    method_classes = dict(zip(methods, host.methods.resolve(methods), strict=True))
    for task_name, task_class in zip(tasks, host.tasks.resolve(tasks), strict=True):
        with plugin_code("task", task_name, "reading its splits (the task's constructor and data_summary())"):
            task_class().data_summary()  # reads every split: a missing or broken file fails here
        trained = [name for name, cls in method_classes.items() if cls.uses_training_data]
        if task_class.objective == "none" and trained:
            raise UserError(
                f"task {task_name} provides no training data, but method(s) {', '.join(trained)} train; "
                "use it with fit-free methods such as zero-shot"
            )
    for task_class in host.tasks.resolve(list(budget.also_eval)):  # retention tasks (budget.also_eval)
        task_class().data_summary()
    method_options = method_options or {}
    method_grid = method_grid or {}
    budget_axis = budget_axis or {}
    for what, given in (("options", method_options), ("a grid", method_grid)):
        for name in given:
            if name not in method_classes:
                raise UserError(f"{what} were given for method {name!r}, which is not in --methods ({', '.join(methods)})")
    configs = {name: method_configs(method_options.get(name, {}), method_grid.get(name, {})) for name in method_classes}
    budgets = [Budget.from_dict(point) for point in budget_points(budget.to_dict(), budget_axis)]
    for name, options_list in configs.items():
        for options in options_list:
            with plugin_code("method", name, f"its config ({method_classes[name].config_class.__name__} with the given options)"):
                method_classes[name].config_class.from_dict(options)  # fail now, not after an hour
            for point in budgets:
                check_before_runs({name: method_classes[name]}, {name: options}, point, model, seeds)
    model_fingerprint = model_source_fingerprint(model)
    seed_list = list(dict.fromkeys(seeds or list(budget.seeds)))
    tuning_seed = seed_list[0] if tune_per == "fold" and budget.tune and len(seed_list) > 1 else None
    specs = [
        RunSpec(method, task, seed, point, model, dict(options), tune_storage=tune_storage, share_work=share_work,
                tuning_seed=tuning_seed if method_classes[method].search_space(set(options)) else None,
                axes=declared_axes(method, method_grid.get(method, {}), budget_axis))
        for method in dict.fromkeys(methods)
        for options in configs[method]
        for point in budgets
        for task in dict.fromkeys(tasks)
        for seed in seed_list
    ]
    check_sources(specs)
    return [dataclasses.replace(spec, identity=run_identity(spec, model_fingerprint)) for spec in specs]


def check_output_folder(out: RunFolder | Path) -> None:
    folder = RunFolder.of(out)
    try:
        folder.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder.root, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(f"cannot write to output folder {folder}: {error.strerror or error}; choose another --out") from None
    for inner in (folder.records, folder.root / folder.ARTIFACTS):  # the folders runs write into
        try:
            inner.mkdir(exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=inner, prefix=".write-test-"):
                pass
        except OSError as error:
            raise UserError(f"cannot write to {inner}: {error.strerror or error}; fix its permissions or choose another --out") from None


@holding_out_folder_lock
def run_sweep(
    specs: list[RunSpec],
    out: RunFolder | Path,
    force: bool = False,
    progress: bool = True,
    echo=print,
    executor: str = "process",
    jobs: int = 1,
    ray_address: str | None = None,
    quiet: bool = False,
    live: bool | None = None,
    trackers: list[str] | None = None,
) -> list[RunOutcome]:
    """Run every spec, skipping those whose record already says ``ok`` (unless ``force``).

    Each record is written atomically the moment its run ends, so an interrupted sweep
    (Ctrl-C, kill -9) loses only the runs in flight, and rerunning it resumes where it stopped.
    See :mod:`lofit_bench.sweep.executors` for where runs execute. ``progress`` turns on the runs'
    own progress bars; the console (:mod:`lofit_bench.sweep.console`) prints one line per finished
    run and, on a terminal (``live``), a status line; ``quiet`` prints nothing. Each saved
    record is also sent to the experiment ``trackers`` (:mod:`lofit_bench.sweep.tracking`).
    """
    folder = RunFolder.of(out)
    check_output_folder(folder)
    in_process = executor_class(executor).in_process  # an unknown name fails here, before any run
    labels = {spec.key: f"{spec.method} on {spec.task} (seed {spec.seed}, {spec.model.name})" for spec in specs}
    outcomes: dict[str, RunOutcome] = {}
    pending = []
    console = SweepConsole(len(specs), folder, echo=(lambda *_: None) if quiet else echo, live=False if quiet else live,
                           costs=_expected_costs(specs, folder), jobs=jobs if not in_process else 1)
    with console:
        for spec in specs:
            path = spec.record_path(folder)
            if not force and _finished(path):
                console.skipped(labels[spec.key], f"already done, skipped ({path.name}; --force reruns)")
                outcomes[spec.key] = RunOutcome(spec, "skipped", path)
            else:
                pending.append(spec)
                folder.status(path.stem).unlink(missing_ok=True)  # left by a killed sweep
                console.submitted(path.stem, labels[spec.key])
        if pending and not quiet:
            where = "in this process" if in_process else f"{executor} executor, {jobs} at a time"
            logs = "" if in_process or verbose() else f"; each run's own output goes to {folder.logs}"
            echo(f"running {len(pending)} run(s) ({where}{logs})")
        # Runs that read another run's heads (head_source=run:TASK) go once their source finished.
        waves = [[spec for spec in pending if source_task(spec) is None], [spec for spec in pending if source_task(spec)]]
        if jobs > 1 and not in_process:  # jobs finish together: the longest runs go first
            waves = [longest_first(wave) for wave in waves]
        for spec, record in _execute_waves(waves, specs, folder, executor, jobs, progress, ray_address):
            saved = save_record(spec.record_path(folder), record)
            path = saved or Path("(printed on stderr)")
            if trackers:
                from lofit_bench.sweep.tracking import track_record

                track_record(record, saved, folder.root, trackers)
            if record.ok:
                summary = ", ".join(_metric_text(name, value) for name, value in (record.metrics or {}).items())
                truncated = sum((fold.fit.get("training") or {}).get("examples_over_max_length", 0) for fold in record.folds.values())
                if truncated:  # said where the user looks, not only in the run's log
                    warn(
                        f"{labels[spec.key]}: {truncated} training example(s) were cut to the budget's max_length "
                        f"{spec.budget.max_length} (raise it with --budget-set max_length=N; recorded as "
                        "examples_over_max_length)"
                    )
                console.finished(path.stem, labels[spec.key], f"{summary} ({record.timings.total_s:.0f} s)",
                                 seconds=record.timings.total_s)
                outcomes[spec.key] = RunOutcome(spec, "ok", path)
            else:
                error = record.error
                where = f"raised in plugin {error.plugin}; " if error.plugin else ""
                failure = f"FAILED: {error.type}: {error.message} ({where}recorded in {path})"
                console.finished(path.stem, labels[spec.key], failure)
                if quiet:  # an error is said even then
                    print(f"lofit-bench: {labels[spec.key]}: {failure}", file=sys.stderr)
                outcomes[spec.key] = RunOutcome(spec, "failed", path, f"{error.type}: {error.message}")
            if record.error is not None and record.error.disk_full:
                raise DiskFull(
                    f"the disk is full ({labels[spec.key]} failed writing: {record.error.message}; its record is "
                    f"kept in {path}); the sweep stopped. Free space and rerun the same command: finished runs are "
                    "skipped and the rest resume"
                )
            if record.artifacts_error and record.artifacts_error.disk_full:
                raise DiskFull(
                    f"the disk is full (saving the artefacts of {path.name}, whose record is kept); the sweep "
                    "stopped. Free space and rerun the same command: finished runs are skipped and the rest resume"
                )
    return [outcomes[spec.key] for spec in specs]


def _expected_costs(specs: list[RunSpec], folder: RunFolder) -> dict[str, float]:
    """Record stem -> expected cost (the schedule's) for the console's ETA; {} when a cost
    cannot be computed (the ETA then falls back to the sweep's pace)."""
    sizes: dict[tuple, int] = {}
    try:
        return {spec.record_stem(folder): expected_cost(spec, sizes) for spec in specs}
    except Exception:  # noqa: BLE001 - the ETA is a courtesy; a sweep never fails for it
        return {}


def _execute_waves(waves: list[list[RunSpec]], specs: list[RunSpec], folder: RunFolder, *arguments: Any):
    """Each wave's (spec, record) pairs, a wave starting when the one before it ended; a later
    wave's runs get their inputs from the earlier waves' records."""
    for index, wave in enumerate(waves):
        if index:
            wave = [resolve_inputs(spec, specs, folder) for spec in wave]
        if wave:
            yield from execute(wave, folder, *arguments)


def _finished(path: Path) -> bool:
    if not path.exists():
        return False
    record, problem = read_record(path)
    if record is None:
        warn(f"{path} is not a readable record ({problem}); that run is done again and its record replaced")
        return False
    return record.ok


def _metric_text(name: str, value: float | None) -> str:
    """A metric as the console prints it: fractions in percent, as every report table does."""
    return f"{name} {format_metric(name, value)}" if value is not None else f"{name} -"


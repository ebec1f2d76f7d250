"""Sweeps: plan every (method, task, seed) run of a command, then run the ones not done yet.

A run's record is written atomically as soon as it ends, so a later failure never loses it;
a failed run is recorded with its error and the sweep goes on. What one run is lives in
:mod:`lofit_bench.run_spec`, how one run executes in :mod:`lofit_bench.run_one`, and where
runs execute (child processes, this process, Ray) in :mod:`lofit_bench.executors`.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lofit_bench.budget import Budget
from lofit_bench.console import LOGS_FOLDER, SweepConsole, status_path, verbose
from lofit_bench.errors import DiskFull, UserError, warn
from lofit_bench.executors import execute
from lofit_bench.lock import holding_out_folder_lock
from lofit_bench.plugin_boundary import plugin_code
from lofit_bench.plugins import get_host
from lofit_bench.preflight import check_before_runs
from lofit_bench.records import RECORDS_FOLDER, read_record, save_record
from lofit_bench.run_one import ARTIFACTS_FOLDER, execute_run
from lofit_bench.run_spec import ModelSettings, RunSpec, model_source_fingerprint, run_identity
from lofit_bench.schedule import longest_first

__all__ = [
    "ARTIFACTS_FOLDER", "ModelSettings", "RunOutcome", "RunSpec", "check_output_folder", "execute_run",
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
) -> list[RunSpec]:
    """Validate every name up front (one clear error for all unknown ones), then expand.
    ``tune_storage``: an Optuna storage URL for every run's trials (None: SQLite per run)."""
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
    method_options = method_options or {}
    for name, options in method_options.items():
        if name not in method_classes:
            raise UserError(f"options were given for method {name!r}, which is not in --methods ({', '.join(methods)})")
        with plugin_code("method", name, f"its config ({method_classes[name].config_class.__name__} with the given options)"):
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
        if jobs > 1 and executor != "inline":  # jobs finish together: the longest runs go first
            pending = longest_first(pending)
        for spec, record in execute(pending, out_dir, executor, jobs, progress, ray_address):
            path = save_record(spec.record_path(out_dir), record) or Path("(printed on stderr)")
            if record.ok:
                summary = ", ".join(_metric_text(name, value) for name, value in (record.metrics or {}).items())
                truncated = sum((fold.fit.get("training") or {}).get("examples_over_max_length", 0) for fold in record.folds.values())
                if truncated:  # said where the user looks, not only in the run's log
                    warn(
                        f"{labels[spec.key]}: {truncated} training example(s) were cut to the budget's max_length "
                        f"{spec.budget.max_length} (raise it with --budget-set max_length=N; recorded as "
                        "examples_over_max_length)"
                    )
                console.finished(path.stem, labels[spec.key], f"{summary} ({record.timings.total_s:.0f} s)")
                outcomes[spec.key] = RunOutcome(spec, "ok", path)
            else:
                error = record.error
                where = f"raised in plugin {error.plugin}; " if error.plugin else ""
                failure = f"FAILED: {error.type}: {error.message} ({where}recorded in {path})"
                console.finished(path.stem, labels[spec.key], failure)
                if quiet:  # an error is said even then
                    print(f"lofit-bench: {labels[spec.key]}: {failure}", file=sys.stderr)
                outcomes[spec.key] = RunOutcome(spec, "failed", path, f"{error.type}: {error.message}")
            if record.artifacts_error and record.artifacts_error.disk_full:
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
    return record.ok


def _metric_text(name: str, value: float | None) -> str:
    return f"{name} {value:.3f}" if value is not None else f"{name} -"


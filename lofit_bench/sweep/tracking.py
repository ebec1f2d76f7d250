"""Experiment tracking: each finished run, sent to MLflow, TensorBoard or W&B from its record.

``lofit-bench run --report-to mlflow,tensorboard,wandb`` (off by default) sends every record the
moment it is saved, so a long sweep can be watched in the tracker researchers already use.
One tracked run per (method, task, seed, fold, trial), named after the record
(``lofit--clutrr--seed42--1a2b3c4d/main/trial-2``), plus the fold's final fit with the chosen
values (``.../main``): the budget, the method's config and the tuned values as params, the
dev scores (per epoch while pruning, then final) and the training loss per step as metrics,
the record itself as an artifact. Everything works offline: an MLflow file store under
``OUT/mlruns`` (or ``MLFLOW_TRACKING_URI``), TensorBoard event files under ``OUT/tensorboard``,
W&B in offline mode under ``OUT/wandb`` (``WANDB_MODE`` overrides; ``wandb sync`` uploads).

A tracker that fails costs one warning line; the record and the sweep are never at stake.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lofit_bench.errors import LofitBenchWarning, UserError
from lofit_bench.records.record import RunRecord

#: Tracker name -> the pip extra that installs it.
TRACKERS = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}
#: Longest parameter value sent (a tracker's limit is at least this).
MAX_PARAM_LENGTH = 500


class TrackingWarning(LofitBenchWarning):
    """A tracker failed; the run's record is saved all the same."""


@dataclass
class TrackedRun:
    """What one tracked run holds, built from a record alone (so any tracker gets the same)."""

    name: str
    #: The record's file stem: every tracked run of one record shares it (W&B group, MLflow tag).
    group: str
    params: dict[str, str]
    #: (metric, value, step).
    metrics: list[tuple[str, float, int]] = field(default_factory=list)
    status: str = "ok"
    record_file: Path | None = None


def parse_trackers(value: str) -> list[str]:
    """``mlflow,tensorboard`` -> the trackers, each known (an unknown one is a UserError)."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown or not names:
        raise UserError(f"unknown tracker {', '.join(unknown) or repr(value)}: expected one or more of {', '.join(TRACKERS)} (comma-separated)")
    return list(dict.fromkeys(names))


def check_trackers(names: list[str]) -> None:
    """Fail before any run when a tracker's library is missing (one line saying what to install)."""
    import importlib.util

    modules = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}
    missing = [name for name in names if importlib.util.find_spec(modules[name]) is None]
    if missing:
        extras = ",".join(TRACKERS[name] for name in missing)
        raise UserError(f"--report-to {','.join(missing)} needs its library: pip install 'lofit-bench[{extras}]'")


def _flat(prefix: str, values: dict[str, Any] | None) -> dict[str, str]:
    out = {}
    for key, value in (values or {}).items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[f"{prefix}.{key}"] = text[:MAX_PARAM_LENGTH]
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def tracked_runs(record: RunRecord, record_file: Path | None = None) -> list[TrackedRun]:
    """Every tracked run of one record: each tuning trial of each fold, then the fold's final fit."""
    stem = record_file.stem if record_file else record.file_name.removesuffix(".json")
    common = {"method": record.method.name, "task": record.task.name, "seed": str(record.seed),
              "model": record.model_name, "record": stem}
    common |= _flat("budget", record.budget) | _flat("config", record.method.config or record.method.options)
    runs = []
    for fold, values in (record.folds or {"main": None}).items():
        tuning = (values.tuning if values else None) or {}
        for trial in sorted(tuning.get("trials") or [], key=lambda trial: trial.get("number", 0)):
            run = TrackedRun(f"{stem}/{fold}/trial-{trial.get('number')}", stem,
                             common | {"fold": fold, "trial": str(trial.get("number")), "state": str(trial.get("state"))}
                             | _flat("tuned", trial.get("values")), status=str(trial.get("state")), record_file=record_file)
            for epoch, score in (trial.get("intermediate") or {}).items():
                if _number(score) is not None:
                    run.metrics.append((f"dev_intermediate/{tuning.get('metric')}", float(score), int(epoch)))
            for name, score in (trial.get("dev") or {}).items():
                if _number(score) is not None:
                    run.metrics.append((f"dev/{name}", float(score), 0))
            if _number(trial.get("final_loss")) is not None:
                run.metrics.append(("train/final_loss", float(trial["final_loss"]), 0))
            runs.append(run)
        final = TrackedRun(f"{stem}/{fold}", stem, common | {"fold": fold, "trial": "final"} | _flat("chosen", tuning.get("chosen")),
                           status=record.status, record_file=record_file)
        fit = (values.fit if values else None) or {}
        for step, loss in enumerate((fit.get("training") or {}).get("losses") or []):
            if _number(loss) is not None:
                final.metrics.append(("train/loss", float(loss), step))
        for name, score in ((values.metrics if values else None) or {}).items():
            if _number(score) is not None:
                final.metrics.append((f"test/{name}", float(score), 0))
        runs.append(final)
    return runs


# -- trackers --------------------------------------------------------------------------------------
def send_to_mlflow(runs: list[TrackedRun], out_dir: Path) -> None:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the offline file store the docs promise
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or (out_dir / "mlruns").resolve().as_uri())
    name = f"lofit-bench {out_dir.resolve().name}"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    now = int(time.time() * 1000)
    for run in runs:
        created = client.create_run(experiment_id, run_name=run.name, tags={"lofit_bench.record": run.group})
        run_id = created.info.run_id
        client.log_batch(run_id, metrics=[Metric(key, value, now, step) for key, value, step in run.metrics],
                         params=[Param(key, value) for key, value in run.params.items()],
                         tags=[RunTag("lofit_bench.status", run.status)])
        if run.record_file is not None and run.record_file.exists():
            client.log_artifact(run_id, str(run.record_file))
        client.set_terminated(run_id, "FAILED" if run.status in ("failed", "fail") else "FINISHED")


def send_to_tensorboard(runs: list[TrackedRun], out_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for run in runs:
        folder = out_dir / "tensorboard" / run.name
        with SummaryWriter(log_dir=str(folder)) as writer:
            writer.add_text("params", "\n".join(f"    {key} = {value}" for key, value in sorted(run.params.items())))
            for key, value, step in run.metrics:
                writer.add_scalar(key, value, step)
        if run.record_file is not None and run.record_file.exists():
            shutil.copy2(run.record_file, folder / run.record_file.name)  # TensorBoard keeps no artifacts: beside the events


def send_to_wandb(runs: list[TrackedRun], out_dir: Path) -> None:
    os.environ.setdefault("WANDB_SILENT", "true")  # the sweep's console stays the sweep's
    import wandb

    mode = os.environ.get("WANDB_MODE", "offline")
    (out_dir / "wandb").mkdir(parents=True, exist_ok=True)
    for run in runs:
        tracked = wandb.init(project=os.environ.get("WANDB_PROJECT", "lofit-bench"), name=run.name, group=run.group,
                             config=run.params, dir=str(out_dir), mode=mode, reinit="create_new")
        try:
            for key in {key for key, _, _ in run.metrics}:
                tracked.define_metric(key, step_metric=f"{key}/step")
            for key, value, step in run.metrics:
                tracked.log({key: value, f"{key}/step": step})
            if run.record_file is not None and run.record_file.exists():
                tracked.save(str(run.record_file), base_path=str(run.record_file.parent), policy="now")
        finally:
            tracked.finish(exit_code=1 if run.status in ("failed", "fail") else 0)


SENDERS = {"mlflow": send_to_mlflow, "tensorboard": send_to_tensorboard, "wandb": send_to_wandb}


def track_record(record: RunRecord, record_file: Path | None, out_dir: Path, trackers: list[str]) -> None:
    """Send one saved record to every tracker; a tracker's failure is one warning, never the sweep's."""
    runs = tracked_runs(record, record_file)
    for tracker in trackers:
        try:
            SENDERS[tracker](runs, out_dir)
        except Exception as error:  # noqa: BLE001 - a tracker's bug must not cost the sweep
            warnings.warn(f"--report-to {tracker}: could not send {runs[0].group if runs else 'a record'} "
                          f"({type(error).__name__}: {error}); the record is saved", TrackingWarning, stacklevel=2)

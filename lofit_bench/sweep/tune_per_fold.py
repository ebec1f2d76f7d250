"""``--tune-per fold``: the values tuned on the first seed's run of a (method, task, fold),
then one fit with them on every other seed.

The paper's protocol (hyper-parameters chosen on dev, then the seeds) and common practice:
a second seed costs one fit, not a second search. The tuning is shared work
(:mod:`lofit_bench.shared_work`, kind ``tuned-values``, keyed by the first seed's run key and
the fold): whichever run of the (method, task, fold) gets there first tunes *as the first
seed's run* (its seed, its Optuna study, its trials), and the others wait on the entry's
lock and read the values back, so the values never depend on which process ran first, and a
parallel sweep never tunes one (method, task, fold) twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lofit_bench.method import FitContext, Method
from lofit_bench.records.run_folder import RunFolder
from lofit_bench.sweep.identity import run_identity
from lofit_bench.sweep.spec import RunSpec
from lofit_bench.sweep.tuning import BEST_STATE, Tuner, TuningPlan, sqlite_storage


def run_tuner(
    spec: RunSpec, method_class: type[Method], plan: TuningPlan, task: Any, fold: str, folder: RunFolder,
    check_removed: Callable[[str], None] | None = None,
) -> Tuner:
    """The tuner of one run's fold: its study and saved best state named after the run's record;
    ``check_removed`` verifies the model after each trial's ``remove()`` (the model guard)."""
    stem = spec.record_stem(folder)
    return Tuner(
        method_class, plan, task, fold,
        storage=spec.tune_storage or sqlite_storage(folder, stem),
        study_name=f"{stem}-{fold}",
        state_dir=folder.tuning_state(stem, fold, BEST_STATE),
        seed=spec.seed,
        check_removed=check_removed,
    )


def fit_with_values_of_first_seed(
    spec: RunSpec, method_class: type[Method], plan: TuningPlan, task: Any, fold: str, lm: Any, context: FitContext,
    folder: RunFolder, check_removed: Callable[[str], None] | None = None,
) -> tuple[Method, dict[str, Any], dict[str, Any]]:
    """``--tune-per fold``: the values tuned on the first seed's run of this (method, task,
    fold), then one fit with them on this run's seed. The tuning is shared work
    (``tuned-values``): whichever run of the (method, task, fold) gets there first tunes, *as
    the first seed's run* (its seed, its study and its trials), and the others wait for it and
    read the values back, so the values never depend on which process ran first."""
    from transformers import set_seed

    first = spec if spec.seed == spec.tuning_seed else dataclasses.replace(spec, seed=spec.tuning_seed, identity=None)
    if first is not spec:
        fingerprint = (spec.identity or {}).get("model_fingerprint")
        first = dataclasses.replace(first, identity=run_identity(first, fingerprint))
    kept: dict[str, Any] = {}

    def tune() -> tuple[dict, dict[str, Any]]:
        first_context = context if first is spec else dataclasses.replace(
            context, seed=first.seed, reused=[], work_dir=context.work_dir / f"tuning-seed-{first.seed}",
        )
        set_seed(first.seed)
        tuned = run_tuner(first, method_class, plan, task, fold, folder, check_removed).tune(lm, first_context)
        if first is spec:
            kept.update(method=tuned.method, fit=tuned.fit)
        else:
            tuned.method.remove()
            if check_removed is not None:  # the first seed's chosen trial ran on this run's model
                check_removed(f"after tuning on seed {first.seed}")
        return {}, {"record": tuned.record}

    fields = {"run": first.key, "fold": fold}
    if context.on_phase is not None:  # waits here while another process tunes the first seed
        context.on_phase(f"values tuned on seed {first.seed}")
    shared = context.shared_work
    if not shared.enabled:  # --no-shared-work shares no frozen-model work, but the seeds still share one tuning
        shared = dataclasses.replace(shared, root=folder.shared, uses=[])
    _, meta = shared.fetch("tuned-values", fields, tune)
    if shared is not context.shared_work:
        context.shared_work.uses.append(shared.uses[-1])
    tuned_by = shared.uses[-1].created_by
    first_record = meta["record"]
    if kept:  # this run is the first seed's and tuned here: its chosen trial is the model
        return kept["method"], kept["fit"], first_record | {"tune_per": "fold", "tuned_on_seed": first.seed}
    chosen = dict(first_record["chosen"])
    method = method_class.from_options({**plan.fixed, **chosen})
    method.prepare(lm)
    set_seed(spec.seed)
    fit = method.fit(context)
    where = f"tuned on dev by the seed-{first.seed} run (trial {first_record['chosen_trial']} of {first_record['trials_run']})"
    record = {
        "mode": "on",
        "tune_per": "fold",
        "tuned_on_seed": first.seed,
        "tuned_by": tuned_by,
        "reused": True,
        "space": first_record.get("space"),
        "fixed": first_record.get("fixed"),
        "split": "dev",
        "metric": first_record.get("metric"),
        "first_seed_trials_run": first_record.get("trials_run"),
        "trials": [],
        "trials_run": 0,
        "trials_pruned": 0,
        "trials_failed": 0,
        "chosen": chosen,
        "sources": {name: where for name in chosen} | {name: "config (--method-set)" for name in plan.fixed},
    }
    return method, fit, record

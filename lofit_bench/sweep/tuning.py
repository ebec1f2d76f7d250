"""Tuning: one search, owned by the harness, over every method's declared space on dev.

A method declares which config fields may be tuned and over what range
(:mod:`lofit_bench.search_space`); the budget says how many trials every method gets
(``budget.trials``) and whether to tune at all (``budget.tune``). For each fold of a run:

1. An Optuna study, stored in the run's folder (``OUT/tuning/<record>.sqlite3``) or in the
   database of ``--tune-storage URL``, named after the run's key and the fold. A killed run
   finds its finished trials there and runs only the rest.
2. Sampler: TPE seeded with the run's seed, the same for every method of a sweep. The first
   trial is the method's untuned values (its config defaults, else the task's declaration, the
   paper's for the task or the method's generic value:
   :meth:`~lofit_bench.method.Method.untuned_values`, else the middle of the field's space),
   so tuning never starts worse than the untuned run and ``trials=1`` is never a random draw.
3. A trial: a fresh method with the trial's values over the user's ``--method-set`` options
   (which are fixed, never tuned), fitted on the fold's training split. After every epoch but
   the last, ``budget.prune_examples`` dev examples are scored and the median pruner stops a
   trial that is below the median of earlier trials at that epoch. A finished trial is scored
   on ``budget.dev_examples`` of the dev split. A trial whose training diverged is a failed
   trial (it spent its share of the budget); the others go on.
4. The best trial: the task's primary metric on dev, then its other metrics in order, then its
   teacher-forced ``secondary_metrics`` (which move for steering methods that never produce
   the answer format), then the earliest trial (so on a full tie the untuned values win). When
   every finished trial ties on every dev metric, the record says so (``signal``: "no signal
   on dev") and the values are not reported as chosen by dev. Its fitted state is kept (saved
   when it became the best, so a resumed run loads it) and is the model the runner evaluates,
   once, on the test split. The test split is never scored while tuning.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lofit_bench.errors import Diverged
from lofit_bench.search_space import Space, contains, range_edge
from lofit_bench.sweep.faults import check_finite_outputs

if TYPE_CHECKING:
    import optuna

    from lofit_bench.engine.models import LoadedModel
    from lofit_bench.method import FitContext, Method
    from lofit_bench.records.run_folder import RunFolder
    from lofit_bench.task import EvalResult, Task

BEST_STATE = "best"
TRIAL_FILE = "trial.json"
SAMPLER = "TPE (optuna.samplers.TPESampler, seeded with the run's seed; first trial: the untuned values)"
PRUNER = "median (optuna.pruners.MedianPruner, after 1 finished trial, from epoch 1)"


def untuned_fill(
    method_class: type[Method], options: dict[str, Any], task: Task, lm: LoadedModel | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Values for the config fields the user left at None that the method cannot resolve itself
    on ``task`` (no paper row: a plugin task; a model the paper's value does not fit): the task's
    declaration, the method's value for the loaded model ``lm`` or its generic value
    (:meth:`~lofit_bench.method.Method.untuned_values`), with their sources. A field the
    method's :meth:`default_values` covers is left to the method, which records its source."""
    config = method_class.config_class.from_dict(options)
    own = method_class.default_values(task)
    filled, sources = {}, {}
    for name, (value, source) in method_class.untuned_values(task, lm).items():
        if name in options or getattr(config, name, None) is not None:
            continue
        if name in own and own[name] == value:
            continue
        filled[name], sources[name] = value, source
    return filled, sources


@dataclass(frozen=True)
class TuningPlan:
    """What a run tunes: the space left after the user's fixed fields, and the first trial.

    ``filled``: untuned values for fields outside the space that the method cannot resolve on
    this task by itself (:func:`untuned_fill`), given to every trial; ``start_sources`` says
    where each of the first trial's values comes from."""

    space: dict[str, Space]
    start: dict[str, Any]
    fixed: dict[str, Any]
    filled: dict[str, Any] = dataclasses.field(default_factory=dict)
    start_sources: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def for_run(cls, method_class: type[Method], options: dict[str, Any], task: Task, lm: LoadedModel | None = None) -> TuningPlan:
        """The first trial is always a defined point (so ``trials=1`` is never a random draw):
        the config's value, else the untuned value, else the middle of the field's space."""
        space = method_class.search_space(set(options))
        config = method_class.config_class.from_dict(options)
        untuned = method_class.untuned_values(task, lm)
        start, sources = {}, {}
        for name, field_space in space.items():
            value, source = getattr(config, name), "the config's default"
            if value is None and name in untuned:
                value, source = untuned[name]
            if value is None or not contains(field_space, value):
                value, source = field_space.center(), "the middle of its search space"
            start[name], sources[name] = value, source
        filled, filled_sources = untuned_fill(method_class, options, task, lm)
        filled = {name: value for name, value in filled.items() if name not in space}
        sources |= {name: filled_sources[name] for name in filled}
        return cls(space, start, dict(options), filled, sources)

    def describe(self) -> dict[str, str]:
        return {name: space.describe() for name, space in self.space.items()}


@dataclass
class Tuned:
    """The tuner's answer: the chosen trial's method, prepared and fitted, and what to record."""

    method: Method
    fit: dict[str, Any]
    record: dict[str, Any]


def evaluate(method: Method, task: Task, fold: str, limit: int | None, batch_size: int, progress: bool) -> EvalResult:
    """The task's own evaluation of ``method``'s model on the dev split (never the test split)."""
    from lofit_bench.engine.scoring import Scorer

    lm = method.require_prepared()
    scorer = Scorer(method.evaluation_model(), lm.tokenizer, batch_size, progress, capabilities=method.capabilities)
    return task.evaluate(scorer, fold, "dev", limit=limit)


def sqlite_storage(folder: RunFolder, record_stem: str) -> str:
    """The default storage: one SQLite file per run under ``OUT/tuning/``."""
    database = folder.tuning_database(record_stem)
    database.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{database.resolve()}"


class Tuner:
    """Runs one fold's study (see the module docstring)."""

    def __init__(
        self,
        method_class: type[Method],
        plan: TuningPlan,
        task: Task,
        fold: str,
        storage: str,
        study_name: str,
        state_dir: Path,
        seed: int,
        check_removed: Callable[[str], None] | None = None,
    ) -> None:
        self.method_class = method_class
        #: Called after each trial's ``remove()`` with when it was (the run's ModelGuard.verify).
        self.check_removed = check_removed
        self.plan = plan
        self.task = task
        self.fold = fold
        self.storage = storage
        self.study_name = study_name
        self.state_dir = state_dir
        self.seed = seed

    @property
    def ranked_metrics(self) -> tuple[str, ...]:
        """The dev metrics trials are compared on, in order (the primary one is put first by :func:`choose`)."""
        return (*self.task.metrics, *getattr(self.task, "secondary_metrics", ()))

    def tune(self, lm: LoadedModel, template: FitContext) -> Tuned:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        budget = template.budget
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self._storage(),
            sampler=optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=max(1, budget.trials // 2)),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
            direction="maximize",
            load_if_exists=True,
        )
        resumed = self._close_interrupted(study)
        kept: tuple[int, Method, dict[str, Any]] | None = None
        while (done := len(_counted(study.get_trials(deepcopy=False)))) < budget.trials:
            self._enqueue_start(study)
            trial = study.ask()
            outcome = self._trial(study, trial, lm, template, last=done + 1 == budget.trials)
            if outcome is not None:
                kept = outcome
        trials = study.get_trials(deepcopy=False)
        best = choose(trials, self.ranked_metrics, self.task.primary_metric)
        if kept is not None and kept[0] == best.number:
            method, fit = kept[1], kept[2]
        else:
            if kept is not None:
                kept[1].remove()
                self._check_removed(f"after tuning trial {kept[0] + 1}")
            method, fit = self._restore(best, lm, template)
        self._clear_state()  # the runner saves the chosen state as the run's artefacts
        return Tuned(method, fit, self._record(trials, best, resumed, budget))

    # -- one trial -------------------------------------------------------------------------------
    def _trial(
        self, study: optuna.Study, trial: optuna.Trial, lm: LoadedModel, template: FitContext, last: bool
    ) -> tuple[int, Method, dict[str, Any]] | None:
        """Fit and score one trial; return (number, method, fit) when it is the best so far
        and the last trial (kept attached), else None (the method is removed)."""
        import optuna
        from transformers import set_seed

        budget = template.budget
        values = {name: space.suggest(trial, name) for name, space in self.plan.space.items()}
        intermediate: dict[int, float] = {}
        prunes = budget.trials > 1 and budget.prune_examples is not None
        metric = self.task.primary_metric
        method = self.method_class.from_options({**self.plan.filled, **self.plan.fixed, **values})

        def on_epoch_end(epoch: int) -> None:
            if not prunes or epoch >= budget.epochs:  # the last epoch is scored on the whole dev share
                return
            with context.phase("pruning_evaluation"):
                result = evaluate(method, self.task, self.fold, budget.prune_examples, budget.eval_batch_size, False)
            intermediate[epoch] = score = result.metrics[metric]
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"dev {metric} {score:.4f} after epoch {epoch} is below the median")

        label = f"trial {trial.number + 1}/{budget.trials}"
        context = dataclasses.replace(
            template, on_epoch_end=on_epoch_end, reused=[], work_dir=template.work_dir / f"trial-{trial.number}",
            on_phase=(lambda name: template.on_phase(f"{label} {name}")) if template.on_phase else None,
        )
        if context.on_phase is not None:
            context.on_phase("fit")
        set_seed(template.seed)  # every trial starts from the same draws
        started = time.perf_counter()
        attributes: dict[str, Any] = {"values": values}
        keep = False
        method.prepare(lm)
        try:
            try:
                fit = method.fit(context)
                check_finite_outputs(method, lm)  # an overflowing edit is a failed trial
                with context.phase("dev_evaluation"):
                    dev = evaluate(method, self.task, self.fold, budget.dev_examples, budget.eval_batch_size, template.progress)
            except optuna.TrialPruned as pruned:
                attributes.update(_trial_facts(None, intermediate, started, context), pruned=str(pruned))
                _set_attributes(trial, attributes)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            except Diverged as error:
                attributes.update(_trial_facts(None, intermediate, started, context), error=f"Diverged: {error}")
                _set_attributes(trial, attributes)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                attributes.update(_trial_facts(fit, intermediate, started, context), dev=dev.metrics, dev_examples=dev.size)
                _set_attributes(trial, attributes)
                study.tell(trial, dev.metrics[metric])
                if choose(study.get_trials(deepcopy=False), self.ranked_metrics, metric).number == trial.number:
                    self._save_best(method, trial.number, fit)
                    keep = last
        except BaseException:
            method.remove()  # the run fails with this error; the model is discarded unchecked
            raise
        if keep:
            return trial.number, method, fit
        method.remove()
        self._check_removed(f"after tuning trial {trial.number + 1}")
        return None

    def _check_removed(self, when: str) -> None:
        """The next trial and the test evaluation reuse this model: check it is as loaded."""
        if self.check_removed is not None:
            self.check_removed(when)

    # -- state of the best trial -----------------------------------------------------------------
    def _save_best(self, method: Method, number: int, fit: dict[str, Any]) -> None:
        staging = self.state_dir.with_name(self.state_dir.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        method.save(staging)
        (staging / TRIAL_FILE).write_text(json.dumps({"number": number, "fit": fit}, default=str))
        shutil.rmtree(self.state_dir, ignore_errors=True)
        staging.rename(self.state_dir)

    def _clear_state(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)
        for folder in (self.state_dir.parent, self.state_dir.parent.parent):  # fold, then run folder, if empty
            try:
                folder.rmdir()
            except OSError:
                break

    def _restore(self, best: optuna.trial.FrozenTrial, lm: LoadedModel, template: FitContext) -> tuple[Method, dict[str, Any]]:
        """The best trial's method: loaded from its saved state, or (state lost, e.g. killed
        while saving) fitted again with its values."""
        from transformers import set_seed

        values = best.user_attrs["values"]
        method = self.method_class.from_options({**self.plan.filled, **self.plan.fixed, **values})
        method.prepare(lm)
        saved = self.state_dir / TRIAL_FILE
        state = json.loads(saved.read_text()) if saved.exists() else {}
        if state.get("number") == best.number:
            method.load(self.state_dir)
            return method, state["fit"]
        set_seed(template.seed)
        context = dataclasses.replace(template, reused=[], work_dir=template.work_dir / f"refit-{best.number}")
        return method, method.fit(context) | {"refitted": "the chosen trial's saved state was missing; fitted again"}

    # -- the study -------------------------------------------------------------------------------
    def _storage(self) -> Any:
        import optuna

        if self.storage.startswith("sqlite:"):  # two runs never share a file; wait on a busy one anyway
            return optuna.storages.RDBStorage(self.storage, engine_kwargs={"connect_args": {"timeout": 60}})
        return self.storage

    def _enqueue_start(self, study: optuna.Study) -> None:
        """Queue the untuned values as the next trial unless a trial already ran (or waits) with them."""
        import optuna

        start = self.plan.start
        if not start:
            return
        for trial in study.get_trials(deepcopy=False):
            values = trial.user_attrs.get("values", {})
            if trial.state == optuna.trial.TrialState.WAITING or (
                trial in _counted([trial]) and all(values.get(name) == value for name, value in start.items())
            ):
                return
        study.enqueue_trial(start)

    @staticmethod
    def _close_interrupted(study: optuna.Study) -> int:
        """Close trials left running by a killed process as failed without an ``error``, i.e.
        interrupted (not counted; run again), and return how many finished trials there are."""
        import optuna

        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        return len(_counted(study.get_trials(deepcopy=False)))

    def _record(self, trials: list, best: Any, resumed: int, budget: Any) -> dict[str, Any]:
        rows = [_trial_row(trial) for trial in _counted(trials)]
        states = [row["state"] for row in rows]
        signal = dev_signal(rows, self.ranked_metrics)
        chosen_by = f"tuned on dev (trial {best.number} of {len(rows)})" if signal == "dev" else f"{signal}: the first trial's values kept"
        return {
            "mode": "on",
            "sampler": SAMPLER,
            "pruner": PRUNER if budget.trials > 1 and budget.prune_examples is not None else "none",
            "seed": self.seed,
            "storage": self.storage if not self.storage.startswith("sqlite:") else "sqlite:" + Path(self.storage[10:]).name,
            "study": self.study_name,
            "space": self.plan.describe(),
            "fixed": self.plan.fixed,
            "start": self.plan.start,
            "start_sources": self.plan.start_sources,
            **({"filled": self.plan.filled} if self.plan.filled else {}),
            "split": "dev",
            "metric": self.task.primary_metric,
            "dev_examples": budget.dev_examples,
            "prune_examples": budget.prune_examples,
            "trials": rows,
            "trials_run": len(rows),
            "trials_pruned": states.count("pruned"),
            "trials_failed": states.count("failed"),
            "trials_resumed": resumed,
            "chosen_trial": best.number,
            "chosen": best.user_attrs["values"],
            "range_edges": self._range_edges(best.user_attrs["values"]) if signal == "dev" else {},
            "signal": signal,
            "sources": {name: chosen_by for name in self.plan.space}
            | {name: "config (--method-set)" for name in self.plan.fixed}
            | {name: self.plan.start_sources[name] for name in self.plan.filled},
        }


    def _range_edges(self, chosen: dict[str, Any]) -> dict[str, str]:
        """Tuned field -> "lower"/"upper" for chosen values at an edge of their declared range
        (:func:`lofit_bench.search_space.range_edge`)."""
        edges = {name: range_edge(space, chosen.get(name)) for name, space in self.plan.space.items()}
        return {name: edge for name, edge in edges.items() if edge}


# -- helpers --------------------------------------------------------------------------------------
def _counted(trials: list) -> list:
    """Trials that spent budget: finished, pruned, or failed with an error of their own (a
    trial whose process was killed failed without one: it is run again)."""
    import optuna

    states = optuna.trial.TrialState
    return [
        trial for trial in trials
        if trial.state in (states.COMPLETE, states.PRUNED) or (trial.state == states.FAIL and "error" in trial.user_attrs)
    ]


def choose(trials: list, metrics: tuple[str, ...] | list[str], primary: str) -> Any:
    """The best finished trial: primary metric, then the other metrics in the task's order,
    then the earliest. Every trial failed: the run has diverged (a failed run, not a score)."""
    import optuna

    complete = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        errors = sorted({trial.user_attrs.get("error", "interrupted") for trial in trials})
        raise Diverged(f"no tuning trial finished ({len(trials)} tried): {'; '.join(errors)}")
    order = [primary, *(name for name in metrics if name != primary)]
    return max(complete, key=lambda trial: (*(float(trial.user_attrs["dev"].get(name, 0.0)) for name in order), -trial.number))


NO_SIGNAL = "no signal on dev"
ONE_TRIAL = "one finished trial"


def dev_signal(rows: list[dict[str, Any]], metrics: tuple[str, ...] | list[str]) -> str:
    """What chose the kept values: ``"dev"`` when the finished trials differ on some dev
    metric; :data:`NO_SIGNAL` when every finished trial tied on every metric (the tie rule,
    not dev, kept the first one's values); :data:`ONE_TRIAL` when there was nothing to compare."""
    complete = [row for row in rows if row["state"] == "complete"]
    if len(complete) < 2:
        return ONE_TRIAL
    scores = {tuple(float((row.get("dev") or {}).get(name, 0.0)) for name in metrics) for row in complete}
    return "dev" if len(scores) > 1 else NO_SIGNAL


def _trial_facts(fit: dict[str, Any] | None, intermediate: dict[int, float], started: float, context: FitContext) -> dict[str, Any]:
    training = (fit or {}).get("training") or {}
    return {
        "intermediate": {str(epoch): score for epoch, score in intermediate.items()},
        "seconds": round(time.perf_counter() - started, 3),
        "steps": training.get("steps"),
        "final_loss": training.get("final_loss"),
        "reused": sorted(set(context.reused)),
    }


def _set_attributes(trial: optuna.Trial, attributes: dict[str, Any]) -> None:
    for name, value in attributes.items():
        trial.set_user_attr(name, value)


def _trial_row(trial: Any) -> dict[str, Any]:
    attributes = trial.user_attrs
    return {
        "number": trial.number,
        "state": {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(trial.state.name, trial.state.name.lower()),
        "values": attributes.get("values", trial.params),
        "dev": attributes.get("dev"),
        "dev_examples": attributes.get("dev_examples"),
        "intermediate": attributes.get("intermediate", {}),
        "steps": attributes.get("steps"),
        "seconds": attributes.get("seconds"),
        "final_loss": attributes.get("final_loss"),
        "reused": attributes.get("reused", []),
        **({"pruned": attributes["pruned"]} if "pruned" in attributes else {}),
        **({"error": attributes["error"]} if "error" in attributes else {}),
    }


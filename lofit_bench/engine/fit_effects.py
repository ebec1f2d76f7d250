"""What a fit did beyond its target task, measured per fold against the base model.

The runner calls :func:`measure_base` on the freshly loaded model, before the method
touches it, and :func:`measure_fitted` on the fitted model after the test evaluation; both
read the same model object, so no second copy of the model is ever loaded. Together they
fill the fold record's ``side_effects`` (:mod:`lofit_bench.engine.side_effects`), ``retention``
(:mod:`lofit_bench.engine.retention`), ``locality`` (:mod:`lofit_bench.engine.locality`) and
``inference_speed`` (:mod:`lofit_bench.engine.inference_speed`; measured with the side effects,
on prompts cut from the same passages). What does not depend on the fold (the base model's
held-out log-probs, retention scores and speed) is measured once per run and reused by
later folds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lofit_bench.engine.inference_speed import fitted_speed, speed_prompts, tokens_per_second
from lofit_bench.engine.locality import answers, locality, locality_prompts
from lofit_bench.engine.retention import evaluate_every_fold, retention
from lofit_bench.engine.scoring import Scorer
from lofit_bench.engine.side_effects import (
    BaseDistribution,
    base_distribution,
    heldout_texts,
    measure_side_effects,
)

if TYPE_CHECKING:
    from lofit_bench.budget import Budget
    from lofit_bench.engine.models import LoadedModel
    from lofit_bench.method import Method
    from lofit_bench.records.record import FoldRecord
    from lofit_bench.task import Task


@dataclass
class RetentionBase:
    """One retention task and the base model's scores on it."""

    task: Task
    metrics: dict[str, float]
    examples: int


@dataclass
class BaseMeasures:
    """The base model's side of every comparison of one fold."""

    distribution: BaseDistribution | None = None
    retention: dict[str, RetentionBase] = field(default_factory=dict)
    locality_prompts: list[str] = field(default_factory=list)
    locality_answers: list[str] = field(default_factory=list)
    speed_prompts: list[str] = field(default_factory=list)
    tokens_per_s: float | None = None


def measure_base(
    lm: LoadedModel, task: Task, fold: str, budget: Budget, host: Any, previous: BaseMeasures | None = None
) -> BaseMeasures:
    """Measure the unmodified model (call before ``method.prepare``); ``previous`` (an
    earlier fold's) supplies what does not depend on the fold."""
    scorer = Scorer(lm.model, lm.tokenizer, budget.eval_batch_size)
    base = BaseMeasures()
    if previous is not None:
        base.distribution, base.retention = previous.distribution, previous.retention
        base.speed_prompts, base.tokens_per_s = previous.speed_prompts, previous.tokens_per_s
    else:
        if budget.side_effect_texts:
            texts = heldout_texts(budget.side_effect_texts)
            base.distribution = base_distribution(lm.model, lm.tokenizer, texts, budget.eval_batch_size)
            base.speed_prompts = speed_prompts(budget.side_effect_texts)
            base.tokens_per_s = tokens_per_second(scorer, base.speed_prompts)
        for name in budget.also_eval:
            if name == task.name:  # the task trained on is scored by the run itself, not retained
                continue
            other = host.tasks.get(name)()
            metrics, examples = evaluate_every_fold(other, scorer, budget.eval_examples)
            base.retention[name] = RetentionBase(other, metrics, examples)
    base.locality_prompts = locality_prompts(task, fold, budget.eval_examples)
    if base.locality_prompts:
        base.locality_answers = answers(scorer, base.locality_prompts)
    return base


def measure_fitted(base: BaseMeasures, method: Method, budget: Budget, fold_record: FoldRecord) -> None:
    """Measure the fitted model the same ways and record the comparisons in ``fold_record``."""
    lm = method.require_prepared()
    model = method.evaluation_model()
    scorer = Scorer(model, lm.tokenizer, budget.eval_batch_size, capabilities=method.capabilities)
    if base.distribution is not None:
        fold_record.side_effects = measure_side_effects(base.distribution, model, method.capabilities)
    if base.tokens_per_s is not None:
        fold_record.inference_speed = fitted_speed(method, base.tokens_per_s, base.speed_prompts, budget.eval_batch_size, lm.tokenizer)
    for name, reference in base.retention.items():
        fitted, _ = evaluate_every_fold(reference.task, scorer, budget.eval_examples)
        fold_record.retention[name] = retention(reference.task, reference.metrics, fitted, reference.examples)
    if base.locality_prompts:
        fold_record.locality = locality(base.locality_answers, answers(scorer, base.locality_prompts))

"""The task interface: splits, training examples, evaluation and metrics.

A task never knows which method is attached: it receives a :class:`~lofit_bench.engine.scoring.Scorer`
around whatever model the method produced and returns metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from lofit_bench.errors import UserError

# "none": the task has no training data (lm_eval:... tasks); only fit-free methods run on it.
Objective = Literal["sft", "dpo", "none"]
Split = Literal["train", "dev", "test"]


@dataclass(frozen=True)
class SFTExample:
    """A supervised example: the loss is taken on ``completion`` tokens only."""

    id: str
    prompt: str
    completion: str


@dataclass(frozen=True)
class PreferenceExample:
    """A DPO triple: ``chosen`` should be preferred over ``rejected`` after ``prompt``."""

    id: str
    prompt: str
    chosen: str
    rejected: str


TrainingExample = SFTExample | PreferenceExample


@dataclass
class EvalResult:
    """Metrics of one evaluation, plus what each example scored (for paired tests and audits).

    Each ``per_example`` entry holds the example's ``id`` and its value for every metric under
    the metric's name (e.g. ``{"id": ..., "exact_match": True, "prediction": ...}``); the
    report's paired significance tests read them.
    """

    metrics: dict[str, float]
    example_ids: list[str]
    per_example: list[dict[str, Any]] = field(default_factory=list)
    #: What the record should keep about how the evaluation ran (an external harness's
    #: version and task configs, for instance); JSON-serialisable.
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.example_ids)


SPLITS: tuple[Split, ...] = ("train", "dev", "test")


class Task(ABC):
    """Base class of every task plugin.

    Subclasses set the class attributes and implement the three abstract methods. Data is
    read from ``data_dir`` (the copy shipped with the package by default); nothing is
    downloaded.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    objective: ClassVar[Objective]
    evaluation: ClassVar[Literal["multiple_choice", "generation"]]
    metrics: ClassVar[tuple[str, ...]]
    primary_metric: ClassVar[str]
    #: Teacher-forced measures computed beside ``metrics`` (log-likelihoods, not the paper's
    #: metric): they move for methods that never produce the answer format, so the tuner
    #: breaks ties on them after ``metrics``; the report keeps them out of the main table and
    #: the lm-eval export leaves them out.
    secondary_metrics: ClassVar[tuple[str, ...]] = ()
    folds: ClassVar[tuple[str, ...]] = ("main",)
    license: ClassVar[str] = ""
    #: Untuned values a method should start from on this task, by method name, e.g.
    #: ``{"lora": {"learning_rate": 3e-4}}``: they come before the method's own defaults
    #: (:meth:`~lofit_bench.method.Method.untuned_values`); the tuner's first trial uses them.
    method_values: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else self.default_data_dir()

    @classmethod
    def default_data_dir(cls) -> Path:
        """Where the task's files live when no ``data_dir`` is given."""
        from lofit_bench.data import DATA_ROOT

        return DATA_ROOT / cls.name

    @classmethod
    def source_fingerprint(cls) -> str | None:
        """A hash of what this task reads from outside its plugin (a user's folder of task files),
        which the run's identity must include so that a changed input is run again rather than
        skipped as done; None (the default) when everything it reads ships with its plugin, whose
        distribution and version the identity holds already."""
        return None

    def check_fold(self, fold: str) -> None:
        if fold not in self.folds:
            raise UserError(f"task {self.name!r} has no fold {fold!r}; its folds are {', '.join(self.folds)}")

    @abstractmethod
    def split_ids(self, fold: str, split: Split) -> list[str]:
        """Ids of the examples in one split, in the order the protocol uses them."""

    @abstractmethod
    def training_examples(self, fold: str, split: Split = "train") -> list[TrainingExample]:
        """SFT pairs (``objective == 'sft'``) or DPO triples (``'dpo'``) of a split."""

    @abstractmethod
    def evaluate(self, scorer: Any, fold: str, split: Split = "test", limit: int | None = None) -> EvalResult:
        """Score the model behind ``scorer`` on the first ``limit`` examples of a split."""

    def data_summary(self) -> dict[str, Any]:
        """Split sizes per fold, recorded with every run."""
        return {
            fold: {split: len(self.split_ids(fold, split)) for split in SPLITS}
            for fold in self.folds
        }


def check_limit(limit: int | None) -> None:
    """``Task.evaluate``'s ``limit``: unset (every example) or a positive count."""
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of examples, not {limit}")


class GenerationTask(Task):
    r"""A task trained with SFT on (prompt, completion) and scored on greedy generations.

    A subclass reads a split into items (anything with an ``id`` and a ``prompt``) in
    :meth:`load_split`, names each item's SFT :meth:`completion`, and :meth:`judge`\ s one
    generation: the example's entry with a value for every name in ``metrics`` (a metric is
    the mean of its values). Splits are read once and cached.
    """

    objective: ClassVar[Objective] = "sft"
    evaluation: ClassVar[Literal["multiple_choice", "generation"]] = "generation"
    #: Greedy decoding stops at EOS or after this many new tokens.
    max_new_tokens: ClassVar[int] = 16

    def __init__(self, data_dir: Path | None = None) -> None:
        super().__init__(data_dir)
        self._items_by_split: dict[str, list[Any]] = {}

    @abstractmethod
    def load_split(self, split: Split) -> list[Any]:
        """The items of one split, in the order the protocol uses them."""

    @abstractmethod
    def completion(self, item: Any) -> str:
        """The SFT target for ``item`` (the trainer appends EOS)."""

    @abstractmethod
    def judge(self, item: Any, generation: Any) -> dict[str, Any]:
        """``item``'s entry for one :class:`~lofit_bench.engine.scoring.Generation`: prediction, gold and metric values."""

    def teacher_forced_requests(self, item: Any) -> list[tuple[str, str]]:
        """(context, continuation) pairs whose log-likelihoods give ``item``'s
        ``secondary_metrics``; none by default."""
        return []

    def judge_teacher_forced(self, item: Any, log_likelihoods: Sequence[float]) -> dict[str, Any]:
        """``item``'s values of ``secondary_metrics`` from its requests' summed log-probs, in order."""
        return {}

    def items(self, fold: str, split: Split) -> list[Any]:
        """The items of ``fold``'s ``split``. :meth:`load_split` has no fold, so a task with
        several folds overrides this method (else every fold would get the same items, and
        their average would count one split twice)."""
        self.check_fold(fold)
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if len(self.folds) > 1 and type(self).items is GenerationTask.items:
            raise UserError(
                f"task {self.name!r} declares {len(self.folds)} folds but reads its items with load_split(split), "
                "which has no fold; override items(fold, split) to give each fold its own splits"
            )
        if split not in self._items_by_split:
            self._items_by_split[split] = self.load_split(split)
        return self._items_by_split[split]

    def split_ids(self, fold: str, split: Split) -> list[str]:
        return [item.id for item in self.items(fold, split)]

    def training_examples(self, fold: str, split: Split = "train") -> list[SFTExample]:
        return [
            SFTExample(id=item.id, prompt=item.prompt, completion=self.completion(item))
            for item in self.items(fold, split)
        ]

    def evaluate(self, scorer: Any, fold: str, split: Split = "test", limit: int | None = None) -> EvalResult:
        from lofit_bench.metrics import mean

        check_limit(limit)
        items = self.items(fold, split)[:limit]
        generations = scorer.generate(
            [item.prompt for item in items], max_new_tokens=self.max_new_tokens, description=f"{self.name} {split}"
        )
        per_example = [
            {"id": item.id, **self.judge(item, generation), "generation": generation.new_text}
            for item, generation in zip(items, generations, strict=True)
        ]
        capabilities = getattr(scorer, "capabilities", None)
        secondary = self.secondary_metrics if capabilities is None or capabilities.scores_continuations else ()
        if secondary:
            self._add_teacher_forced(scorer, items, per_example, split)
        return EvalResult(
            metrics={name: mean(entry[name] for entry in per_example) for name in (*self.metrics, *secondary)},
            example_ids=[item.id for item in items],
            per_example=per_example,
        )

    def _add_teacher_forced(self, scorer: Any, items: list[Any], per_example: list[dict[str, Any]], split: str) -> None:
        """Score every item's teacher-forced requests in one call and add their values to its entry."""
        request_lists = [self.teacher_forced_requests(item) for item in items]
        scores = scorer.loglikelihoods(
            [request for requests in request_lists for request in requests], description=f"{self.name} {split} (teacher-forced)"
        )
        position = 0
        for item, requests, entry in zip(items, request_lists, per_example, strict=True):
            entry.update(self.judge_teacher_forced(item, scores[position : position + len(requests)]))
            position += len(requests)


class MultipleChoiceTask(Task):
    r"""A task scored by comparing the summed log-probs of each item's candidate continuations.

    A subclass lists a split's :meth:`items` (anything with an ``id``), gives each item one
    :meth:`choice_context` and its :meth:`choices` (continuations scored after that context,
    leading space included), and turns the choices' log-likelihoods, in :meth:`choices`
    order, into the item's entry in :meth:`score_choices`: a value for every name in
    ``metrics`` (a metric is the mean of its values) plus anything worth keeping. Training
    (``objective``, :meth:`training_examples`) is the subclass's own.

    :meth:`evaluate` and the lm-eval export (:mod:`lofit_bench.lmeval.export`) both score
    through these methods, so the two cannot disagree on the rule.
    """

    evaluation: ClassVar[Literal["multiple_choice", "generation"]] = "multiple_choice"

    @abstractmethod
    def items(self, fold: str, split: Split) -> list[Any]:
        """The items of one split, in the order the protocol uses them."""

    @abstractmethod
    def choice_context(self, item: Any) -> str:
        """The text every choice of ``item`` is scored after."""

    @abstractmethod
    def choices(self, item: Any) -> list[str]:
        """``item``'s candidate continuations, exactly as scored (``" " + answer``, say)."""

    @abstractmethod
    def score_choices(self, item: Any, log_likelihoods: Sequence[float]) -> dict[str, Any]:
        """``item``'s entry from its choices' summed log-probs (one per choice, in order)."""

    def split_ids(self, fold: str, split: Split) -> list[str]:
        return [item.id for item in self.items(fold, split)]

    def evaluate(self, scorer: Any, fold: str, split: Split = "test", limit: int | None = None) -> EvalResult:
        """Score every choice of the split in one call, so the scorer can batch the choices
        of an item over their shared context."""
        from lofit_bench.metrics import mean

        check_limit(limit)
        items = self.items(fold, split)[:limit]
        choice_lists = [self.choices(item) for item in items]
        requests = [
            (self.choice_context(item), choice)
            for item, choices in zip(items, choice_lists, strict=True)
            for choice in choices
        ]
        scores = scorer.loglikelihoods(requests, description=f"{self.name} {fold}/{split}")
        per_example, position = [], 0
        for item, choices in zip(items, choice_lists, strict=True):
            item_scores = list(scores[position : position + len(choices)])
            position += len(choices)
            per_example.append({"id": item.id, **self.score_choices(item, item_scores)})
        return EvalResult(
            metrics={name: mean(entry[name] for entry in per_example) for name in self.metrics},
            example_ids=[item.id for item in items],
            per_example=per_example,
        )

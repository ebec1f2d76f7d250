"""The task interface: splits, training examples, evaluation and metrics.

A task never knows which method is attached: it receives a :class:`~lofit_bench.scoring.Scorer`
around whatever model the method produced and returns metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

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
    folds: ClassVar[tuple[str, ...]] = ("main",)
    license: ClassVar[str] = ""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else self.default_data_dir()

    @classmethod
    def default_data_dir(cls) -> Path:
        """Where the task's files live when no ``data_dir`` is given."""
        from lofit_bench.data import DATA_ROOT

        return DATA_ROOT / cls.name

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
            fold: {split: len(self.split_ids(fold, split)) for split in ("train", "dev", "test")}
            for fold in self.folds
        }


Item = TypeVar("Item")


def check_limit(limit: int | None) -> None:
    """``Task.evaluate``'s ``limit``: unset (every example) or a positive count."""
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of examples, not {limit}")


def evaluate_by_generation(
    scorer: Any,
    items: Sequence[Item],
    *,
    item_id: Callable[[Item], str],
    prompt: Callable[[Item], str],
    judge: Callable[[Item, Any], dict[str, Any]],
    metrics: Sequence[str],
    max_new_tokens: int,
    description: str,
) -> EvalResult:
    """Greedy generation for every item, each judged on its own; a metric is the mean of its field.

    ``judge(item, generation)`` returns the example's entry (prediction, gold and one value
    per name in ``metrics``); the id and the generated text are added here.
    """
    from lofit_bench.metrics import mean

    generations = scorer.generate([prompt(item) for item in items], max_new_tokens=max_new_tokens, description=description)
    per_example = [
        {"id": item_id(item), **judge(item, generation), "generation": generation.new_text}
        for item, generation in zip(items, generations, strict=True)
    ]
    return EvalResult(
        metrics={name: mean(entry[name] for entry in per_example) for name in metrics},
        example_ids=[item_id(item) for item in items],
        per_example=per_example,
    )

"""Search spaces: which config fields a method lets the harness tune, and over what range.

A method declares a space next to the field it tunes, in the field's metadata, so a
third-party plugin does it the same way as a built-in::

    learning_rate: float | None = field(
        default=None,
        metadata={"help": "AdamW learning rate", "tune": LogUniform(1e-5, 1e-2)},
    )

The harness's tuner (:mod:`lofit_bench.sweep.tuning`) samples every declared field the user did not
fix with ``--method-set``; a method whose space depends on other fields (RepE's layer rank is
moot once ``repe.layer`` is set) overrides :meth:`lofit_bench.method.Method.search_space`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lofit_bench.errors import UserError

if TYPE_CHECKING:
    import optuna

TUNE_KEY = "tune"


@dataclass(frozen=True)
class LogUniform:
    """A positive number drawn uniformly on a log scale (learning rates, coefficients)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (0 < self.low < self.high and math.isfinite(self.high)):
            raise ValueError(f"LogUniform needs 0 < low < high, got ({self.low}, {self.high})")

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=True)

    def describe(self) -> str:
        return f"log-uniform [{self.low:g}, {self.high:g}]"

    def center(self) -> float:
        """The geometric mean: the first trial's value when nothing else gives one."""
        return math.sqrt(self.low * self.high)


@dataclass(frozen=True)
class Uniform:
    """A number drawn uniformly from [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"Uniform needs low < high, got ({self.low}, {self.high})")

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high)

    def describe(self) -> str:
        return f"uniform [{self.low:g}, {self.high:g}]"

    def center(self) -> float:
        return (self.low + self.high) / 2


@dataclass(frozen=True)
class IntRange:
    """A whole number from low to high, both included (layer ranks, ranks of adapters)."""

    low: int
    high: int
    step: int = 1

    def __post_init__(self) -> None:
        if not self.low <= self.high or self.step < 1:
            raise ValueError(f"IntRange needs low <= high and step >= 1, got ({self.low}, {self.high}, {self.step})")

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step)

    def describe(self) -> str:
        return f"integer {self.low}..{self.high}" + (f" step {self.step}" if self.step != 1 else "")

    def center(self) -> int:
        return self.low + self.step * ((self.high - self.low) // self.step // 2)


@dataclass(frozen=True)
class Choice:
    """One of a few listed values (head counts, strengths on a grid)."""

    options: tuple[Any, ...]

    def __init__(self, *options: Any) -> None:
        if not options:
            raise ValueError("Choice needs at least one option")
        object.__setattr__(self, "options", tuple(options))

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.options))

    def describe(self) -> str:
        return "one of " + ", ".join(repr(option) for option in self.options)

    def center(self) -> Any:
        """The first option (list the usual value first)."""
        return self.options[0]


Space = LogUniform | Uniform | IntRange | Choice


def declared_space(config_class: type) -> dict[str, Space]:
    """Field name -> space for every field of ``config_class`` whose metadata declares ``tune``."""
    space: dict[str, Space] = {}
    for item in dataclasses.fields(config_class):
        declared = item.metadata.get(TUNE_KEY)
        if declared is None:
            continue
        if not isinstance(declared, LogUniform | Uniform | IntRange | Choice):
            raise UserError(
                f"{config_class.__name__}.{item.name} declares tune={declared!r}; use one of "
                "LogUniform, Uniform, IntRange, Choice from lofit_bench.search_space"
            )
        space[item.name] = declared
    return space


def contains(space: Space, value: Any) -> bool:
    """Whether ``value`` lies in ``space`` (a default enqueued as the first trial must)."""
    if isinstance(space, Choice):
        return value in space.options
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(space, IntRange):
        return isinstance(value, int) and space.low <= value <= space.high and (value - space.low) % space.step == 0
    return space.low <= value <= space.high


#: How close to an end of its range a tuned value may sit before the report flags it: a tenth of
#: the range, measured on the range's own scale (decades for a log-uniform range).
EDGE_FRACTION = 0.1


def range_edge(space: Space, value: Any) -> str | None:
    """"lower" or "upper" when ``value`` lies within :data:`EDGE_FRACTION` of that end of
    ``space``: the tuner's best value pressed against the range says the range, not the method,
    decided it (the optimum may lie outside). None inside, and for a :class:`Choice` (its
    options are not a scale)."""
    if isinstance(space, Choice) or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(space, LogUniform):
        if value <= 0:
            return None
        low, high, point = math.log(space.low), math.log(space.high), math.log(value)
    else:
        low, high, point = float(space.low), float(space.high), float(value)
    if high <= low:
        return None
    position = (point - low) / (high - low)
    if position <= EDGE_FRACTION:
        return "lower"
    if position >= 1 - EDGE_FRACTION:
        return "upper"
    return None

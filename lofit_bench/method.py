"""The method interface: what every way of steering or fine-tuning a model provides.

A method is a small class with a dataclass config. The runner drives it through one life:
``prepare`` on a loaded model -> ``fit`` on a task's training data under the budget ->
evaluation of ``evaluation_model()`` -> ``save`` -> ``remove`` (the model is left as it was).
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from lofit_bench.config_fields import check_fields
from lofit_bench.errors import UserError
from lofit_bench.measure import Stopwatch
from lofit_bench.prompt_positions import find_prompt_listeners
from lofit_bench.search_space import TUNE_KEY, Space, declared_space
from lofit_bench.shared_work import SharedWork

if TYPE_CHECKING:
    from lofit_bench.budget import Budget
    from lofit_bench.engine.models import LoadedModel
    from lofit_bench.sweep.preflight import ModelShape
    from lofit_bench.task import Task, TrainingExample

CONFIG_FILE = "method_config.json"


@dataclass
class MethodConfig:
    """Base of method configs. Subclasses add fields with ``metadata={"help": ...}``, bounds in
    the metadata (``minimum``, ``exclusive_minimum``, ``maximum``, ``exclusive_maximum``,
    ``choices``, ``min_items``, ``min_length``; :mod:`lofit_bench.config_fields`), ``prompt_text``
    for a text that becomes part of the model's input (checked against the budget's
    ``max_length``: :func:`lofit_bench.sweep.preflight.check_prompt_texts`) and a search
    space under ``tune`` (:mod:`lofit_bench.search_space`). Every field is checked against its
    type annotation and bounds when the config is built; a subclass's ``__post_init__`` calls
    ``super().__post_init__()`` first and adds only the rules between fields."""

    #: The option prefix in error messages (``lofit`` in ``lofit.heads``); set from the method's name.
    option_prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self, self.option_prefix)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MethodConfig:
        """The config from ``values`` (field -> value); an unknown field is named as the user
        types it (``lora.lr``) with the known ones."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise UserError(
                f"unknown option(s) for {cls.__name__}: {', '.join(_option_names(cls, unknown))}. "
                f"Known: {', '.join(_option_names(cls, list(fields))) or '(none)'}"
            )
        for name, value in values.items():  # hyper-parameters must be finite (JSON lets Infinity and NaN in)
            if _has_non_finite(value):
                raise UserError(f"option {name} of {cls.__name__} must be finite, got {value!r}")
        return cls(**values)

    @classmethod
    def describe_fields(cls) -> list[dict[str, Any]]:
        """Name, type, default, help and tuned space of each field (for `lofit-bench list methods -v`)."""
        rows = []
        for item in dataclasses.fields(cls):
            default = item.default if item.default is not dataclasses.MISSING else (
                item.default_factory() if item.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
            )
            space = item.metadata.get(TUNE_KEY)
            rows.append(
                {"name": item.name, "type": str(item.type), "default": default, "help": item.metadata.get("help", ""),
                 "tune": space.describe() if space is not None else None}
            )
        return rows


def _option_names(config_class: type, names: list[str]) -> list[str]:
    """``names`` as `--method-set` takes them: ``lora.lr`` for a config whose method is known."""
    prefix = getattr(config_class, "option_prefix", None)
    return [f"{prefix}.{name}" if prefix else name for name in names]


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list | tuple):
        return any(_has_non_finite(item) for item in value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    return False


@dataclass(frozen=True)
class Capabilities:
    """What a method's attached edits need from the harness's forward calls.

    A forward call cannot say what a method's hooks depend on, so the method says it here
    (:attr:`Method.capabilities`) and the runner and the tuner pass it on to the
    :class:`~lofit_bench.engine.scoring.Scorer` and :func:`~lofit_bench.engine.training.train`. The defaults
    suit edits that act the same on every position of every call from inside the model
    (LoFiT, ITI, RED, LoRA, full fine-tuning, RepE's reading vector): the Scorer may then
    encode a shared context or opening once and continue from its KV cache.
    """

    #: A hook on the whole model's forward reads each call's inputs as a sequence that starts
    #: at its first token (RepE's contrast vector rebuilds its instructed copies from them); a
    #: cached shared prefix would hide that start, so the Scorer takes no cached-prefix shortcut.
    watches_whole_forward: bool = False
    #: The edits hang on the model as a :class:`~lofit_bench.prompt_positions.PromptListener`
    #: (LoReFT) and must be told where each call's prompt is: the trainer and the Scorer
    #: declare it around every call, and the Scorer then scores each request in one call
    #: (no cached-prefix shortcut, whose cache would have to know the prompt's end in advance).
    needs_prompt_positions: bool = False
    #: The edits are defined on teacher-forced scoring of a continuation (right-padded batches of
    #: prompt + continuation). False for an edit that acts on the last position of each call
    #: only (RepE's contrast vector): a generation task then skips its teacher-forced secondary
    #: metrics for that method instead of failing the run.
    scores_continuations: bool = True

    @property
    def allows_cached_prefix(self) -> bool:
        """Whether the Scorer may reuse a KV cache of a shared context or opening."""
        return not (self.watches_whole_forward or self.needs_prompt_positions)

    @classmethod
    def of_model(cls, model: nn.Module) -> Capabilities:
        """The default for a caller that declares nothing (a plain model, an lm-eval adapter):
        prompt positions when the model carries a PromptListener, nothing else. A hook on the
        whole forward cannot be read off a model; a method that has one declares it."""
        return cls(needs_prompt_positions=bool(find_prompt_listeners(model)))


@dataclass
class FitContext:
    """What a method may use while it trains or fits: data, budget and where to write."""

    lm: LoadedModel
    task: Task
    fold: str
    budget: Budget
    seed: int
    work_dir: Path
    progress: bool = False
    #: Wall seconds per named part of the fit (recorded as the run's ``timings.fit_phases``).
    phases: Stopwatch = field(default_factory=Stopwatch)
    #: Told the name of each part as it starts (the sweep's console shows it).
    on_phase: Callable[[str], None] | None = None
    #: Called by :func:`lofit_bench.engine.training.train` after each epoch with the epoch's number
    #: (1-based): the tuner scores a dev subset there and may stop a hopeless trial. A method
    #: passes it to the training whose result it is scored by (LoFiT: stage 2, not stage 1).
    on_epoch_end: Callable[[int], None] | None = None
    #: Values computed once and shared by every tuning trial of this fold (see :meth:`reuse`).
    shared: dict[Any, Any] = field(default_factory=dict)
    #: Keys of :meth:`reuse` calls this fit answered from ``shared`` (recorded per trial).
    reused: list[str] = field(default_factory=list)
    #: Frozen-model work shared across the runs of a sweep (:mod:`lofit_bench.shared_work`):
    #: ``shared_work.fetch(kind, fields, compute)``. Disabled (computes every time) by default.
    shared_work: SharedWork = field(default_factory=SharedWork)
    #: Other runs' outputs this run reads, resolved by the sweep (``heads:TASK`` -> a heads.json;
    #: LoFiT's ``head_source=run:TASK``). See :attr:`lofit_bench.sweep.spec.RunSpec.inputs`.
    inputs: dict[str, str] = field(default_factory=dict)

    def reuse(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()``, once per fold: a later tuning trial with the same ``key`` gets the
        same value back without computing it again (ITI's probes, RepE's layer scan, LoFiT's
        stage 1 when only stage-2 values differ). The key must name everything the value
        depends on besides the fold's data, the model and the seed."""
        if key in self.shared:
            self.reused.append(str(key[0]))
            return self.shared[key]
        value = compute()
        self.shared[key] = value
        return value

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a part of the fit (e.g. ``"head_selection"``); repeated names add up."""
        if self.on_phase is not None:
            self.on_phase(name)
        with self.phases.phase(name):
            yield

    def training_examples(self) -> list[TrainingExample]:
        """The task's training split for this fold, cut to the budget's size."""
        examples = self.task.training_examples(self.fold, "train")
        return examples[: self.budget.train_examples] if self.budget.train_examples else examples

    def dev_examples(self) -> list[TrainingExample]:
        examples = self.task.training_examples(self.fold, "dev")
        return examples[: self.budget.dev_examples] if self.budget.dev_examples else examples


class Method(ABC):
    """Base class of every method plugin."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    #: False for methods that never look at the training split (zero-shot).
    uses_training_data: ClassVar[bool] = True
    #: Rough seconds of one fit per character of training text, next to LoRA's (1.0). Only
    #: orders parallel runs, longest first (:mod:`lofit_bench.sweep.schedule`); never recorded.
    relative_cost: ClassVar[float] = 1.0
    #: What the attached edits need from scoring and training (:class:`Capabilities`). Read
    #: from the instance once ``fit`` (or ``load``) has attached them; a method whose needs
    #: depend on its config or fitted state overrides it with a property (RepE).
    capabilities: Capabilities = Capabilities()

    @classmethod
    def search_space(cls, fixed: set[str]) -> dict[str, Space]:
        """What the harness's tuner may sample: the fields whose metadata declares ``tune``
        (:mod:`lofit_bench.search_space`), less those the user fixed (``fixed``: the names set
        with ``--method-set``). Override when one field makes another moot."""
        return {name: space for name, space in declared_space(cls.config_class).items() if name not in fixed}

    @classmethod
    def default_values(cls, task: Task) -> dict[str, Any]:
        """Values an untuned run uses for config fields left at None on ``task`` (a paper's
        table, an objective's usual rate); the tuner's first trial starts from them. Default: none."""
        return {}

    #: Starting values for a task :meth:`default_values` has none for (a plugin task), by the
    #: task's training objective (``"sft"``, ``"dpo"``); ``generic_source`` says where they come from.
    generic_values: ClassVar[dict[str, dict[str, Any]]] = {}
    generic_source: ClassVar[str] = ""

    @classmethod
    def model_values(cls, task: Task, lm: LoadedModel) -> dict[str, tuple[Any, str]]:
        """Untuned values that depend on the model (a paper's rate calibrated at 7B parameters
        that is wrong at 135M), each with its source; they win over :meth:`default_values`.
        Default: none."""
        return {}

    @classmethod
    def untuned_values(cls, task: Task, lm: LoadedModel | None = None) -> dict[str, tuple[Any, str]]:
        """Each field's untuned value on ``task`` with its source, first found of: the task's own
        declaration for this method (``Task.method_values``), :meth:`model_values` for the loaded
        model ``lm`` (when given), :meth:`default_values` (the paper's table),
        :attr:`generic_values` for the task's objective. Fields none gives are absent."""
        found: dict[str, tuple[Any, str]] = {}
        for name, value in cls.generic_values.get(task.objective, {}).items():
            found[name] = (value, cls.generic_source or "the method's generic value")
        for name, value in cls.default_values(task).items():
            found[name] = (value, "the method's default for the task")
        if lm is not None:
            found |= cls.model_values(task, lm)
        declared = getattr(task, "method_values", {}).get(cls.name, {})
        for name, value in declared.items():
            found[name] = (value, f"declared by task {task.name}")
        return found

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__ and "name" in cls.__dict__ and "option_prefix" not in cls.config_class.__dict__:
            cls.config_class.option_prefix = cls.name  # errors name the option as users type it

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.lm: LoadedModel | None = None

    # -- life cycle ------------------------------------------------------------------------
    @abstractmethod
    def prepare(self, lm: LoadedModel) -> None:
        """Attach hooks or wrap the model; nothing is trained yet."""

    @classmethod
    def check_before_runs(cls, config: MethodConfig, shape: ModelShape) -> None:
        """Checks of ``config`` against the model's architecture numbers, run before any model
        loads (head counts, a layer index, a file the config names); raise UserError. Default: none."""
        return None

    def fit(self, context: FitContext) -> dict[str, Any]:
        """Train (or fit without gradients) under ``context.budget``.

        Returns what should be recorded about the fit (chosen hyper-parameters...); a method
        that trains puts its :class:`~lofit_bench.engine.training.TrainResult` dict under
        ``"training"``. The default is a method with nothing to fit.
        """
        return {}

    def evaluation_model(self) -> nn.Module:
        """The module the task scores (the prepared model, hooks attached, by default)."""
        return self.require_prepared().model

    @contextmanager
    def merged(self) -> Iterator[bool]:
        """The fitted edits folded into the model's weights for the duration, as the method
        would be served (LoFiT's and ITI's shifts into ``o_proj``'s bias, LoRA's adapters into
        the base weights); yields whether it merged. Default: it cannot, the model runs as is."""
        yield False

    @abstractmethod
    def trainable_parameters(self) -> int:
        """Exact count of trained values (numel of the trained tensors)."""

    def stored_values(self) -> int:
        """Values the method stores besides trained ones (e.g. ITI's fitted directions)."""
        return 0

    @abstractmethod
    def remove(self) -> None:
        """Detach everything ``prepare`` attached; the model is exactly as before."""

    # -- persistence ---------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write the config as JSON; methods with state add safetensors files beside it."""
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"method": self.name, "config": self.config.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))

    def load(self, directory: Path) -> None:
        """Restore state written by :meth:`save` onto the prepared model."""
        payload = json.loads((directory / CONFIG_FILE).read_text())
        if payload.get("method") != self.name:
            raise UserError(f"{directory} holds a {payload.get('method')!r} state, not {self.name!r}")
        self.config = self.config_class.from_dict(payload["config"])

    # -- helpers -----------------------------------------------------------------------------
    def require_prepared(self) -> LoadedModel:
        if self.lm is None:
            raise RuntimeError(f"method {self.name!r} is used before prepare()")
        return self.lm

    @classmethod
    def from_options(cls, options: dict[str, Any] | None = None) -> Method:
        return cls(cls.config_class.from_dict(options or {}))


def resolve_paper_defaults(
    method: str, task: str, configured: dict[str, Any], paper: dict[str, dict[str, Any]], source: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Hyper-parameters as a run uses them: the config's value where set, else the paper's for the task.

    ``configured`` maps field names to the config's values (None: unset); ``paper`` maps task
    names to the paper's values; ``source`` names the table (recorded beside each value). A
    task the paper has no value for must get it from the user, and the error says how.
    """
    missing = [name for name, value in configured.items() if value is None and name not in paper.get(task, {})]
    if missing:
        raise UserError(
            f"{method} has no {' or '.join(missing)} for task {task!r} ({source} covers {', '.join(sorted(paper))}); "
            f"tune it (budget.tune on, the default: `--tune on`) or set "
            f"{', '.join(f'{method}.{name}' for name in missing)} with --method-set {method}.FIELD=VALUE"
        )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, value in configured.items():
        if value is not None:
            values[name], sources[name] = value, "config"
        else:
            values[name], sources[name] = paper[task][name], source
    return values, sources

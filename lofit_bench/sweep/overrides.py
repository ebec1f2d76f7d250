"""The sweep a sweep file describes, with the values given next to it taking precedence.

``lofit-bench run --config sweep.toml --seeds 1,2`` runs the file's sweep with seeds 1 and 2:
a value given explicitly (a flag, or an argument of :func:`merge_sweep_settings` in Python)
replaces the file's, the mapping-valued settings are merged key by key (the explicit value
wins for a key in both), and a setting given nowhere takes the built-in default. The command
line and the Python API both go through :func:`merge_sweep_settings`, so a script gets the
same sweep as the command it stands for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lofit_bench.budget import Budget, get_budget
from lofit_bench.errors import UserError
from lofit_bench.sweep.spec import ModelSettings, RunSpec
from lofit_bench.sweep.sweep_file import SweepConfig

#: The built-in values of settings given neither in the sweep file nor explicitly.
DEFAULT_BUDGET = "paper"
DEFAULT_EXECUTOR = "process"
DEFAULT_JOBS = 1
DEFAULT_TUNE_PER = "fold"


@dataclass
class SweepOverrides:
    """Values given explicitly next to a sweep file (the command line's flags). None, or an
    empty mapping, means not given: the file's value (or the default) stands."""

    methods: list[str] | None = field(default=None, metadata={"help": "--methods: replaces the file's methods"})
    tasks: list[str] | None = field(default=None, metadata={"help": "--tasks: replaces the file's tasks"})
    budget: str | None = field(default=None, metadata={"help": "--budget: the budget preset's name"})
    budget_overrides: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "--budget-set, --tune, --also-eval: budget fields, merged over the file's budget_overrides"})
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "help": "--method-set: method -> field -> value, merged over the file's options of that method"})
    method_grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict, metadata={
        "help": "--grid: method -> field -> values, merged over the file's grid of that method"})
    budget_axis: dict[str, list[Any]] = field(default_factory=dict, metadata={
        "help": "--budget-axis: budget field -> values, merged over the file's axes"})
    models: list[str] | None = field(default=None, metadata={
        "help": "--model (or --model-args pretrained=...): replaces the file's models"})
    model_args: str | dict[str, Any] | None = field(default=None, metadata={
        "help": "--model-args: model settings, over the file's dtype, device and model_args"})
    model_fields: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "--dtype, --device, --gpus-per-run, --precision, --trust-remote-code: over everything else"})
    seeds: list[int] | None = field(default=None, metadata={"help": "--seeds: replaces the file's seeds"})
    tune_per: str | None = field(default=None, metadata={"help": "--tune-per: fold or seed"})
    out: Path | None = field(default=None, metadata={"help": "--out: the run folder"})
    executor: str | None = field(default=None, metadata={"help": "--executor: where runs execute"})
    jobs: int | None = field(default=None, metadata={"help": "--jobs: runs at once"})


@dataclass
class SweepSettings:
    """One sweep, every setting decided: what :func:`plan` expands into runs."""

    methods: list[str]
    tasks: list[str]
    budget: Budget
    method_options: dict[str, dict[str, Any]]
    method_grid: dict[str, dict[str, list[Any]]]
    budget_axis: dict[str, list[Any]]
    models: list[ModelSettings]
    seeds: list[int] | None
    tune_per: str
    #: The run folder, when the file or the caller named one (None: the caller picks).
    out: Path | None
    executor: str
    jobs: int
    #: The settings given explicitly (the overrides' field names), for messages and tests.
    given: frozenset[str] = frozenset()

    def plan(self, tune_storage: str | None = None, share_work: bool = True) -> list[RunSpec]:
        """Every run of the sweep (:func:`lofit_bench.sweep.runner.plan_sweep` per model)."""
        from lofit_bench.sweep.runner import plan_sweep

        return [
            spec for model in self.models
            for spec in plan_sweep(self.methods, self.tasks, self.budget, model, self.seeds, self.method_options,
                                   tune_storage=tune_storage, tune_per=self.tune_per, share_work=share_work,
                                   method_grid=self.method_grid, budget_axis=self.budget_axis)
        ]


def merge_sweep_settings(config: SweepConfig | None = None, overrides: SweepOverrides | None = None) -> SweepSettings:
    """The sweep of ``config`` (a sweep file; None: an empty one) with ``overrides`` taking
    precedence. ``--methods`` narrowing a file keeps only the file's options and grids of the
    methods kept."""
    config = config or SweepConfig()
    overrides = overrides or SweepOverrides()
    methods = overrides.methods or config.methods
    tasks = overrides.tasks or config.tasks
    if not methods or not tasks:
        raise UserError("name the methods and tasks to run: --methods a,b --tasks c,d (or a --config file)")
    budget = get_budget(overrides.budget or config.budget or DEFAULT_BUDGET)
    budget_overrides = config.budget_overrides | overrides.budget_overrides
    if budget_overrides:
        budget = Budget.from_dict(budget.to_dict() | budget_overrides)
    kept = set(methods)
    method_options = {name: dict(options) for name, options in config.method_options.items() if name in kept}
    for name, options in overrides.method_options.items():
        method_options[name] = method_options.get(name, {}) | options
    method_grid = {name: dict(grid) for name, grid in config.method_grid.items() if name in kept}
    for name, grid in overrides.method_grid.items():
        method_grid[name] = method_grid.get(name, {}) | grid
    out = overrides.out or (Path(config.out) if config.out else None)
    return SweepSettings(
        methods=methods,
        tasks=tasks,
        budget=budget,
        method_options=method_options,
        method_grid=method_grid,
        budget_axis=config.budget_axis | overrides.budget_axis,
        models=_models(config, overrides),
        seeds=overrides.seeds or config.seeds,
        tune_per=overrides.tune_per or config.tune_per or DEFAULT_TUNE_PER,
        out=out,
        executor=overrides.executor or config.executor or DEFAULT_EXECUTOR,
        jobs=overrides.jobs if overrides.jobs is not None else config.jobs if config.jobs is not None else DEFAULT_JOBS,
        given=frozenset(item.name for item in fields(SweepOverrides) if _given(getattr(overrides, item.name))),
    )


def _given(value: Any) -> bool:
    """Whether an override was given: not None, and not an empty mapping or list."""
    return value is not None and not (isinstance(value, dict | list) and not value)


def _models(config: SweepConfig, overrides: SweepOverrides) -> list[ModelSettings]:
    """One ModelSettings per model, from (lowest precedence first) the sweep file's dtype, device
    and ``model_args``, then the explicit ``model_args``, then the explicit single fields."""
    from lofit_bench.engine.models import DEFAULT_MODEL

    from_file = ModelSettings.from_args(config.model_args) if config.model_args else {}
    explicit = ModelSettings.from_args(overrides.model_args) if overrides.model_args else {}
    if "name" in explicit and overrides.models:
        raise UserError("--model and --model-args pretrained=... both name the model; give it once")
    names = (
        overrides.models
        or ([explicit.pop("name")] if "name" in explicit else None)
        or config.models
        or ([from_file.pop("name")] if "name" in from_file else None)
        or [DEFAULT_MODEL]
    )
    explicit.pop("name", None)
    from_file.pop("name", None)
    values = (
        {key: value for key, value in (("dtype", config.dtype), ("device", config.device)) if value is not None}
        | from_file | explicit | {key: value for key, value in overrides.model_fields.items() if value is not None}
    )
    return [ModelSettings(name, **values) for name in names]

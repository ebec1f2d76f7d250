"""Sweeps described in a TOML or YAML file (`lofit-bench run --config sweep.toml`).

For what does not fit on a command line: per-method options, several models, budget
overrides. Example (TOML)::

    methods = ["zero-shot", "lofit"]
    tasks = ["clutrr", "mquake"]
    models = ["smollm2-135m"]
    budget = "paper"
    seeds = [42, 43]
    out = "runs/sweep"

    [budget_overrides]
    eval_examples = 200

    [method_options.lofit]
    stage2_learning_rate = 0.01

    [method_grid.lofit]  # one config (record, report row) per value: paper Figure 5
    heads = [0.03, 0.1, 0.2]

    [budget_axis]        # a budget field varied on purpose: paper Figure 4
    train_examples = [16, 32, 64]

    [model_args]        # or model_args = "revision=main,attn_implementation=sdpa"
    revision = "main"
    gpus_per_run = 1

Command-line flags given next to ``--config`` override the file's values.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lofit_bench.errors import UserError
from lofit_bench.sweep import settings as validate
from lofit_bench.sweep.grid import check_axis_values


@dataclass
class SweepConfig:
    methods: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    budget: str | None = None
    budget_overrides: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: method -> field -> values: every combination is its own config (``--grid``).
    method_grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    #: budget field -> values: one budget per value, a declared axis (``--budget-axis``).
    budget_axis: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] | None = None
    tune_per: str | None = None  # as --tune-per: fold or seed
    out: str | None = None
    dtype: str | None = None
    device: str | None = None
    executor: str | None = None
    jobs: int | None = None
    model_args: str | dict[str, Any] | None = None  # as --model-args: "pretrained=...,revision=..." or a table


def load_sweep_config(path: Path) -> SweepConfig:
    """Read and validate a sweep file (``.toml``, ``.yaml``/``.yml`` or ``.json``), field by
    field with the command line's messages (see :mod:`lofit_bench.sweep.settings`)."""
    return sweep_config_from_data(read_sweep_data(path), path)


def read_sweep_data(path: Path) -> dict[str, Any]:
    """The top-level table of a sweep (or study) file, parsed but not yet checked."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read sweep config {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"sweep config {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise UserError(f"sweep config {path} must end in .toml, .yaml, .yml or .json")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UserError("YAML sweep files need PyYAML (pip install pyyaml), or use TOML") from None
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as error:
                raise ValueError(" ".join(str(error).split())) from None
            data = {} if data is None else data
        else:
            data = json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as error:
        raise UserError(f"sweep config {path} is malformed: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"sweep config {path} must hold a table/mapping at the top level")
    return data


def sweep_config_from_data(data: dict[str, Any], path: object) -> SweepConfig:
    """A checked :class:`SweepConfig` from a sweep file's table (``path`` names it in errors)."""
    data = dict(data)
    if "model" in data:  # a single model may be given as `model = "..."`
        data.setdefault("models", [data.pop("model")])
    known = {item.name for item in fields(SweepConfig)}
    unknown = sorted(str(key) for key in set(data) - known)
    if unknown:
        raise UserError(f"unknown keys in sweep config {path}: {', '.join(unknown)}. Known: {', '.join(sorted(known))}")
    try:
        config = SweepConfig(**{name: _check_field(name, value) for name, value in data.items()})
    except UserError as error:
        raise UserError(f"sweep config {path}: {error}") from None
    if config.model_args is not None and not isinstance(config.model_args, str | dict):
        raise UserError(f"sweep config {path}: model_args must be KEY=VALUE,... or a table [model_args]")
    if isinstance(config.model_args, dict) and "pretrained" in config.model_args and "models" in data:
        raise UserError(f"sweep config {path}: models and model_args.pretrained both name the model; give it once")
    return config


def _check_field(name: str, value: Any) -> Any:
    """One field of a sweep file, checked by the same rule as its command-line flag."""
    if name in ("methods", "tasks", "models"):
        return validate.names(value, name)
    if name == "budget":
        return validate.text(value, "budget (a budget name)")
    if name == "budget_overrides":
        return validate.table(value, "budget_overrides")
    if name == "method_options":
        for method, options in validate.table(value, "method_options").items():
            validate.table(options, f"method_options.{method}")
        return value
    if name == "method_grid":
        for method, grid in validate.table(value, "method_grid").items():
            for field_name, values in validate.table(grid, f"method_grid.{method}").items():
                check_axis_values(f"{method}.{field_name}", values, "method_grid")
        return value
    if name == "budget_axis":
        for field_name, values in validate.table(value, "budget_axis").items():
            check_axis_values(field_name, values, "budget_axis")
        return value
    if name == "seeds":
        return validate.seeds(value)
    if name == "tune_per":
        return validate.choice(value, "tune_per", ("fold", "seed"))
    if name == "out":
        return validate.text(value, "out (a folder)")
    if name == "dtype":
        return validate.choice(value, "dtype", validate.DTYPE_CHOICES)
    if name == "device":
        return validate.device(value)
    if name == "executor":
        return validate.text(value, "executor (an executor name: `lofit-bench list executors`)")
    if name == "jobs":
        return validate.jobs(value)
    return value

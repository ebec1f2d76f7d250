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
    heads = 0.1

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


@dataclass
class SweepConfig:
    methods: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    budget: str | None = None
    budget_overrides: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] | None = None
    out: str | None = None
    dtype: str | None = None
    device: str | None = None
    executor: str | None = None
    jobs: int | None = None
    model_args: str | dict[str, Any] | None = None  # as --model-args: "pretrained=...,revision=..." or a table


def load_sweep_config(path: Path) -> SweepConfig:
    """Read and validate a sweep file (``.toml``, ``.yaml``/``.yml`` or ``.json``)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"cannot read sweep config {path}: {error.strerror or error}") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UserError("YAML sweep files need PyYAML (pip install pyyaml), or use TOML") from None
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise UserError(f"sweep config {path} must end in .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as error:
        raise UserError(f"sweep config {path} is malformed: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"sweep config {path} must hold a table/mapping at the top level")
    if "model" in data:  # a single model may be given as `model = "..."`
        data.setdefault("models", [data.pop("model")])
    known = {item.name for item in fields(SweepConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown keys in sweep config {path}: {', '.join(unknown)}. Known: {', '.join(sorted(known))}")
    config = SweepConfig(**data)
    for name in ("methods", "tasks", "models"):
        value = getattr(config, name)
        if isinstance(value, str):
            setattr(config, name, [item.strip() for item in value.split(",") if item.strip()])
        elif not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise UserError(f"sweep config {path}: {name} must be a list of names")
    if config.model_args is not None and not isinstance(config.model_args, str | dict):
        raise UserError(f"sweep config {path}: model_args must be KEY=VALUE,... or a table [model_args]")
    if isinstance(config.model_args, dict) and "pretrained" in config.model_args and "models" in data:
        raise UserError(f"sweep config {path}: models and model_args.pretrained both name the model; give it once")
    if not all(isinstance(options, dict) for options in config.method_options.values()):
        raise UserError(f"sweep config {path}: each [method_options.NAME] must be a table of fields")
    return config

"""Several configs of one method, and budgets along a declared axis, in one sweep.

A **grid** (``--grid lofit.heads=[0.03,0.1,0.2]``, a sweep file's ``[method_grid.lofit]``)
lists the values of method fields to try: every combination is its own config, hence its own
run key, record and report row. A **budget axis** (``--budget-axis train_examples=[16,32]``, a
sweep file's ``[budget_axis]``) varies a budget field on purpose (paper Figure 4). Both are
*declared axes*: the record keeps their names (``axes``), so the report plots the metric
against them instead of warning about mixed budgets, while every field not on an axis is still
checked. Values are JSON lists, so a value may itself contain commas (``[[1,2],[3]]``).
"""

from __future__ import annotations

import itertools
from typing import Any

from lofit_bench.errors import UserError


def check_axis_values(name: str, values: Any, what: str) -> list[Any]:
    """``values`` as a non-empty list of distinct values, else one clear line."""
    if not isinstance(values, list) or not values:
        raise UserError(f"{what} {name} needs a JSON list of values, e.g. {name}=[0.03,0.1,0.2], got {values!r}")
    distinct = []
    for value in values:
        if value in distinct:
            raise UserError(f"{what} {name} lists {value!r} twice")
        distinct.append(value)
    return distinct


def method_configs(options: dict[str, Any], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid``'s values on top of ``options`` (the fixed fields)."""
    if not grid:
        return [dict(options)]
    clash = sorted(set(options) & set(grid))
    if clash:
        raise UserError(f"method field(s) {', '.join(clash)} are set and on a grid at once; give each one way")
    names = list(grid)
    return [options | dict(zip(names, combination, strict=True)) for combination in itertools.product(*grid.values())]


def budget_points(budget_fields: dict[str, Any], axis: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The budget's fields at every point of the declared budget axes (the budget alone when none)."""
    unknown = sorted(set(axis) - set(budget_fields))
    if unknown:
        raise UserError(f"unknown budget field(s) on --budget-axis: {', '.join(unknown)}. Known: {', '.join(sorted(budget_fields))}")
    if "name" in axis or "seeds" in axis:
        raise UserError("--budget-axis varies a budget field such as train_examples; seeds are given with --seeds")
    names = list(axis)
    return [budget_fields | dict(zip(names, combination, strict=True)) for combination in itertools.product(*axis.values())]


def declared_axes(method: str, grid: dict[str, list[Any]], budget_axis: dict[str, list[Any]]) -> tuple[str, ...]:
    """The axis names a run of ``method`` records: ``METHOD.FIELD`` per grid field, budget fields as named."""
    return tuple(sorted([f"{method}.{name}" for name in grid] + list(budget_axis)))

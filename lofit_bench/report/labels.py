"""How the report names runs and writes numbers: a method's label (its differing options and
axis values, so two configs are never averaged as seeds), a model's label, and the number
formats every table shares."""

from __future__ import annotations

import json

from lofit_bench.records.record import RunRecord


def format_parameter_share(percent: float | None) -> str:
    """'% params' with four decimals, or three significant digits below 0.01 % (27 of 134.5M
    parameters is 2.01e-05 %, not 0.0000)."""
    if percent is None:
        return "-"
    if percent == 0 or abs(percent) >= 0.01:
        return f"{percent:.4f}"
    return f"{percent:.3g}"


def format_percent(value: tuple[float, float | None]) -> str:
    mean, std = value
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def format_interval(interval: tuple[float, float] | None) -> str:
    """A fraction's interval in percent, e.g. ``[38.0, 57.0]``."""
    return "-" if interval is None else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def format_count(count: int | None) -> str:
    if count is None:
        return "-"
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= limit:
            return f"{count / limit:.2f}{suffix}"
    return str(count)


def format_p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def run_label(record: RunRecord) -> str:
    return record.label


def model_label(record: RunRecord, records: list[RunRecord]) -> str:
    """The model's name, plus its fingerprint when the folder holds several models of that name
    (two different weights under one folder name are never averaged together)."""
    name = record.model_name
    fingerprints = {_fingerprint(other) for other in records if other.model_name == name}
    if len(fingerprints) < 2:
        return name
    return f"{name} ({str(_fingerprint(record))[:8]})"


def _fingerprint(record: RunRecord) -> str | None:
    return record.model.fingerprint if record.model else None


def method_label(record: RunRecord, records: list[RunRecord], leave_out: tuple[str, ...] = ()) -> str:
    """The method's name, plus the options that differ between the folder's configs of it and
    the values of its declared budget axes (so two configs, or two points of an axis, are
    never averaged together as if they were seeds). ``leave_out``: axes not to name
    (``lofit.heads``, ``train_examples``), for a plot along them."""
    name = record.method.name
    siblings = [other for other in records if other.method.name == name]
    differing = sorted({
        key for other in siblings for key in {*other.method.options, *record.method.options}
        if other.method.options.get(key) != record.method.options.get(key) and f"{name}.{key}" not in leave_out
    })
    parts = [f"{key}={json.dumps(record.method.options[key])}" for key in differing if key in record.method.options]
    parts += [f"{axis}={json.dumps(record.budget.get(axis))}" for axis in budget_axes(record) if axis not in leave_out]
    return f"{name} [{', '.join(parts)}]" if parts else name


def budget_axes(record: RunRecord) -> list[str]:
    """The budget fields the record's sweep declared as axes (its method-grid axes hold a dot)."""
    return sorted(axis for axis in record.axes if "." not in axis and axis in record.budget)

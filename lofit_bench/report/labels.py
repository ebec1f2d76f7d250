"""How the report names runs and writes numbers: a method's label (its differing options and
axis values, so two configs are never averaged as seeds), a model's label, and the number
formats every table shares."""

from __future__ import annotations

import json
from collections import defaultdict

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


class RecordLabels:
    """The method and model labels of one set of records, computed in one pass over them (a
    report asks for a label per record; scanning every record for each would be quadratic).

    A record's method label is its method's name, plus the options that differ between the
    set's configs of that method and the values of its declared budget axes, so two configs,
    or two points of an axis, are never averaged together as if they were seeds; its model
    label is the model's name, plus its fingerprint when the set holds several models of that
    name (two different weights under one folder name are never averaged together).
    ``leave_out``: axes not to name (``lofit.heads``, ``train_examples``), for a plot along them.
    Labels depend on the whole set, so ask only about records of the set.
    """

    def __init__(self, records: list[RunRecord], leave_out: tuple[str, ...] = ()) -> None:
        by_method: dict[str, list[RunRecord]] = defaultdict(list)
        fingerprints: dict[str, set[str | None]] = defaultdict(set)
        for record in records:
            by_method[record.method.name].append(record)
            fingerprints[record.model_name].add(_fingerprint(record))
        self._method: dict[int, str] = {}
        for name, siblings in by_method.items():
            first = siblings[0].method.options
            keys = {key for sibling in siblings for key in sibling.method.options}
            differing = sorted(
                key for key in keys
                if f"{name}.{key}" not in leave_out and any(sibling.method.options.get(key) != first.get(key) for sibling in siblings)
            )
            for record in siblings:
                self._method[id(record)] = _method_label(record, differing, leave_out)
        self._model = {
            id(record): record.model_name if len(fingerprints[record.model_name]) < 2
            else f"{record.model_name} ({str(_fingerprint(record))[:8]})"
            for record in records
        }

    def method(self, record: RunRecord) -> str:
        return self._method[id(record)]

    def model(self, record: RunRecord) -> str:
        return self._model[id(record)]


def _method_label(record: RunRecord, differing: list[str], leave_out: tuple[str, ...]) -> str:
    options = record.method.options
    parts = [f"{key}={json.dumps(options[key])}" for key in differing if key in options]
    parts += [f"{axis}={json.dumps(record.budget.get(axis))}" for axis in budget_axes(record) if axis not in leave_out]
    return f"{record.method.name} [{', '.join(parts)}]" if parts else record.method.name


def _fingerprint(record: RunRecord) -> str | None:
    return record.model.fingerprint if record.model else None


def budget_axes(record: RunRecord) -> list[str]:
    """The budget fields the record's sweep declared as axes (its method-grid axes hold a dot)."""
    return sorted(axis for axis in record.axes if "." not in axis and axis in record.budget)

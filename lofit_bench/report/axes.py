"""The metric against a declared axis (paper Figure 4: training examples; Figure 5: % of heads).

A sweep declares its axes (:mod:`lofit_bench.sweep.grid`) and every record keeps their names;
here each axis becomes one table per (model, task) -- a row per method config, a column per
value of the axis, mean ± std over seeds of the primary metric -- and one plot.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from typing import Any

from lofit_bench.records.record import RunRecord
from lofit_bench.report.labels import RecordLabels
from lofit_bench.report.sections import Section, Table


def axis_value(record: RunRecord, axis: str) -> Any:
    """Where ``record`` lies on ``axis``: a budget field's value, or a grid field's (``METHOD.FIELD``)."""
    method, separator, name = axis.partition(".")
    if not separator:
        return record.budget.get(axis)
    return record.method.options.get(name) if record.method.name == method else None


def _order(value: Any) -> tuple:
    return (value is None, value if isinstance(value, int | float) else str(value))


def _show(value: Any) -> str:
    return "all" if value is None else json.dumps(value)


def axis_series(records: list[RunRecord], axis: str, labels: RecordLabels | None = None) -> dict[tuple[str, str], dict[str, dict[Any, list[float]]]]:
    """(model, task) -> series label -> axis value -> the primary metric of each seed (``labels``:
    those of ``records``, when the caller has them; a series is named without the axis)."""
    labels = labels or RecordLabels(records)
    on_axis = [record for record in records if axis in record.axes and record.metrics]
    series_labels = RecordLabels(on_axis, leave_out=(axis,))
    found: dict[tuple[str, str], dict[str, dict[Any, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for record in on_axis:
        value = record.metrics.get(record.task.primary_metric)
        if value is None:
            continue
        series = series_labels.method(record)
        found[(labels.model(record), record.task.name)][series][json.dumps(axis_value(record, axis))].append(value)
    return {
        key: {series: {json.loads(x): values for x, values in points.items()} for series, points in by_series.items()}
        for key, by_series in found.items()
    }


def axis_sections(records: list[RunRecord], labels: RecordLabels | None = None) -> list[Section]:
    """One section per numeric declared axis (None counts: a budget's "all")."""
    axes = sorted({axis for record in records for axis in record.axes})
    labels = labels or RecordLabels(records)
    sections = []
    for axis in axes:
        series = axis_series(records, axis, labels)
        values = [x for by_series in series.values() for points in by_series.values() for x in points]
        if not series or not all(x is None or (isinstance(x, int | float) and not isinstance(x, bool)) for x in values):
            continue  # a plot needs numbers along the axis (a grid of names is in the tables above)
        section = Section(f"Primary metric against {axis} (declared axis)")
        for (model, task), by_series in sorted(series.items()):
            values = sorted({x for points in by_series.values() for x in points}, key=_order)
            metric = next(record.task.primary_metric for record in records if record.task.name == task)
            rows = [[label, *(_cell(points.get(x)) for x in values)] for label, points in sorted(by_series.items())]
            section.tables.append(Table(f"{task} on {model}: {metric} (%) by {axis}, mean ± std over seeds",
                                        ["method", *(f"{axis}={_show(x)}" for x in values)], rows))
        section.plots.append((lambda series=series, axis=axis: axis_figure(series, axis),
                              f"Primary metric against {axis}; error bars: sample std over seeds."))
        sections.append(section)
    return sections


def _cell(values: list[float] | None) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def axis_figure(series: dict[tuple[str, str], dict[str, dict[Any, list[float]]]], axis: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(series.items())
    figure, axes_list = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for axes, ((model, task), by_series) in zip(axes_list[0], panels, strict=True):
        values = sorted({x for points in by_series.values() for x in points}, key=_order)
        positions = {x: index for index, x in enumerate(values)}  # "all" (None) sits at the end
        for label, points in sorted(by_series.items()):
            xs = sorted(points, key=_order)
            means = [100 * statistics.fmean(points[x]) for x in xs]
            errors = [100 * statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
            axes.errorbar([positions[x] for x in xs], means, yerr=errors, marker="o", capsize=3, label=label[:30])
        axes.set_xticks(range(len(values)), [_show(x) for x in values])
        axes.set_xlabel(axis)
        axes.set_ylabel("primary metric (%)")
        axes.set_title(f"{task} on {model}", fontsize=9)
        axes.legend(fontsize=7)
    figure.tight_layout()
    return figure

"""``report.html``: the report as one self-contained page (images inlined, no scripts, no network).

The page reads top first: short warnings and a table of contents, the summary (methods x
tasks, best per column marked), the per-task tables, the plots, the tuning and training
curves, where the time went, the selected heads (small multiples, each opening full size),
then the details. Each part is a :class:`Section` in :data:`SECTIONS`; a new part of the
report is one more entry there (see :func:`add_section`), and the table of contents follows.

Every plot styles a method the same way (:mod:`lofit_bench.report.plot_style`) and names methods in
a legend or on their own axis row, never in labels that can collide.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lofit_bench.records.record import RunRecord
from lofit_bench.report.model import (
    COLUMN_HELP,
    RecordLabels,
    ReportModel,
    SummaryRow,
    failure_line,
    format_percent,
    table_groups,
    task_table,
)
from lofit_bench.report.plot_style import PLOT_RC, MethodStyle, legend_handles, method_styles
from lofit_bench.report.sections import Section as ReportSection
from lofit_bench.report.side_effects import (
    EFFECTS_HELP,
    EffectsRow,
    effects_rows,
    effects_table,
    retention_table,
)
from lofit_bench.report.stats import pareto_front

#: Figures are drawn this wide (inches, at ``PLOT_RC`` dpi): about the page's width at 1400 px.
FIGURE_WIDTH = 12.0

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1360px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.3em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
nav.toc { background: #f6f8fa; padding: 0.4em 1em; border-radius: 6px; }
nav.toc ul { margin: 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 0.3em 1.4em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
table.wrap-last td:last-child { white-space: normal; min-width: 14em; max-width: 30em; text-align: left; }
th { background: #f3f3f3; white-space: normal; vertical-align: bottom; }
td.best { font-weight: bold; background: #e6f4ea; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
img { max-width: 100%; }
ul.facts { padding-left: 1.2em; margin: 0.3em 0; }
.warnings { border-left: 4px solid #c00; background: #fff4f4; padding: 0.3em 1em; margin: 0.6em 0; }
.warning { color: #a00; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 1em; }
.grid figure { margin: 0; } .grid img { width: 100%; border: 1px solid #ddd; }
.zoomable .close { display: none; }
.zoomable:target { display: flex; flex-direction: column; align-items: center; justify-content: center;
  position: fixed; inset: 0; margin: 0; background: rgba(0, 0, 0, 0.85); z-index: 10; }
.zoomable:target img { width: auto; max-width: 95vw; max-height: 85vh; background: white; }
.zoomable:target figcaption, .zoomable:target .close { display: block; color: white; margin: 0.5em; }
"""


# -- drawing ---------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(PLOT_RC)
    return plt


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_RC["figure.dpi"], bbox_inches="tight")
    _pyplot().close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def figure_html(figure, caption: str) -> str:
    """A drawn figure as an inlined PNG with its caption (the figure is closed)."""
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{_png(figure)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _panels(rows: list[PlotRow]) -> list[tuple[str, list[PlotRow]]]:
    """One plot panel per (model, task) table; the title names the model when there are several."""
    groups = table_groups(rows)
    several_models = len({model for model, _, _ in groups}) > 1
    return [(f"{task} on {model}" if several_models else task, items) for model, task, items in groups]


def panel_grid(count: int, columns: int, panel_height: float, sharey: bool = False):
    """A figure of ``count`` panels, ``columns`` a row, the unused panels hidden."""
    plt = _pyplot()
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    width = FIGURE_WIDTH * max(columns, 1.6) / 3  # one or two panels are not stretched over the page
    figure, axes = plt.subplots(rows, columns, figsize=(width, panel_height * rows), squeeze=False, sharey=sharey)
    flat = [axes for row in axes for axes in row]
    for unused in flat[count:]:
        unused.set_visible(False)
    return figure, flat[:count]


def figure_legend(figure, styles: dict[str, MethodStyle], labels: list[str], extra: list | None = None) -> None:
    """One legend for the whole figure, in a band at its top that the panels leave free
    (methods in name order), then the panels laid out below it."""
    handles = legend_handles(styles, sorted(set(labels))) + (extra or [])
    columns = min(len(handles), 6)
    figure.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=columns, frameon=False)
    band = (0.32 * math.ceil(len(handles) / columns) + 0.15) / figure.get_figheight()
    figure.tight_layout(rect=(0, 0, 1, 1 - band), w_pad=3)


#: A row a plot draws: a method on a (model, task), its primary metric (``primary``) and costs.
PlotRow = SummaryRow | EffectsRow


def _styles_for(rows: list[PlotRow], styles: dict[str, MethodStyle] | None) -> dict[str, MethodStyle]:
    return styles if styles is not None else method_styles([row.method for row in rows])


def scatter_figure(rows: list[PlotRow], cost: Callable[[Any], float | None], axis_label: str, log: bool,
                   styles: dict[str, MethodStyle] | None = None):
    """Primary metric against a cost per panel, one marker per method (legend above), the Pareto
    front outlined and dashed; None when no row has the cost."""
    styles = _styles_for(rows, styles)
    panels = [(title, [row for row in items if cost(row) is not None]) for title, items in _panels(rows)]
    panels = [(title, items) for title, items in panels if items]
    if not panels:
        return None
    figure, axes_list = panel_grid(len(panels), 3, 3.9)
    drawn: list[str] = []
    for axes, (title, task_rows) in zip(axes_list, panels, strict=True):
        # Zero trainable parameters cannot sit on a log axis: draw them at 1 and say so.
        points = [(max(float(cost(row)), 1.0) if log else float(cost(row)), 100 * row.primary) for row in task_rows]
        front = pareto_front(points)
        for index, (row, point) in enumerate(zip(task_rows, points, strict=True)):
            style = styles[row.method]
            on_front = index in front
            axes.scatter([point[0]], [point[1]], s=110 if on_front else 70, marker=style.marker, color=style.colour,
                         edgecolor="black" if on_front else "white", linewidth=1.2, zorder=3, gid=row.method)
            drawn.append(row.method)
        ordered = sorted(points[index] for index in front)
        axes.plot([x for x, _ in ordered], [y for _, y in ordered], linestyle="--", color="grey", linewidth=1, zorder=2)
        if log:
            axes.set_xscale("log")
        else:  # lowest ticks at the corner would print over each other
            from matplotlib.ticker import MaxNLocator

            axes.xaxis.set_major_locator(MaxNLocator(nbins=6, prune="lower"))
            axes.yaxis.set_major_locator(MaxNLocator(nbins=6, prune="lower"))
        axes.set_xlabel(axis_label)
        axes.set_ylabel(f"{task_rows[0].primary_metric} (%)")
        axes.set_title(title)
        axes.grid(alpha=0.3)
    figure_legend(figure, styles, drawn)
    return figure


def bars_figure(rows: list[SummaryRow], styles: dict[str, MethodStyle] | None = None):
    """Primary metric per method, one panel per task: horizontal bars (method names on their own
    row), the value at each bar's end and a marker there, so 0 % shows."""
    styles = _styles_for(rows, styles)
    panels = _panels(rows)
    methods = sorted({row.method for row in rows}, reverse=True)  # top to bottom in name order
    figure, axes_list = panel_grid(len(panels), 3, 0.42 * len(methods) + 1.3, sharey=True)
    for axes, (title, task_rows) in zip(axes_list, panels, strict=True):
        by_method = {row.method: row for row in task_rows}
        top = max([100 * row.primary for row in task_rows] + [1.0])
        for position, method in enumerate(methods):
            row = by_method.get(method)
            if row is None:
                axes.text(0, position, " not run", va="center", fontsize=9, color="#888")
                continue
            mean, deviation = row.metrics[row.primary_metric]
            style = styles[method]
            axes.barh(position, 100 * mean, xerr=None if deviation is None else 100 * deviation, color=style.colour,
                      alpha=0.85, height=0.7, capsize=3, gid=method)
            axes.plot([100 * mean], [position], marker=style.marker, color=style.colour, markeredgecolor="black",
                      markersize=7, linestyle="none", gid=method)
            axes.text(100 * mean + top * 0.04, position, format_percent((mean, deviation)), va="center", fontsize=9)
        axes.set_yticks(range(len(methods)), methods)
        axes.set_xlim(0, top * 1.35)  # room for the values at the bars' ends
        axes.set_xticks([tick for tick in axes.get_xticks() if 0 <= tick <= min(100, top * 1.35)])
        axes.set_xlabel(f"{task_rows[0].primary_metric} (%)")
        axes.set_title(title)
        axes.grid(axis="x", alpha=0.3)
    figure.tight_layout(w_pad=3)
    return figure


# -- tuning and training curves, from the records alone ---------------------------------------------
@dataclass
class CurvePanel:
    """One (model, task, fold, seed): a curve per method."""

    title: str
    metric: str = ""
    #: method label -> its curve's data.
    curves: dict[str, Any] = field(default_factory=dict)


def _panel_title(record: RunRecord, labels: RecordLabels, fold: str, several_models: bool, several_seeds: bool) -> str:
    parts = [record.task.name, fold if fold != "main" else ""]
    if several_seeds:
        parts.append(f"seed {record.seed}")
    if several_models:
        parts.append(labels.model(record))
    return ", ".join(part for part in parts if part)


def _curve_panels(records: list[RunRecord], read: Callable[[RunRecord, str], Any]) -> list[CurvePanel]:
    """Panels of the curves ``read(record, fold)`` gives (None: nothing to draw for that fold)."""
    labels = RecordLabels(records)
    several_models = len({labels.model(record) for record in records}) > 1
    several_seeds = len({record.seed for record in records}) > 1
    panels: dict[tuple, CurvePanel] = {}
    for record in sorted(records, key=lambda record: (labels.model(record), record.task.name, record.seed)):
        for fold in record.folds:
            curve = read(record, fold)
            if curve is None:
                continue
            key = (labels.model(record), record.task.name, fold, record.seed)
            panel = panels.setdefault(key, CurvePanel(_panel_title(record, labels, fold, several_models, several_seeds)))
            panel.curves[labels.method(record)] = curve
            panel.metric = panel.metric or (record.folds[fold].tuning or {}).get("metric") or ""
    return [panels[key] for key in sorted(panels)]


@dataclass
class TrialPoint:
    trial: int
    #: The dev score in %, or the last intermediate score of a pruned trial; None for a failed one.
    score: float | None
    state: str


def tuning_points(record: RunRecord, fold: str) -> list[TrialPoint] | None:
    """The fold's trials in the order they ran (x = 1, 2, ...), None when it was not tuned."""
    tuning = record.folds[fold].tuning or {}
    trials = sorted(tuning.get("trials") or [], key=lambda trial: trial.get("number", 0))
    metric = tuning.get("metric")
    if not trials or not metric:
        return None
    points = []
    for position, trial in enumerate(trials, start=1):
        score = (trial.get("dev") or {}).get(metric)
        if score is None and trial.get("intermediate"):
            score = list(trial["intermediate"].values())[-1]
        points.append(TrialPoint(position, None if score is None else 100 * score, str(trial.get("state"))))
    return points


def best_so_far(points: list[TrialPoint]) -> list[float | None]:
    """The best completed trial's score after each trial (pruned and failed trials never count)."""
    best: float | None = None
    values = []
    for point in points:
        if point.state == "complete" and point.score is not None:
            best = point.score if best is None else max(best, point.score)
        values.append(best)
    return values


def tuning_figure(records: list[RunRecord], styles: dict[str, MethodStyle]):
    """Dev score per trial (markers) and best so far (line) per method, one panel per (task,
    fold, seed); pruned trials as crosses at their last intermediate score. None when nothing
    was tuned."""
    from matplotlib.lines import Line2D

    panels = _curve_panels(records, tuning_points)
    if not panels:
        return None
    figure, axes_list = panel_grid(len(panels), 3, 3.6)
    drawn: list[str] = []
    for axes, panel in zip(axes_list, panels, strict=True):
        for method, points in panel.curves.items():
            style = styles[method]
            complete = [point for point in points if point.state == "complete" and point.score is not None]
            pruned = [point for point in points if point.state == "pruned" and point.score is not None]
            best = best_so_far(points)
            axes.step([point.trial for point in points], [math.nan if value is None else value for value in best],
                      where="post", color=style.colour, linewidth=2, gid=method)
            axes.scatter([p.trial for p in complete], [p.score for p in complete], marker=style.marker, color=style.colour,
                         s=55, edgecolor="white", zorder=3, gid=method)
            axes.scatter([p.trial for p in pruned], [p.score for p in pruned], marker="x", color=style.colour, s=55,
                         zorder=3, gid=method)
            drawn.append(method)
        trials = max(len(points) for points in panel.curves.values())
        axes.set_xticks(range(1, trials + 1))
        axes.set_xlabel("trial")
        axes.set_ylabel(f"dev {panel.metric} (%)")
        axes.set_title(panel.title)
        axes.grid(alpha=0.3)
    pruned = Line2D([], [], color="black", marker="x", linestyle="none", label="pruned (last intermediate score)")
    figure_legend(figure, styles, drawn, [pruned])
    return figure


def training_losses(record: RunRecord, fold: str) -> dict[str, list[float]] | None:
    """The fit's training loss per step (stage -> losses; ``""`` for a single-stage fit)."""
    fit = record.folds[fold].fit or {}
    stages = {name: stage.get("losses") for name, stage in (fit.get("stages") or {}).items() if isinstance(stage, dict)}
    stages = {name: losses for name, losses in stages.items() if losses}
    if stages:
        return stages
    losses = (fit.get("training") or {}).get("losses")
    return {"": losses} if losses else None


def _smoothed(values: list[float]) -> list[float]:
    """A running mean over about a twentieth of the steps (the raw losses are drawn faintly)."""
    window = max(1, len(values) // 20)
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def _log_y(axes) -> None:
    """A log y axis labelled in plain numbers (``0.3``, not ``3×10^-1``); the 2s and 5s between
    the powers of ten are labelled too when the data span under two decades (else one or two
    labels would be left)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    low, high = axes.get_ylim()
    twos_and_fives = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else "")
    axes.yaxis.set_minor_formatter(twos_and_fives if high / low < 100 else NullFormatter())


def training_figure(records: list[RunRecord], styles: dict[str, MethodStyle]):
    """Training loss per step of each run's final fit (the chosen trial's values), one panel per
    (task, fold, seed); a method's earlier stages dashed. None when no run trained."""
    from matplotlib.lines import Line2D

    panels = _curve_panels(records, training_losses)
    if not panels:
        return None
    figure, axes_list = panel_grid(len(panels), 3, 3.6)
    drawn: list[str] = []
    staged = False
    for axes, panel in zip(axes_list, panels, strict=True):
        positive = True
        for method, stages in panel.curves.items():
            style = styles[method]
            names = list(stages)
            for index, name in enumerate(names):
                losses = [float(value) for value in stages[name] if value is not None]
                positive = positive and all(value > 0 for value in losses)
                steps = range(1, len(losses) + 1)
                last = index == len(names) - 1
                staged = staged or not last
                axes.plot(steps, losses, color=style.colour, alpha=0.2, linewidth=0.8, gid=method)
                axes.plot(steps, _smoothed(losses), color=style.colour, linewidth=2 if last else 1.4,
                          linestyle="-" if last else "--", gid=method)
            drawn.append(method)
        if positive:
            _log_y(axes)
        axes.set_xlabel("step")
        axes.set_ylabel("training loss")
        axes.set_title(panel.title)
        axes.grid(alpha=0.3)
    extra = [Line2D([], [], color="black", linestyle="--", label="earlier stage (LoFiT: head selection)")] if staged else []
    figure_legend(figure, styles, drawn, extra)
    return figure


def heatmaps(runs_dir: Path | None) -> list[tuple[str, str]]:
    """(label, PNG as base64) for every head selection a finished run saved, whatever the method."""
    from lofit_bench.engine.heads import HeadSelection, draw_heatmap
    from lofit_bench.errors import UserError
    from lofit_bench.report.run_heads import selections_in

    if runs_dir is None:
        return []
    try:
        found = selections_in(runs_dir)
    except UserError:
        return []
    images = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (label, path) in enumerate(found):
            target = Path(folder) / f"{index}.png"
            try:
                draw_heatmap(HeadSelection.load(path), target, title=label)
            except UserError:  # a damaged heads.json costs its own picture, not the report
                continue
            images.append((label, base64.b64encode(target.read_bytes()).decode()))
    return images


# -- the page --------------------------------------------------------------------------------------
@dataclass
class Page:
    """What every section renders from: the report and the method styles shared by all plots."""

    report: ReportModel
    styles: dict[str, MethodStyle]

    @classmethod
    def of(cls, report: ReportModel) -> Page:
        labels = [row.method for row in report.summary]
        labels += [report.finished_labels.method(record) for record in report.finished]
        return cls(report, method_styles(labels))


@dataclass(frozen=True)
class Section:
    """One part of the page: ``render(page)`` gives its HTML (without the heading), or None to
    leave the section (and its entry in the table of contents) out."""

    anchor: str
    title: str
    render: Callable[[Page], str | None]


def anchor_of(*parts: str) -> str:
    """An id made of ``parts`` (letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def _table(headers: list[str], rows: list[list[str]], best: set[tuple[int, int]] = frozenset(), css: str = "",
           links: list[str | None] | None = None) -> str:
    """An HTML table; ``best`` marks (row, column) cells, ``links`` makes headers in-page links."""
    links = links or [None] * len(headers)
    head = "".join(f'<th><a href="#{link}">{html.escape(header)}</a></th>' if link else f"<th>{html.escape(header)}</th>"
                   for header, link in zip(headers, links, strict=True))
    body = []
    for row_index, row in enumerate(rows):
        cells = []
        for column, value in enumerate(row):
            marked = ' class="best"' if (row_index, column) in best else ""
            cells.append(f"<td{marked}>{html.escape(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    table_class = f' class="{css}"' if css else ""
    return f'<div class="scroll"><table{table_class}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def summary_table(report: ReportModel) -> tuple[list[str], list[list[str]], set[tuple[int, int]]]:
    """Methods x (model, task): the primary metric; the best of each column marked (ties all
    marked). Rows: methods by their mean over the columns they ran, best first."""
    groups = table_groups(report.summary)
    several_models = len({model for model, _, _ in groups}) > 1
    headers = ["method"] + [
        f"{task} ({rows[0].primary_metric}{', ' + model if several_models else ''})" for model, task, rows in groups
    ]
    cells: dict[str, dict[int, SummaryRow]] = {}
    for column, (_, _, rows) in enumerate(groups):
        for row in rows:
            cells.setdefault(row.method, {})[column] = row
    order = sorted(cells, key=lambda method: (-sum(r.primary for r in cells[method].values()) / len(cells[method]), method))
    table, best = [], set()
    for row_index, method in enumerate(order):
        line = [method]
        for column in range(len(groups)):
            row = cells[method].get(column)
            line.append("not run" if row is None else format_percent(row.metrics[row.primary_metric]))
            if row is not None and row.primary == max(other.primary for other in groups[column][2]):
                best.add((row_index, column + 1))
        table.append(line)
    return headers, table, best


def _summary(page: Page) -> str | None:
    if not page.report.summary:
        return None
    headers, rows, best = summary_table(page.report)
    links = [None] + [anchor_of("table", model, task) for model, task, _ in page.report.tables()]
    return ("<p>Primary metric (%) per task, mean over seeds (± std with several); the best of each column is "
            "marked. Methods are ordered by their mean over the tasks they ran; a task's name leads to its table.</p>"
            + _table(headers, rows, best, links=links))


def _task_tables(page: Page) -> str | None:
    parts = []
    for model, task, rows in page.report.tables():
        headers, table = task_table(rows)
        sizes = ", ".join(map(str, sorted({row.test_examples for row in rows})))
        best = max(row.primary for row in rows)
        column = 2 + list(rows[0].metrics).index(rows[0].primary_metric)
        marked = {(index, column) for index, row in enumerate(rows) if row.primary == best}
        parts.append(f'<h3 id="{anchor_of("table", model, task)}">{html.escape(task)} on {html.escape(model)} '
                     f"<small>(primary metric: {html.escape(rows[0].primary_metric)}; test examples: {sizes})</small></h3>")
        parts.append(_table(headers, table, marked, css="wrap-last"))
    return "\n".join(parts) or None


def _plots(page: Page) -> str | None:
    summary = page.report.summary
    if not summary:
        return None
    figures = [
        (bars_figure(summary, page.styles),
         "Primary metric per task (the value at each bar's end; error bars: sample std over seeds, none with one seed)."),
        (scatter_figure(summary, _values_added, "values added to the model (log; 0 drawn at 1)", True, page.styles),
         "Accuracy vs the values a method adds to the model: its trainable parameters plus what it stores without "
         "training (ITI's shift directions). Pareto front (no method is both smaller and better) outlined in black and dashed."),
        (scatter_figure(summary, lambda row: row.peak_memory_mib, "peak memory (MiB; kind as in the tables)", False, page.styles),
         "Accuracy vs peak memory. Pareto front outlined in black and dashed."),
    ]
    return "\n".join(figure_html(figure, caption) for figure, caption in figures if figure is not None)


def _values_added(row: Any) -> int | None:
    """Trainable parameters plus stored values: ITI trains nothing but adds its directions."""
    if row.trainable_parameters is None:
        return None
    return row.trainable_parameters + (row.stored_values or 0)


def _tuning(page: Page) -> str | None:
    figure = tuning_figure(page.report.finished, page.styles)
    if figure is None:
        return None
    return figure_html(figure, "Dev score of every trial (markers; crosses: pruned, at their last intermediate score on the "
                       "pruning subset) and the best completed trial so far (line), per run and fold: a line still rising "
                       "at the last trial says more trials could have helped.")


def _training(page: Page) -> str | None:
    figure = training_figure(page.report.finished, page.styles)
    if figure is None:
        return None
    return figure_html(figure, "Training loss per step of each run's final fit (the chosen trial's values), raw (faint) and "
                       "as a running mean over a twentieth of the steps; log scale when every loss is positive.")


def _timing(page: Page) -> str | None:
    report = page.report
    if not report.timing_rows:
        return None
    return "<p>Wall seconds per run; fit parts as the method timed them.</p>" + _table(report.timing_headers, report.timing_rows)


def _heads(page: Page) -> str | None:
    selected = heatmaps(page.report.runs_dir)
    if not selected:
        return None
    thumbnails = []
    for index, (label, image) in enumerate(selected):
        # A small multiple that a click opens full size (CSS :target, no script, the image inlined once).
        target = f"heads-{index}"
        thumbnails.append(f'<figure class="zoomable" id="{target}"><a href="#{target}"><img alt="heads of {html.escape(label)}" '
                          f'src="data:image/png;base64,{image}"></a><figcaption>{html.escape(label)}</figcaption>'
                          '<a class="close" href="#heads">close</a></figure>')
    return ("<p>Head scores by layer and head, chosen heads outlined in red; click a picture for its full size.</p>"
            f'<div class="grid">{"".join(thumbnails)}</div>')


def _beyond_accuracy(page: Page) -> str | None:
    """Side effects, retention and accuracy against KL from the base model, drawn like the other
    cost plots (:mod:`lofit_bench.report.side_effects`)."""
    from tabulate import tabulate

    rows = effects_rows(page.report.records)
    if not rows:
        return None
    headers, table = effects_table(rows)
    parts = ["<h3>Beyond accuracy: side effects, locality, inference speed</h3>", tabulate(table, headers=headers, tablefmt="html")]
    retained = retention_table(rows)
    if retained:
        parts += ["<h3>Retention: other tasks after the fit</h3>", tabulate(retained[1], headers=retained[0], tablefmt="html")]
    measured = [row for row in rows if row.kl_from_base is not None and row.accuracy is not None]
    figure = scatter_figure(measured, lambda row: row.kl_from_base, "KL from base model (nats/token)", False, page.styles)
    if figure is not None:
        parts.append(figure_html(figure, "Accuracy vs KL from the base model, one point per method. Pareto front (no method "
                                 "reaches at least that accuracy with less change) outlined in black and dashed."))
    parts.append("<ul>" + "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>" for name, text in EFFECTS_HELP.items()) + "</ul>")
    return "".join(parts)


def report_sections_html(sections: list[ReportSection]) -> str | None:
    """Sections built from the records by :mod:`lofit_bench.report.sections` (paper-shaped
    tables, axis plots, head overlap) as HTML: each title, its notes, tables and plots."""
    parts = []
    for section in sections:
        parts.append(f"<h3>{html.escape(section.title)}</h3>")
        parts += [f"<p>{html.escape(note)}</p>" for note in section.notes]
        for table in section.tables:
            parts.append(f"<h4>{html.escape(table.caption)}</h4>" + _table(table.headers, [list(map(str, row)) for row in table.rows]))
        for draw, caption in section.plots:
            parts.append(figure_html(draw(), caption))
    return "\n".join(parts) or None


def _paper_tables(page: Page) -> str | None:
    return report_sections_html([section for section in page.report.sections if section.top])


def _more_sections(page: Page) -> str | None:
    return report_sections_html([section for section in page.report.sections if not section.top])


def _failed(page: Page) -> str | None:
    report = page.report
    if not report.failed:
        return None
    return "<ul>" + "".join(f"<li>{html.escape(failure_line(record, report.labels))}</li>" for record in report.failed) + "</ul>"


def _details(page: Page) -> str:
    parts = ['<h3 id="warnings">Warnings and header in full</h3><ul class="facts">']
    parts += [f'<li{" class=warning" if line.warning else ""}>{"warning: " if line.warning else ""}{html.escape(line.text)}</li>'
              for line in page.report.header]
    parts.append('</ul><h3 id="columns">Columns</h3><ul class="facts">')
    parts += [f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>" for name, text in COLUMN_HELP.items()]
    parts.append("</ul>")
    return "".join(parts)


#: The page's sections, top first. Add one with :func:`add_section`.
SECTIONS: list[Section] = [
    Section("summary", "Summary", _summary),
    Section("paper-tables", "As the paper's tables", _paper_tables),
    Section("tables", "Per-task tables", _task_tables),
    Section("plots", "Plots", _plots),
    Section("axes", "Axes, transfer and head overlap", _more_sections),
    Section("beyond-accuracy", "Beyond accuracy", _beyond_accuracy),
    Section("tuning", "Tuning curves", _tuning),
    Section("training", "Training loss", _training),
    Section("time", "Where the time went", _timing),
    Section("heads", "Selected attention heads", _heads),
    Section("failed", "Failed runs", _failed),
    Section("details", "Details", _details),
]


def add_section(section: Section, after: str | None = None) -> None:
    """Insert ``section`` after the section anchored ``after`` (default: before the details)."""
    anchors = [existing.anchor for existing in SECTIONS]
    if section.anchor in anchors:
        raise ValueError(f"a report section {section.anchor!r} exists already")
    SECTIONS.insert(anchors.index(after) + 1 if after else anchors.index("details"), section)


def short_warning(text: str, width: int = 110) -> str:
    """The head of a warning for the top of the page (the whole line is under Details)."""
    head = text.split(" = ", 1)[0]
    return head if len(head) <= width else head[: width - 1] + "…"


def sections_html(page: Page) -> Iterator[tuple[Section, str]]:
    for section in SECTIONS:
        body = section.render(page)
        if body is not None:
            yield section, body


def render_html(report: ReportModel) -> str:
    """The whole page."""
    page = Page.of(report)
    rendered = list(sections_html(page))
    parts = [f"<h1>{html.escape(report.title)}</h1>", '<ul class="facts">']
    parts += [f"<li>{html.escape(line.text)}</li>" for line in report.header if not line.warning]
    parts.append("</ul>")
    warnings = [line.text for line in report.header if line.warning]
    if warnings:
        parts.append(f'<div class="warnings"><b>{len(warnings)} warning{"s" if len(warnings) > 1 else ""}</b> '
                     '(<a href="#warnings">in full</a>):<ul>')
        parts += [f'<li class="warning">{html.escape(short_warning(text))}</li>' for text in warnings]
        parts.append("</ul></div>")
    parts.append('<nav class="toc"><ul>' + "".join(f'<li><a href="#{section.anchor}">{html.escape(section.title)}</a></li>'
                                                   for section, _ in rendered) + "</ul></nav>")
    for section, body in rendered:
        parts.append(f'<section><h2 id="{section.anchor}">{html.escape(section.title)}</h2>{body}</section>')
    return html_page("lofit-bench report", parts)


def html_page(title: str, parts: list[str]) -> str:
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")

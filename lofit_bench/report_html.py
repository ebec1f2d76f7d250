"""``report.html``: the report's tables plus plots, as one self-contained page (images inlined,
no scripts, no network)."""

from __future__ import annotations

import base64
import html
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

from lofit_bench.records import write_text_atomic
from lofit_bench.report_model import (
    COLUMN_HELP,
    ReportModel,
    SummaryRow,
    failure_line,
    table_groups,
    task_table,
)
from lofit_bench.report_sections import Section

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; }
.warning { color: #a00; font-weight: bold; }
"""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats: lower or equal cost and higher or equal accuracy
    (strictly better in one)."""
    front = []
    for index, (cost, accuracy) in enumerate(points):
        dominated = any(
            other_cost <= cost and other_accuracy >= accuracy and (other_cost < cost or other_accuracy > accuracy)
            for other_cost, other_accuracy in points
        )
        if not dominated:
            front.append(index)
    return front


def _short(label: str, width: int = 24) -> str:
    """A method label cut to fit a plot (the tables carry the whole label)."""
    return label if len(label) <= width else label[: width - 1] + "…"


def _panels(rows: list[SummaryRow]) -> list[tuple[str, list[SummaryRow]]]:
    """One plot panel per (model, task) table; the title names the model when there are several."""
    groups = table_groups(rows)
    several_models = len({model for model, _, _ in groups}) > 1
    return [(f"{task} on {model}" if several_models else task, items) for model, task, items in groups]


def scatter_figure(rows: list[SummaryRow], cost: Callable[[SummaryRow], float | None], axis_label: str, log: bool):
    """Primary metric against a cost per panel, Pareto front outlined and dashed; None when no
    row has the cost."""
    plt = _pyplot()
    panels = _panels(rows)
    figure, axes_list = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    drew = False
    for axes, (title, panel_rows) in zip(axes_list[0], panels, strict=True):
        task_rows = [row for row in panel_rows if cost(row) is not None]
        if not task_rows:
            axes.set_visible(False)
            continue
        drew = True
        # Zero trainable parameters cannot sit on a log axis: draw them at 1 and say so.
        points = [(max(float(cost(row)), 1.0) if log else float(cost(row)), 100 * row.primary) for row in task_rows]
        front = pareto_front(points)
        labels: dict[tuple[float, float], list[str]] = {}  # methods drawn on one spot share one label
        for index, (row, point) in enumerate(zip(task_rows, points, strict=True)):
            axes.scatter([point[0]], [point[1]], s=60 if index in front else 30, edgecolor="black" if index in front else "none")
            labels.setdefault(point, []).append(_short(row.method))
        for point, methods in labels.items():
            axes.annotate(", ".join(methods), point, textcoords="offset points", xytext=(4, 4), fontsize=8)
        ordered = sorted(points[index] for index in front)
        axes.plot([x for x, _ in ordered], [y for _, y in ordered], linestyle="--", color="grey", linewidth=1)
        if log:
            axes.set_xscale("log")
        axes.set_xlabel(axis_label, fontsize=8)
        axes.set_ylabel(f"{task_rows[0].primary_metric} (%)")
        axes.set_title(title)
    if not drew:
        plt.close(figure)
        return None
    figure.tight_layout()
    return figure


def bars_figure(rows: list[SummaryRow]):
    plt = _pyplot()
    panels = _panels(rows)
    figure, axes_list = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for axes, (title, task_rows) in zip(axes_list[0], panels, strict=True):
        means = [100 * row.primary for row in task_rows]
        deviations = [row.metrics[row.primary_metric][1] for row in task_rows]  # None with one seed
        errors = [100 * (deviation or 0.0) for deviation in deviations] if any(d is not None for d in deviations) else None
        axes.bar(range(len(task_rows)), means, yerr=errors, capsize=4, color="#4c72b0")
        axes.set_xticks(range(len(task_rows)), [_short(row.method) for row in task_rows], rotation=30, ha="right", fontsize=8)
        axes.set_ylabel(f"{task_rows[0].primary_metric} (%)")
        axes.set_title(title)
    figure.tight_layout()
    return figure


def heatmaps(runs_dir: Path) -> list[tuple[str, str]]:
    """(label, PNG as base64) for every head selection a finished run saved, whatever the method."""
    from lofit_bench.errors import UserError
    from lofit_bench.heads import HeadSelection, draw_heatmap, selections_in

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


def html_sections(sections: list[Section]) -> list[str]:
    """Extra sections (:mod:`lofit_bench.report_sections`) as HTML: tables, notes, plots."""
    from tabulate import tabulate

    parts = []
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(note)}</p>" for note in section.notes]
        for table in section.tables:
            parts.append(f"<h3>{html.escape(table.caption)}</h3>" + tabulate(table.rows, headers=table.headers, tablefmt="html", disable_numparse=True))
        for draw, caption in section.plots:
            parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{_png(draw())}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return parts


def write_html_report(runs_dir: Path, report: ReportModel) -> Path:
    from tabulate import tabulate

    summary = report.summary
    parts = [f"<h1>{html.escape(report.title)}</h1>"]
    for line in report.header:
        css = ' class="warning"' if line.warning else ""
        parts.append(f"<p{css}>{'warning: ' if line.warning else ''}{html.escape(line.text)}</p>")
    parts += html_sections([section for section in report.sections if section.top])
    for model, task, rows in report.tables():
        headers, table = task_table(rows)
        parts.append(
            f"<h2>{html.escape(task)} on {html.escape(model)} "
            f"<small>(primary metric: {html.escape(rows[0].primary_metric)})</small></h2>"
        )
        parts.append(tabulate(table, headers=headers, tablefmt="html"))
    if report.failed:
        parts.append("<h2>Failed runs</h2><ul>")
        parts += [f"<li>{html.escape(failure_line(record, report.records))}</li>" for record in report.failed]
        parts.append("</ul>")
    if summary:
        figures = [
            (scatter_figure(summary, lambda row: row.trainable_parameters, "trainable parameters (log; 0 drawn at 1)", True),
             "Accuracy vs trainable parameters. Pareto front (no method is both smaller and better) outlined and dashed."),
            (scatter_figure(summary, lambda row: row.peak_memory_mib, "peak memory (MiB; kind as in the tables)", False),
             "Accuracy vs peak memory. Pareto front outlined and dashed."),
            (bars_figure(summary), "Primary metric per task; error bars: sample std over seeds (none with one seed)."),
        ]
        parts.append("<h2>Plots</h2>")
        for figure, caption in figures:
            if figure is not None:
                parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{_png(figure)}">'
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts += html_sections([section for section in report.sections if not section.top])
    selected = heatmaps(runs_dir)
    if selected:
        parts.append("<h2>Selected attention heads</h2>")
        for label, image in selected:
            parts.append(f'<figure><img alt="heads of {html.escape(label)}" src="data:image/png;base64,{image}">'
                         f"<figcaption>{html.escape(label)}: head scores by layer and head; chosen heads outlined.</figcaption></figure>")
    parts.append("<h2>Columns</h2><ul>")
    parts += [f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>" for name, text in COLUMN_HELP.items()]
    parts.append("</ul>")
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>lofit-bench report</title><style>{STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    path = runs_dir / "report.html"
    write_text_atomic(path, page)
    return path

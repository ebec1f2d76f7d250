"""``comparison.html``: the cross-model comparison as one self-contained page, with a rank plot
(each method's rank on each model, one line per method, styled as in every report)."""

from __future__ import annotations

import html
from pathlib import Path

from lofit_bench.report.compare import (
    Comparison,
    _agreement_lines,
    _cell_text,
    render_json,
    render_markdown,
)
from lofit_bench.report.html import anchor_of, figure_html, figure_legend, html_page, panel_grid
from lofit_bench.report.plot_style import method_styles


def rank_figure(comparison: Comparison):
    """One panel per task: x the models (in the folders' order), y the rank (1 at the top)."""
    styles = method_styles([method for task in comparison.tasks for method in task.methods])
    figure, axes_list = panel_grid(len(comparison.tasks), 3, 3.9)
    drawn: list[str] = []
    for axes, task in zip(axes_list, comparison.tasks, strict=True):
        for position, method in enumerate(task.methods):
            shift = 0.025 * (position - (len(task.methods) - 1) / 2)  # tied methods side by side, not hidden
            points = [(index + shift, task.cells[(method, model)].rank) for index, model in enumerate(task.models)
                      if (method, model) in task.cells]
            style = styles[method]
            axes.plot([x for x, _ in points], [rank for _, rank in points], color=style.colour, marker=style.marker,
                      markersize=9, linewidth=2, gid=method)
            drawn.append(method)
        axes.set_xticks(range(len(task.models)), task.models)
        axes.set_xlim(-0.3, len(task.models) - 0.7)
        worst = max(cell.rank for cell in task.cells.values())
        axes.set_yticks(range(1, worst + 1))
        axes.set_ylim(worst + 0.5, 0.5)
        axes.set_ylabel(f"rank by {task.primary_metric}")
        axes.set_title(task.task)
        axes.grid(alpha=0.3)
    figure_legend(figure, styles, drawn)
    return figure


def render_comparison_html(comparison: Comparison) -> str:
    parts = ["<h1>lofit-bench: method rankings across models</h1>", '<ul class="facts">',
             f"<li>folders: {html.escape(', '.join(str(folder) for folder in comparison.folders))}</li>",
             f"<li>models: {html.escape(', '.join(comparison.models))} (each cell: primary metric %, then the method's "
             "rank on that model; '=' marks a tie)</li></ul>"]
    warnings = comparison.warnings + [f"left out {path}: {problem}" for path, problem in comparison.skipped]
    if warnings:
        parts.append('<div class="warnings"><ul>' + "".join(f'<li class="warning">{html.escape(text)}</li>' for text in warnings)
                     + "</ul></div>")
    sections = [("ranks", "Ranks")] + [(anchor_of("task", task.task), task.task) for task in comparison.tasks]
    if comparison.failed:
        sections.append(("failed", "Failed runs"))
    parts.append('<nav class="toc"><ul>' + "".join(f'<li><a href="#{anchor}">{html.escape(title)}</a></li>'
                                                   for anchor, title in sections) + "</ul></nav>")
    parts.append('<h2 id="ranks">Ranks</h2>')
    parts.append(figure_html(rank_figure(comparison), "Each method's rank on each model (1: best); a line that crosses "
                             "another is a reversal, listed with its p-values under its task."))
    for task in comparison.tasks:
        sizes = ", ".join(f"{model} {count}" for model, count in task.test_examples.items())
        parts.append(f'<h2 id="{anchor_of("task", task.task)}">{html.escape(task.task)} <small>(primary metric: '
                     f"{html.escape(task.primary_metric)}; test examples: {html.escape(sizes)})</small></h2>")
        head = "".join(f"<th>{html.escape(name)}</th>" for name in ["method", *task.models])
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(text)}</td>" for text in
                             [method, *(_cell_text(task.cells.get((method, model))) for model in task.models)]) + "</tr>"
            for method in task.methods
        )
        parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        lines = [line for agreement in task.agreements for line in _agreement_lines(agreement)]
        parts.append('<ul class="facts">' + "".join(f"<li>{html.escape(line.strip().removeprefix('- '))}</li>" for line in lines) + "</ul>")
    if comparison.failed:
        parts.append('<h2 id="failed">Failed runs (not ranked)</h2><ul>' + "".join(f"<li>{html.escape(line)}</li>" for line in comparison.failed) + "</ul>")
    return html_page("lofit-bench comparison", parts)


def write_comparison(comparison: Comparison, out_dir: Path) -> None:
    """``comparison.md``, ``comparison.json`` and ``comparison.html`` (with the rank plot) in
    ``out_dir``, each written atomically."""
    from lofit_bench.records.store import write_json_atomic, write_text_atomic

    page = render_comparison_html(comparison)  # drawn before any file is replaced
    write_text_atomic(out_dir / "comparison.md", render_markdown(comparison) + "\n")
    write_json_atomic(out_dir / "comparison.json", render_json(comparison))
    write_text_atomic(out_dir / "comparison.html", page)

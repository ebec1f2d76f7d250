"""Reports built from run records only (a report never reloads a model).

``build_report(runs_dir)`` builds the report's model once (:mod:`lofit_bench.report.model`)
and writes it in every registered format (:mod:`lofit_bench.report.formats`): ``report.md``
(tabulate), ``results.csv`` (one row per record), ``results.json`` (the aggregated table, the
rows and every tuning trial), ``report.html`` (self-contained, with plots;
:mod:`lofit_bench.report.html`) and any format a plugin adds, each file written atomically,
into the run folder or, with ``out_dir``, elsewhere (the run folder is then left untouched).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from typing import Any

from lofit_bench.report.model import (
    COLUMN_HELP,
    ReportModel,
    budget_label,
    distinct_budgets,
    failure_line,
    task_table,
)
from lofit_bench.report.sections import render_markdown_sections
from lofit_bench.report.side_effects import side_effects_json, side_effects_markdown

__all__ = ["render_csv", "render_json", "render_markdown"]


def render_markdown(report: ReportModel) -> str:
    from tabulate import tabulate

    lines = [f"# {report.title}", ""]
    lines += [f"- **warning: {line.text}**" if line.warning else f"- {line.text}" for line in report.header]
    lines.append("")
    lines += render_markdown_sections([section for section in report.sections if section.top])
    for model, task, rows in report.tables():
        headers, table = task_table(rows)
        sizes = sorted({row.test_examples for row in rows})
        lines += [
            f"## {task} on {model} (primary metric: {rows[0].primary_metric}; test examples: {', '.join(map(str, sizes))})",
            "",
            tabulate(table, headers=headers, tablefmt="github"),
            "",
        ]
    lines += render_markdown_sections([section for section in report.sections if not section.top])
    if report.timing_rows:
        lines += [
            "## Where the time went (wall seconds per run)",
            "",
            tabulate(report.timing_rows, headers=report.timing_headers, tablefmt="github"),
            "",
        ]
    lines += side_effects_markdown(report.records)
    if report.failed:
        lines += ["## Failed runs", ""]
        lines += [f"- {failure_line(record, report.labels)}" for record in report.failed]
        lines.append("")
    lines += ["## Columns", ""]
    lines += [f"- **{name}**: {text}" for name, text in COLUMN_HELP.items()]
    lines.append("")
    return "\n".join(lines)


def render_json(report: ReportModel) -> dict[str, Any]:
    return {
        "models": sorted({row.model for row in report.summary}),
        "budgets": sorted({budget_label(record.budget) for record in report.records}),
        "budget_fields": distinct_budgets(report.records),
        "reference": report.reference,
        "warnings": [line.text for line in report.header if line.warning],
        "summary": [asdict(row) for row in report.summary],
        "runs": report.rows,
        "trials": report.trials,
        "beyond_accuracy": side_effects_json(report.records),
        "sections": [
            {"title": section.title, "notes": section.notes,
             "tables": [{"caption": table.caption, "headers": table.headers, "rows": table.rows} for table in section.tables]}
            for section in report.sections
        ],
    }


def render_csv(report: ReportModel) -> str:
    fields: list[str] = []
    for row in report.rows:
        fields += [key for key in row if key not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(report.rows)
    return buffer.getvalue()

"""Extra report sections (studies' tables, axis plots, head overlap, transfer matrices): one
shape that the markdown and HTML reports both render, so each analysis lives in its own module
and the renderers need a few lines only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """A titled group of tables, notes and (HTML only) plots; ``top`` sections open the report."""

    title: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Each returns a matplotlib figure (drawn only for report.html) and its caption.
    plots: list[tuple[Callable[[], Any], str]] = field(default_factory=list)
    top: bool = False


def build_sections(runs_dir: Path, records: list[Any]) -> list[Section]:
    """Every extra section the folder's records (and its study, when it was run as one) call for."""
    from lofit_bench.head_overlap import overlap_sections
    from lofit_bench.report_axes import axis_sections
    from lofit_bench.report_paper_tables import paper_table_sections

    finished = [record for record in records if record.ok]
    if not finished:
        return []
    return [
        *paper_table_sections(runs_dir, finished),
        *axis_sections(finished),
        *overlap_sections(runs_dir, finished),
    ]


def render_markdown_sections(sections: list[Section]) -> list[str]:
    from tabulate import tabulate

    lines: list[str] = []
    for section in sections:
        lines += [f"## {section.title}", ""]
        lines += [f"- {note}" for note in section.notes]
        if section.notes:
            lines.append("")
        for table in section.tables:
            if table.caption:
                lines += [f"**{table.caption}**", ""]
            lines += [tabulate(table.rows, headers=table.headers, tablefmt="github", disable_numparse=True), ""]
    return lines

"""Extra report sections (studies' tables, axis plots, head overlap, transfer matrices): one
shape that the markdown and HTML reports both render, so each analysis lives in its own module
and the renderers need a few lines only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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

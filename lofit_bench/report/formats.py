"""Report formats: one registry of renderers over the one report model.

A format turns the :class:`~lofit_bench.report.model.ReportModel` into the text of one file.
The built-in ``md``, ``csv``, ``json`` and ``html`` formats are registered through the same
plugin hook as a third party's (``register_report_formats``), so a plugin adds a format (a
LaTeX table, a dashboard export) without any change to the core, and ``lofit-bench report
--formats`` and ``lofit-bench list formats`` name whatever is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lofit_bench.hookspecs import hookimpl

if TYPE_CHECKING:
    from lofit_bench.report.model import ReportModel


@dataclass(frozen=True)
class ReportFormat:
    """One file a report writes: ``render(report)`` gives its text, written atomically as
    ``file_name`` into the report's folder."""

    name: str
    file_name: str
    render: Callable[[ReportModel], str]
    description: str = ""


def _markdown(report: ReportModel) -> str:
    from lofit_bench.report.build import render_markdown

    return render_markdown(report) + "\n"


def _csv(report: ReportModel) -> str:
    from lofit_bench.report.build import render_csv

    return render_csv(report)


def _json(report: ReportModel) -> str:
    from lofit_bench.records.store import json_text
    from lofit_bench.report.build import render_json

    return json_text(render_json(report))


def _html(report: ReportModel) -> str:
    from lofit_bench.report.html import render_html  # matplotlib only when a page is drawn

    return render_html(report)


BUILTIN_FORMATS = (
    ReportFormat("md", "report.md", _markdown, "the tables as markdown (also printed)"),
    ReportFormat("csv", "results.csv", _csv, "one row per run record"),
    ReportFormat("json", "results.json", _json, "the summary, every run and every tuning trial"),
    ReportFormat("html", "report.html", _html, "one self-contained page: summary, tables, plots, tuning and training curves"),
)


@hookimpl
def register_report_formats(register: Callable[[ReportFormat], None]) -> None:
    for report_format in BUILTIN_FORMATS:
        register(report_format)


def report_formats():
    """The registry of every registered format (built-ins first, then plugins')."""
    from lofit_bench.plugins import get_host

    return get_host().report_formats


def formats_help() -> str:
    """One line naming every registered format and its file (for ``--formats --help``)."""
    registry = report_formats()
    return "; ".join(f"{name} ({registry.get(name).file_name})" for name in registry)

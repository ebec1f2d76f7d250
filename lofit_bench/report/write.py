"""Writing a report: the report model built once from a run folder's records, rendered in
every registered format (:mod:`lofit_bench.report.formats`), each file written atomically."""

from __future__ import annotations

from pathlib import Path

from lofit_bench.errors import UserError
from lofit_bench.records.store import write_text_atomic
from lofit_bench.report.formats import BUILTIN_FORMATS, report_formats
from lofit_bench.report.model import ReportModel, build_report_model, provenance_problems

__all__ = ["build_report"]


def build_report(
    runs_dir: Path,
    write: bool = True,
    reference: str | None = None,
    out_dir: Path | None = None,
    formats: list[str] | None = None,
    strict: bool = False,
) -> ReportModel:
    """The report of ``runs_dir``, written (unless ``write`` is false) into ``out_dir`` (default:
    ``runs_dir``) in each of ``formats`` (default: every registered format). ``strict``: refuse
    a folder whose runs do not all come from one clean commit (nothing is written)."""
    report = build_report_model(runs_dir, reference)
    if strict:
        refuse_mixed_provenance(report.records, runs_dir)
    if write:
        registry = report_formats()
        chosen = registry.resolve(list(formats) if formats is not None else registry.names())
        rendered = [(report_format.file_name, _render(report_format, report, registry.owner(report_format.name)))
                    for report_format in chosen]
        for file_name, text in rendered:  # every format drawn before any file is replaced
            write_text_atomic((out_dir or runs_dir) / file_name, text)
    return report


def refuse_mixed_provenance(records: list, runs_dir: Path) -> None:
    """``--strict``: one line naming what keeps ``records`` from being one clean commit's."""
    problems = provenance_problems(records)
    if problems:
        raise UserError(f"--strict: {runs_dir} does not hold one clean commit's runs: {'; '.join(problems)}. "
                        "Rerun the sweep from a clean checkout of one commit, or leave out --strict")


def _render(report_format, report: ReportModel, owner: str) -> str:
    """One format's text; a plugin's format that raises is one line naming it (a built-in's
    error is a bug and keeps its traceback)."""
    if report_format in BUILTIN_FORMATS:
        return report_format.render(report)
    try:
        text = report_format.render(report)
    except Exception as error:  # noqa: BLE001 - a plugin's bug is reported, not a traceback
        raise UserError(f"report format {report_format.name!r} (plugin {owner!r}) failed: {type(error).__name__}: {error}; "
                        f"no report file was replaced. Leave it out with --formats, or fix the plugin") from error
    if not isinstance(text, str):
        raise UserError(f"report format {report_format.name!r} (plugin {owner!r}) returned {type(text).__name__}, not the file's text")
    return text

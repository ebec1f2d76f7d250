"""Writing a report: the report model built once from a run folder's records, rendered in
every registered format (:mod:`lofit_bench.report.formats`), each file written atomically."""

from __future__ import annotations

import errno
from pathlib import Path

from lofit_bench.errors import DiskFull, UserError
from lofit_bench.records.store import write_text_atomic
from lofit_bench.report.formats import BUILTIN_FORMATS, report_formats
from lofit_bench.report.model import ReportModel, build_report_model, refuse_mixed_provenance

__all__ = ["build_report", "write_report"]


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
        refuse_mixed_provenance(report.records, str(runs_dir))
    if write:
        write_report(report, out_dir or runs_dir, formats, runs_dir=runs_dir)
    return report


def write_report(report: ReportModel, out_dir: Path, formats: list[str] | None = None, runs_dir: Path | None = None) -> list[Path]:
    """Write ``report`` into ``out_dir`` in each of ``formats`` (default: every registered one)
    and return the files written. Every format is drawn before any file is replaced; a file
    that cannot be written (a full disk, ``ulimit -f``, a folder in its place) does not stop
    the others, and then one error names each file, what the system said and what to do (the
    records are never touched: ``lofit-bench report RUNS_DIR`` writes the report again)."""
    registry = report_formats()
    chosen = registry.resolve(list(formats) if formats is not None else registry.names())
    rendered = [(report_format.file_name, _render(report_format, report, registry.owner(report_format.name)))
                for report_format in chosen]
    written, failed = [], []
    for file_name, text in rendered:
        path = out_dir / file_name
        try:
            write_text_atomic(path, text)
            written.append(path)
        except OSError as error:
            failed.append((path, error))
    if failed:
        problems = ", ".join(f"{path} ({error.strerror or error})" for path, error in failed)
        full = any(error.errno in (errno.ENOSPC, errno.EDQUOT) for _, error in failed)
        too_large = any(error.errno == errno.EFBIG for _, error in failed)
        fix = "free space" if full else "raise the file-size limit (ulimit -f)" if too_large else "make the folder writable"
        again = f"lofit-bench report {runs_dir or out_dir}" + (f" --out {out_dir}" if runs_dir not in (None, out_dir) else "")
        records = (runs_dir or out_dir) / "records"
        message = (f"could not write the report file(s) {problems}; {len(written)} other file(s) were written and the "
                   f"records in {records} are kept: {fix}, then run `{again}`")
        raise (DiskFull if full else UserError)(message)
    return written


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

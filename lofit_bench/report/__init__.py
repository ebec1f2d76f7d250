"""Reports, built from run records only (a report never reloads a model): the report's model
(:mod:`~lofit_bench.report.model`), its formats (:mod:`~lofit_bench.report.formats`: markdown,
CSV and JSON in :mod:`~lofit_bench.report.build`, the page in :mod:`~lofit_bench.report.html`),
written by :mod:`~lofit_bench.report.write`; significance tests and cross-model comparisons."""

from lofit_bench.report.build import render_csv, render_json, render_markdown
from lofit_bench.report.write import build_report

__all__ = ["build_report", "render_csv", "render_json", "render_markdown"]

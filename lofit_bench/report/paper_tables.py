"""Paper-shaped tables at the top of a report: one per model, methods as rows, the tasks'
metrics as columns (TruthfulQA MC1 and MC2, then one column per other task), Avg, # params and
% params, each cell mean ± std over seeds -- the layout of Yin et al. 2024, Tables 1 and 3.

A folder run as a study (``lofit-bench run --study NAME`` writes ``study.json``) also gets the
paper's own numbers for the same rows, labelled with the paper's model and the table they are
copied from, and, when the study names a row to compare against (``compare_against``; paper
Figure 2's same-task heads), significance marks: ``*`` p < 0.05 and ``+`` p < 0.1 (paired
bootstrap over the test examples) where a row scores below that row.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lofit_bench.records.record import RunRecord
from lofit_bench.records.run_folder import RunFolder
from lofit_bench.report.labels import RecordLabels, format_count
from lofit_bench.report.sections import Section, Table
from lofit_bench.report.stats import paired_bootstrap_p_value, per_example_values

#: Tasks whose every metric is a paper column (TruthfulQA: MC1 and MC2); others show their primary metric.
ALL_METRIC_TASKS = ("truthfulqa",)
#: The paper's column order; other tasks follow by name.
TASK_ORDER = ("truthfulqa", "mquake", "clutrr")


def read_study(runs_dir: Path) -> dict[str, Any] | None:
    """The study a folder was run as (``study.json``), or None."""
    path = RunFolder(runs_dir).study
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def columns(records: list[RunRecord]) -> list[tuple[str, str]]:
    """(task, metric) per column, in the paper's order."""
    tasks = sorted({record.task.name for record in records}, key=lambda name: (name not in TASK_ORDER, TASK_ORDER.index(name) if name in TASK_ORDER else 0, name))
    found = []
    for task in tasks:
        first = next(record for record in records if record.task.name == task)
        metrics = first.task.metrics if task in ALL_METRIC_TASKS else [first.task.primary_metric]
        found += [(task, metric) for metric in metrics]
    return found


def column_name(task: str, metric: str) -> str:
    return f"{task} {metric}"


def _mean_std(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def paper_table(records: list[RunRecord], compare_against: str | None = None, labels: RecordLabels | None = None) -> list[tuple[str, Table]]:
    """(model, table) per model of the finished ``records`` (``labels``: theirs, when the caller has them)."""
    labels = labels or RecordLabels(records)
    tables = []
    for model in sorted({labels.model(record) for record in records}):
        mine = [record for record in records if labels.model(record) == model and record.metrics]
        cols = columns(mine)
        cells: dict[str, dict[tuple[str, str], dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        runs: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
        for record in mine:
            label = labels.method(record)
            runs[(label, record.task.name)].append(record)
            for task, metric in cols:
                value = record.metrics.get(metric) if record.task.name == task else None
                if value is not None:
                    cells[label][(task, metric)][record.seed] = value
        headers = ["method", *(column_name(task, metric) for task, metric in cols), "Avg", "# params", "% params", "seeds"]
        rows = []
        for label in sorted(cells):
            row = [label]
            for task, metric in cols:
                values = list(cells[label][(task, metric)].values())
                text = _mean_std(values) if values else "-"
                if values and compare_against and label != compare_against:
                    text += _mark(runs.get((label, task), []), runs.get((compare_against, task), []), metric)
                row.append(text)
            row.append(_average(cells[label], cols))
            row += _parameters([record for (name, _), items in runs.items() if name == label for record in items])
            row.append(str(len({seed for values in cells[label].values() for seed in values})))
            rows.append(row)
        note = f"; marks: * p < 0.05, + p < 0.1 below {compare_against}" if compare_against else ""
        tables.append((model, Table(f"{model} (ours): mean ± std over seeds{note}", headers, rows)))
    return tables


def _average(cells: dict[tuple[str, str], dict[int, float]], cols: list[tuple[str, str]]) -> str:
    """Mean of the row's columns (paper Table 1's Avg counts MC1 and MC2 both), ± std over the
    seeds that have every column; '-' when a column is missing."""
    if any(not cells.get(column) for column in cols):
        return "-"
    seeds = set.intersection(*(set(cells[column]) for column in cols))
    per_seed = [statistics.fmean(cells[column][seed] for column in cols) for seed in sorted(seeds)]
    if len(per_seed) >= 2:
        return _mean_std(per_seed)
    return f"{100 * statistics.fmean(statistics.fmean(cells[column].values()) for column in cols):.1f}"


def _parameters(records: list[RunRecord]) -> list[str]:
    counts = sorted({record.trainable_parameters.count for record in records if record.trainable_parameters})
    percents = sorted({record.trainable_parameters.percent_of_base for record in records if record.trainable_parameters})
    if not counts:
        return ["-", "-"]
    count = format_count(counts[0]) if len(counts) == 1 else f"{format_count(counts[0])}-{format_count(counts[-1])}"
    percent = f"{percents[0]:.4g}%" if len(percents) == 1 else f"{percents[0]:.4g}-{percents[-1]:.4g}%"
    return [count, percent]


def _mark(items: list[RunRecord], reference: list[RunRecord], metric: str) -> str:
    """``*`` (p < 0.05) or ``+`` (p < 0.1) when ``items`` score below ``reference`` on paired examples."""
    if not items or not reference:
        return ""
    mine, theirs = per_example_values(items, metric), per_example_values(reference, metric)
    shared = sorted(set(mine) & set(theirs))
    if not shared or statistics.fmean(mine[key] for key in shared) >= statistics.fmean(theirs[key] for key in shared):
        return ""
    p_value = paired_bootstrap_p_value(mine, theirs)
    if p_value is None:
        return ""
    return "*" if p_value < 0.05 else "+" if p_value < 0.1 else ""


def study_paper_table(study: dict[str, Any]) -> Table | None:
    """The paper's numbers the study file copied, in the same columns."""
    paper = study.get("paper") or {}
    rows = paper.get("rows") or {}
    if not rows:
        return None
    names = list(dict.fromkeys(name for values in rows.values() for name in values))
    body = [[label, *(_paper_value(values.get(name)) for name in names)] for label, values in rows.items()]
    return Table(f"paper: {paper.get('model', '?')} ({paper.get('cite', 'Yin et al. 2024')})", ["method", *names], body)


def _paper_value(value: Any) -> str:
    if value is None:
        return "-"
    return str(value)


def paper_table_sections(runs_dir: Path, records: list[RunRecord], labels: RecordLabels | None = None) -> list[Section]:
    study = read_study(runs_dir)
    compare_against = (study or {}).get("compare_against")
    tables = [table for _, table in paper_table(records, compare_against, labels)]
    notes = []
    title = "Summary in the paper's layout"
    if study:
        title = f"Study {study.get('name')}: {study.get('title', '')}".rstrip(": ")
        if study.get("description"):
            notes.append(study["description"])
        paper = study_paper_table(study)
        if paper is not None:
            tables.append(paper)
            notes.append("the paper's numbers are copied from the table cited, for the paper's model: compare the pattern "
                         "(which rows win), not the level, on another model")
    return [Section(title, tables=tables, notes=notes, top=True)]

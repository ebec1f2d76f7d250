"""Reports built from run records only (a report never reloads a model).

``build_report(runs_dir)`` aggregates records per (task, method) over seeds and writes
``report.md`` (tabulate), ``results.csv`` (one row per record), ``results.json`` (the
aggregated table and the rows) and ``report.html`` (self-contained, with plots).
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lofit_bench.errors import UserError
from lofit_bench.records import load_records, write_json_atomic
from lofit_bench.stats import paired_bootstrap_p_value, per_example_values

REFERENCE_METHOD = "lofit"

MEMORY_LABELS = {
    "cpu_peak_rss_delta": "peak RSS over model (CPU, MiB)",
    "cuda_peak_allocated": "peak GPU allocated (MiB)",
}

COLUMN_HELP = {
    "method": "method name (its config is in the record)",
    "seeds": "number of seeds that finished",
    "metric (%)": "the task's metrics: mean over seeds (± sample std with several seeds), each first averaged over the task's folds",
    "p vs lofit": "two-sided paired bootstrap p-value (10,000 resamples of test examples, values averaged over seeds) "
    "of the primary metric against LoFiT's on the same examples; '-' for LoFiT itself or when it did not run",
    "params": "trainable parameters (exact numel of trained tensors)",
    "% params": "trainable parameters as a percentage of the base model's",
    "train s": "wall time of prepare + training/fitting, summed over folds (mean over seeds)",
    "eval s": "wall time of evaluation on the test split, summed over folds (mean over seeds)",
    "peak memory": "peak memory during fit/evaluation, labelled by kind; CPU: process RSS above the RSS with the "
    "model loaded; GPU: torch peak allocated, reset per phase",
}


@dataclass
class SummaryRow:
    """One (task, method) cell group, aggregated over seeds."""

    task: str
    method: str
    seeds: list[int]
    metrics: dict[str, tuple[float, float | None]]
    primary_metric: str
    p_value: float | None
    trainable_parameters: int | None
    percent_parameters: float | None
    peak_memory_mib: float | None
    memory_kind: str | None
    train_seconds: float
    eval_seconds: float
    budget: str
    test_examples: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> float:
        return self.metrics[self.primary_metric][0]


@dataclass
class Report:
    markdown: str
    rows: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    summary: list[SummaryRow] = field(default_factory=list)


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_percent(value: tuple[float, float | None]) -> str:
    mean, std = value
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def format_count(count: int | None) -> str:
    if count is None:
        return "-"
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= limit:
            return f"{count / limit:.2f}{suffix}"
    return str(count)


def format_p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def method_label(record: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The method's name, plus its options when the folder holds several configs of it (so two
    configs are never averaged together as if they were seeds)."""
    name = record["method"]["name"]
    variants = {
        json.dumps(other["method"].get("options") or {}, sort_keys=True)
        for other in records
        if other["method"]["name"] == name
    }
    options = record["method"].get("options") or {}
    if len(variants) < 2 or not options:
        return name
    return f"{name} [{', '.join(f'{key}={json.dumps(value)}' for key, value in sorted(options.items()))}]"


def summarize(records: list[dict[str, Any]]) -> list[SummaryRow]:
    """Aggregate finished records per (task, method); p-values against LoFiT's examples."""
    finished = [record for record in records if record.get("status") == "ok"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in finished:
        groups[(record["task"]["name"], method_label(record, finished))].append(record)
    summary = []
    for (task, method), items in sorted(groups.items()):
        first = items[0]
        primary = first["task"]["primary_metric"]
        reference = groups.get((task, REFERENCE_METHOD))
        p_value = None
        if reference is not None and method != REFERENCE_METHOD:
            p_value = paired_bootstrap_p_value(
                per_example_values(items, primary), per_example_values(reference, primary)
            )
        params = first.get("trainable_parameters") or {}
        memory = [record["memory"]["peak_mib"] for record in items if record.get("memory")]
        summary.append(
            SummaryRow(
                task=task,
                method=method,
                seeds=sorted(record["seed"] for record in items),
                metrics={name: _mean_std([record["metrics"][name] for record in items]) for name in first["task"]["metrics"]},
                primary_metric=primary,
                p_value=p_value,
                trainable_parameters=params.get("count"),
                percent_parameters=params.get("percent_of_base"),
                peak_memory_mib=max(memory) if memory else None,
                memory_kind=(first.get("memory") or {}).get("kind"),
                train_seconds=statistics.fmean(record["timings"].get("fit", 0.0) for record in items),
                eval_seconds=statistics.fmean(record["timings"].get("evaluate", 0.0) for record in items),
                budget=first["budget"]["name"],
                test_examples=sum(fold["eval_size"] for fold in first["folds"].values()),
            )
        )
    return summary


def build_report(runs_dir: Path, write: bool = True, html: bool = True) -> Report:
    from tabulate import tabulate

    records = load_records(runs_dir)
    if not records:
        raise UserError(f"no run records in {runs_dir}; run `lofit-bench run --out {runs_dir}` first")
    failed = [record for record in records if record.get("status") != "ok"]
    summary = summarize(records)
    budgets = sorted({budget_label(record) for record in records})
    models = sorted({(record.get("model") or {}).get("name", "?") for record in records if record.get("status") == "ok"})

    lines = [f"# lofit-bench report: {runs_dir}", ""]
    lines += [f"- model: {', '.join(models) or '-'}", f"- budget: {'; '.join(budgets)}"]
    lines += [f"- **warning: {line}**" for line in budget_differences(records)]
    lines.append("")
    for task in sorted({row.task for row in summary}):
        rows = [row for row in summary if row.task == task]
        headers, table = task_table(rows)
        sizes = sorted({row.test_examples for row in rows})
        lines += [
            f"## {task} (primary metric: {rows[0].primary_metric}; test examples: {', '.join(map(str, sizes))})",
            "",
            tabulate(table, headers=headers, tablefmt="github"),
            "",
        ]
    timing_headers, timing_rows = timing_table(records)
    if timing_rows:
        lines += [
            "## Where the time went (wall seconds per run)",
            "",
            tabulate(timing_rows, headers=timing_headers, tablefmt="github"),
            "",
        ]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [
            f"- {record['method']['name']} on {record['task']['name']} (seed {record['seed']}): "
            f"{(record.get('error') or {}).get('type')}: {(record.get('error') or {}).get('message')}"
            for record in failed
        ]
        lines.append("")
    lines += ["## Columns", ""]
    lines += [f"- **{name}**: {text}" for name, text in COLUMN_HELP.items()]
    lines.append("")
    markdown = "\n".join(lines)
    csv_rows = [csv_row(record) for record in records]
    report = Report(markdown, csv_rows, failed, summary)
    if write:
        (runs_dir / "report.md").write_text(markdown + "\n")
        write_csv(runs_dir / "results.csv", csv_rows)
        write_json_atomic(
            runs_dir / "results.json",
            {"models": models, "budgets": budgets, "summary": [asdict(row) for row in summary], "runs": csv_rows},
        )
        if html:
            from lofit_bench.report_html import write_html_report

            write_html_report(runs_dir, report, records)
    return report


def task_table(rows: list[SummaryRow]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of one task's table (shared by the markdown and HTML reports)."""
    metric_names = list(rows[0].metrics)
    kinds = sorted({row.memory_kind for row in rows if row.memory_kind})
    memory_header = " / ".join(MEMORY_LABELS.get(kind, kind) for kind in kinds) or "peak memory"
    headers = [
        "method", "seeds", *[f"{name} (%)" for name in metric_names], f"p vs {REFERENCE_METHOD}",
        "params", "% params", "train s", "eval s", memory_header,
    ]
    table = [
        [
            row.method,
            str(len(row.seeds)),
            *[format_percent(row.metrics[name]) for name in metric_names],
            format_p(row.p_value),
            format_count(row.trainable_parameters),
            "-" if row.percent_parameters is None else f"{row.percent_parameters:.4f}",
            f"{row.train_seconds:.1f}",
            f"{row.eval_seconds:.1f}",
            "-" if row.peak_memory_mib is None else f"{row.peak_memory_mib:.0f}",
        ]
        for row in rows
    ]
    return headers, table


def timing_table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per finished run: loading, each part of the fit as the method timed it, evaluation."""
    headers = ["method", "task", "seed", "load s", "fit s", "fit parts (s)", "eval s", "total s"]
    finished = [record for record in records if record.get("status") == "ok"]
    rows = []
    for record in finished:
        timings = record.get("timings") or {}
        parts = timings.get("fit_phases") or {}
        rows.append([
            method_label(record, finished), record["task"]["name"], str(record["seed"]),
            f"{timings.get('load_model', 0.0):.1f}", f"{timings.get('fit', 0.0):.1f}",
            ", ".join(f"{name} {seconds:.0f}" for name, seconds in parts.items()) or "-",
            f"{timings.get('evaluate', 0.0):.1f}", f"{timings.get('total_s', 0.0):.1f}",
        ])
    return headers, rows


def budget_differences(records: list[dict[str, Any]]) -> list[str]:
    """One line per budget field on which the folder's runs disagree, naming the runs."""
    lines = []
    fields = sorted({name for record in records for name in record["budget"]})
    for name in fields:
        by_value: dict[str, list[str]] = defaultdict(list)
        for record in records:
            value = json.dumps(record["budget"].get(name))
            by_value[value].append(f"{record['method']['name']}/{record['task']['name']}/seed {record['seed']}")
        if len(by_value) > 1:
            parts = "; ".join(f"{value} for {', '.join(sorted(runs))}" for value, runs in sorted(by_value.items()))
            lines.append(f"runs in this folder used different budgets: {name} = {parts}; compare with care")
    return lines


def budget_label(record: dict[str, Any]) -> str:
    budget = record["budget"]
    parts = [f"{budget['name']}: {budget['epochs']} epochs, batch {budget['batch_size']}"]
    for name in ("train_examples", "eval_examples"):
        parts.append(f"{name.split('_')[0]} {budget[name] if budget[name] else 'all'}")
    return ", ".join(parts)


def csv_row(record: dict[str, Any]) -> dict[str, Any]:
    params = record.get("trainable_parameters") or {}
    memory = record.get("memory") or {}
    timings = record.get("timings") or {}
    throughput = record.get("throughput") or {}
    row: dict[str, Any] = {
        "method": record["method"]["name"],
        "task": record["task"]["name"],
        "seed": record["seed"],
        "status": record["status"],
        "model": (record.get("model") or {}).get("name", (record.get("model_settings") or {}).get("name")),
        "budget": record["budget"]["name"],
        "trainable_parameters": params.get("count"),
        "percent_parameters": params.get("percent_of_base"),
        "memory_kind": memory.get("kind"),
        "peak_memory_mib": memory.get("peak_mib"),
        "train_s": timings.get("fit"),
        "eval_s": timings.get("evaluate"),
        "total_s": timings.get("total_s"),
        "train_tokens_per_s": throughput.get("train_tokens_per_s"),
        "eval_tokens_per_s": throughput.get("eval_tokens_per_s"),
        "error": (record.get("error") or {}).get("message"),
        "record": Path(record["_path"]).name,
    }
    for name, value in (record.get("metrics") or {}).items():
        row[f"metric:{name}"] = value
    return row


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

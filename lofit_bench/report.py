"""Reports built from run records only (a report never reloads a model).

``build_report(runs_dir)`` returns the markdown and writes ``report.md`` and ``results.csv``
into the folder.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lofit_bench.errors import UserError
from lofit_bench.records import load_records

MEMORY_LABELS = {
    "cpu_peak_rss_delta": "peak RSS over model (CPU, MiB)",
    "cuda_peak_allocated": "peak GPU allocated (MiB)",
}

COLUMN_HELP = {
    "method": "method name (its config is in the record)",
    "seeds": "number of seeds that finished",
    "params": "trainable parameters (exact numel of trained tensors)",
    "% params": "trainable parameters as a percentage of the base model's",
    "fit s": "wall time of prepare + training/fitting, summed over folds (mean over seeds)",
    "eval s": "wall time of evaluation on the test split, summed over folds (mean over seeds)",
    "peak memory": "peak memory during fit/evaluation; CPU: RSS above the loaded model, GPU: torch peak allocated",
}


@dataclass
class Report:
    markdown: str
    rows: list[dict[str, Any]]
    failed: list[dict[str, Any]]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _format_count(count: int | None) -> str:
    if count is None:
        return "-"
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= limit:
            return f"{count / limit:.2f}{suffix}"
    return str(count)


def build_report(runs_dir: Path, write: bool = True) -> Report:
    from tabulate import tabulate

    records = load_records(runs_dir)
    if not records:
        raise UserError(f"no run records in {runs_dir}; run `lofit-bench run --out {runs_dir}` first")
    finished = [record for record in records if record.get("status") == "ok"]
    failed = [record for record in records if record.get("status") != "ok"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in finished:
        groups[(record["task"]["name"], record["method"]["name"])].append(record)

    lines = [f"# lofit-bench report: {runs_dir}", ""]
    budgets = sorted({_budget_label(record) for record in records})
    models = sorted({record.get("model", {}).get("name", "?") for record in finished})
    lines += [f"- model: {', '.join(models) or '-'}", f"- budget: {'; '.join(budgets)}"]
    if len({record['budget'].get('name') for record in records}) > 1 or len(budgets) > 1:
        lines.append("- **warning: runs in this folder used different budgets; compare with care**")
    lines.append("")

    csv_rows = []
    for task_name in sorted({task for task, _ in groups}):
        task_records = [record for (task, _), items in groups.items() if task == task_name for record in items]
        metric_names = task_records[0]["task"]["metrics"]
        primary = task_records[0]["task"]["primary_metric"]
        memory_kinds = {(record.get("memory") or {}).get("kind") for record in task_records}
        memory_header = " / ".join(MEMORY_LABELS.get(kind, str(kind)) for kind in sorted(memory_kinds, key=str))
        headers = ["method", "seeds", *[f"{name} (%)" for name in metric_names], "params", "% params", "fit s", "eval s", memory_header]
        table = []
        for (task, method), items in sorted(groups.items(), key=lambda item: item[0]):
            if task != task_name:
                continue
            first = items[0]
            params = first.get("trainable_parameters", {})
            memory = [record["memory"]["peak_mib"] for record in items if record.get("memory")]
            table.append(
                [
                    method,
                    len(items),
                    *[_mean_std([record["metrics"][name] for record in items]) for name in metric_names],
                    _format_count(params.get("count")),
                    f"{params.get('percent_of_base', 0):.4f}",
                    f"{statistics.fmean(record['timings'].get('fit', 0.0) for record in items):.1f}",
                    f"{statistics.fmean(record['timings'].get('evaluate', 0.0) for record in items):.1f}",
                    f"{max(memory):.0f}" if memory else "-",
                ]
            )
        eval_sizes = sorted({sum(fold["eval_size"] for fold in record["folds"].values()) for record in task_records})
        lines += [
            f"## {task_name} (primary metric: {primary}; test examples: {', '.join(map(str, eval_sizes))})",
            "",
            tabulate(table, headers=headers, tablefmt="github"),
            "",
        ]
    for record in records:
        csv_rows.append(_csv_row(record))
    if failed:
        lines += ["## Failed runs", ""]
        lines += [
            f"- {record['method']['name']} on {record['task']['name']} (seed {record['seed']}): "
            f"{record.get('error', {}).get('type')}: {record.get('error', {}).get('message')}"
            for record in failed
        ]
        lines.append("")
    lines += ["## Columns", ""]
    lines += [f"- **{name}**: {text}" for name, text in COLUMN_HELP.items()]
    lines += ["- **metric (%)**: mean over seeds (± sample std when several), each averaged over the task's folds", ""]
    markdown = "\n".join(lines)
    if write:
        (runs_dir / "report.md").write_text(markdown + "\n")
        _write_csv(runs_dir / "results.csv", csv_rows)
    return Report(markdown, csv_rows, failed)


def _budget_label(record: dict[str, Any]) -> str:
    budget = record["budget"]
    parts = [f"{budget['name']}: {budget['epochs']} epochs, batch {budget['batch_size']}"]
    for field in ("train_examples", "eval_examples"):
        parts.append(f"{field.split('_')[0]} {budget[field] if budget[field] else 'all'}")
    return ", ".join(parts)


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    params = record.get("trainable_parameters") or {}
    memory = record.get("memory") or {}
    row: dict[str, Any] = {
        "method": record["method"]["name"],
        "task": record["task"]["name"],
        "seed": record["seed"],
        "status": record["status"],
        "model": (record.get("model") or {}).get("name", record.get("model_settings", {}).get("name")),
        "budget": record["budget"]["name"],
        "trainable_parameters": params.get("count"),
        "percent_parameters": params.get("percent_of_base"),
        "memory_kind": memory.get("kind"),
        "peak_memory_mib": memory.get("peak_mib"),
        "fit_s": (record.get("timings") or {}).get("fit"),
        "eval_s": (record.get("timings") or {}).get("evaluate"),
        "total_s": (record.get("timings") or {}).get("total_s"),
        "error": (record.get("error") or {}).get("message"),
        "record": Path(record["_path"]).name,
    }
    for name, value in (record.get("metrics") or {}).items():
        row[f"metric:{name}"] = value
    return row


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)

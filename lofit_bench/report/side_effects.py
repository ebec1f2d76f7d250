"""The report's "beyond accuracy" part, built from records only: what each fit changed and cost.

Three views of the fold records' ``side_effects``, ``retention``, ``locality`` and
``inference_speed`` (:mod:`lofit_bench.engine.fit_effects`) and the tasks' teacher-forced
``secondary_metrics``, each averaged over folds, then over seeds, per (model, task, method):

- the side-effects table: target accuracy, the secondary metrics, KL from the base model, the
  change in cross-entropy on held-out text, MQuAKE locality and generation speed (base, as
  run, as served);
- the retention table: methods x retention tasks, the fitted model's score and its change
  from the base model's;
- accuracy against KL from the base model, one point per method per task, with the Pareto
  front (no other method reaches at least that accuracy with less change).

The markdown and JSON reports each call one function of this module; the HTML page
(:mod:`lofit_bench.report.html`) draws the same rows with its shared tables, figures and method styles.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from lofit_bench.metrics import is_fraction
from lofit_bench.records.record import RunRecord
from lofit_bench.report.labels import RecordLabels
from lofit_bench.report.stats import pareto_front

EFFECTS_HELP = {
    "KL from base": "KL(base || fitted) of the next-token distributions on held-out text (Python Language Reference "
    "excerpts), nats per token; 0: the fit changed nothing there",
    "CE change": "fitted minus base cross-entropy on the same text, nats per token (positive: general text got less likely)",
    "locality (%)": "MQuAKE: held-out single-hop facts answered as the base model answered them",
    "tok/s base / run / served": "greedy generation tokens/s of the base model, the fitted model as run (hooks, "
    "unmerged adapters) and as served (merged where the method can merge); same prompts and batch",
    "retention": "another task (budget.also_eval) scored after the fit with no training on it: fitted score (change from "
    "the base model's), primary metric, %",
}


@dataclass
class EffectsRow:
    model: str
    task: str
    method: str
    seeds: int
    primary_metric: str
    accuracy: float | None
    secondary: dict[str, float] = field(default_factory=dict)
    kl_from_base: float | None = None
    cross_entropy_change: float | None = None
    locality: float | None = None
    base_tokens_per_s: float | None = None
    as_run_tokens_per_s: float | None = None
    served_tokens_per_s: float | None = None
    served_as: str | None = None
    #: retention task -> (fitted score, change from the base model's), primary metric.
    retention: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @property
    def primary(self) -> float | None:
        """The accuracy, under the name the report's plots read (as :class:`SummaryRow`'s)."""
        return self.accuracy


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if present else None


def _fold_mean(record: RunRecord, read: Callable[[Any], float | None]) -> float | None:
    return _mean([read(fold) for fold in record.folds.values()])


def effects_rows(records: list[RunRecord]) -> list[EffectsRow]:
    """One row per (model, task, method) over the finished records that measured anything beyond accuracy."""
    finished = [record for record in records if record.ok]
    labels = RecordLabels(finished)
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for record in finished:
        key = (labels.model(record), record.task.name, labels.method(record))
        groups.setdefault(key, []).append(record)
    rows = []
    for (model, task, method), items in sorted(groups.items()):
        first = items[0]

        def over_runs(read: Callable[[Any], float | None], items: list[RunRecord] = items) -> float | None:
            return _mean([_fold_mean(record, read) for record in items])

        speeds = [fold.inference_speed for record in items for fold in record.folds.values() if fold.inference_speed]
        retention_tasks = sorted({name for record in items for fold in record.folds.values() for name in fold.retention})
        primary = first.task.primary_metric or ""
        row = EffectsRow(
            model=model, task=task, method=method, seeds=len(items), primary_metric=primary,
            accuracy=_mean([(record.metrics or {}).get(primary) for record in items]),
            secondary={
                name: value for name in first.task.secondary_metrics
                if (value := _mean([(record.metrics or {}).get(name) for record in items])) is not None
            },
            kl_from_base=over_runs(lambda fold: fold.side_effects.kl_from_base if fold.side_effects else None),
            cross_entropy_change=over_runs(lambda fold: fold.side_effects.cross_entropy_change if fold.side_effects else None),
            locality=over_runs(lambda fold: fold.locality.share_unchanged if fold.locality else None),
            base_tokens_per_s=_mean([speed.base_tokens_per_s for speed in speeds]),
            as_run_tokens_per_s=_mean([speed.as_run_tokens_per_s for speed in speeds]),
            served_tokens_per_s=_mean([speed.served_tokens_per_s for speed in speeds]),
            served_as=speeds[0].served_as if speeds else None,
            retention={
                name: (
                    over_runs(lambda fold, name=name: fold.retention[name].fitted if name in fold.retention else None),
                    over_runs(lambda fold, name=name: fold.retention[name].change if name in fold.retention else None),
                )
                for name in retention_tasks
            },
        )
        measured = row.kl_from_base is not None or row.retention or row.locality is not None or row.secondary
        if measured:
            rows.append(row)
    return rows


def _number(value: float | None) -> str:
    """Three significant digits: a tiny model's KL is 1e-5, a full fine-tune's on a real one 1e-1."""
    return "-" if value is None else f"{value:.3g}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _signed_percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def _secondary(value: float, name: str) -> str:
    return _percent(value) if is_fraction(name) else f"{value:.2f}"


def effects_table(rows: list[EffectsRow]) -> tuple[list[str], list[list[str]]]:
    """The side-effects table (every task in one table; a task's secondary metrics as 'name value')."""
    headers = ["model", "task", "method", "accuracy (%)", "secondary", "KL from base", "CE change", "locality (%)",
               "tok/s base / run / served"]
    table = []
    for row in rows:
        speed = (
            "-" if row.base_tokens_per_s is None else
            f"{row.base_tokens_per_s:.1f} / {row.as_run_tokens_per_s:.1f} / {row.served_tokens_per_s:.1f}"
            + (" (merged)" if row.served_as == "merged" else "")
        )
        table.append([
            row.model, row.task, row.method, _percent(row.accuracy),
            ", ".join(f"{name} {_secondary(value, name)}" for name, value in row.secondary.items()) or "-",
            _number(row.kl_from_base), _number(row.cross_entropy_change), _percent(row.locality), speed,
        ])
    return headers, table


def retention_table(rows: list[EffectsRow]) -> tuple[list[str], list[list[str]]] | None:
    """Methods (fitted on a task) x retention tasks: 'fitted (change)'; None when no run had any."""
    tasks = sorted({name for row in rows for name in row.retention})
    if not tasks:
        return None
    headers = ["model", "fitted on", "method", *tasks]
    table = [
        [row.model, row.task, row.method, *(
            f"{_percent(row.retention[name][0])} ({_signed_percent(row.retention[name][1])})" if name in row.retention else "-"
            for name in tasks
        )]
        for row in rows if row.retention
    ]
    return headers, table


def accuracy_vs_kl(rows: list[EffectsRow]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per (model, task): one point per method (KL from base, accuracy) and whether it is on the Pareto front."""
    panels: dict[tuple[str, str], list[EffectsRow]] = {}
    for row in rows:
        if row.kl_from_base is not None and row.accuracy is not None:
            panels.setdefault((row.model, row.task), []).append(row)
    result = {}
    for key, members in panels.items():
        front = set(pareto_front([(row.kl_from_base, row.accuracy) for row in members]))  # type: ignore[misc]
        result[key] = [
            {"method": row.method, "kl_from_base": row.kl_from_base, "accuracy": row.accuracy, "pareto": index in front}
            for index, row in enumerate(members)
        ]
    return result


# -- renderers -------------------------------------------------------------------------------------
def side_effects_markdown(records: list[RunRecord]) -> list[str]:
    """The markdown section (empty when no run measured anything beyond accuracy)."""
    from tabulate import tabulate

    rows = effects_rows(records)
    if not rows:
        return []
    headers, table = effects_table(rows)
    lines = ["## Beyond accuracy: side effects, locality, inference speed", "", tabulate(table, headers=headers, tablefmt="github"), ""]
    retained = retention_table(rows)
    if retained:
        lines += ["## Retention: other tasks after the fit (fitted % (change from base))", "",
                  tabulate(retained[1], headers=retained[0], tablefmt="github"), ""]
    for (model, task), points in accuracy_vs_kl(rows).items():
        front = [point["method"] for point in points if point["pareto"]]
        lines.append(f"- Pareto front of accuracy vs KL from base, {task} on {model}: {', '.join(front)}")
    lines += ["", *[f"- **{name}**: {text}" for name, text in EFFECTS_HELP.items()], ""]
    return lines


def side_effects_json(records: list[RunRecord]) -> dict[str, Any]:
    rows = effects_rows(records)
    return {
        "rows": [asdict(row) for row in rows],
        "accuracy_vs_kl": [
            {"model": model, "task": task, "points": points} for (model, task), points in accuracy_vs_kl(rows).items()
        ],
    }

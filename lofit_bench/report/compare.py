"""Rankings across models: does the order of methods on a task hold from one model to another?

``lofit-bench compare DIR [DIR ...]`` reads the records of several run folders (typically one
per model, each run under the same budget) and puts, per task, every method's primary metric
and rank on each model side by side. For each pair of models it gives Kendall's tau-b over
the methods both ran, and lists every pair of methods whose order reverses, with the paired
bootstrap p-value of their difference on each model: a reversal that is significant on
neither model is noise at these test-set sizes, one that is significant on both is a real
change of ranking.

The comparison follows the report's rules: records of different models are never averaged
or paired (p-values pair two methods of one model on the same test examples), a run held by
two folders is an error rather than a second seed, budgets that differ between the runs
compared are stated, and failed runs are listed, never dropped silently.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lofit_bench.errors import UserError
from lofit_bench.records.record import RunRecord
from lofit_bench.records.store import read_record_folder
from lofit_bench.report.model import (
    RecordLabels,
    budget_differences,
    failure_line,
    provenance_lines,
    refuse_mixed_provenance,
    summarize,
    version_differences,
)
from lofit_bench.report.stats import paired_bootstrap_p_value, per_example_values

#: A reversal counts as significant on a model when its paired bootstrap p-value is below this.
SIGNIFICANCE = 0.05


@dataclass
class Cell:
    """One method on one model: its primary metric (mean over seeds) and competition rank."""

    score: float
    rank: int
    tied: bool
    seeds: int


@dataclass
class Reversal:
    """Two methods ordered one way on ``models[0]`` and the other way on ``models[1]``."""

    first: str
    second: str
    #: Each model's paired bootstrap p-value of ``first`` vs ``second`` (None: no shared examples).
    p_values: tuple[float | None, float | None]

    @property
    def significant_on(self) -> int:
        return sum(1 for p in self.p_values if p is not None and p < SIGNIFICANCE)


@dataclass
class Agreement:
    """How well two models' rankings of the methods both ran agree."""

    models: tuple[str, str]
    methods: int
    kendall_tau_b: float | None
    concordant: int
    discordant: int
    tied: int
    reversals: list[Reversal] = field(default_factory=list)


@dataclass
class TaskComparison:
    task: str
    primary_metric: str
    models: list[str]
    #: Methods in the order of their rank on the first model (then the next, for methods it did not run).
    methods: list[str]
    cells: dict[tuple[str, str], Cell]
    test_examples: dict[str, int]
    agreements: list[Agreement]


@dataclass
class Comparison:
    folders: list[Path]
    models: list[str]
    tasks: list[TaskComparison]
    warnings: list[str]
    failed: list[str]
    skipped: list[tuple[Path, str]]


def compare_folders(folders: list[Path], tasks: list[str] | None = None, strict: bool = False) -> Comparison:
    """Read the records of ``folders`` and compare the methods' rankings across models, per task.
    ``strict``: refuse records that do not all come from one clean commit."""
    records, skipped = _read(folders)
    if strict:
        refuse_mixed_provenance(records, ", ".join(map(str, folders)))
    if tasks:
        unknown = sorted(set(tasks) - {record.task.name for record in records})
        if unknown:
            present = ", ".join(sorted({record.task.name for record in records}))
            raise UserError(f"--tasks {','.join(unknown)}: no runs of that task in these folders (tasks here: {present})")
        records = [record for record in records if record.task.name in tasks]
    finished = [record for record in records if record.ok]
    if not finished:
        raise UserError(f"no finished runs in {', '.join(map(str, folders))}; nothing to compare")
    labels = RecordLabels(finished)
    _refuse_duplicates(finished, labels)
    models = list(dict.fromkeys(labels.model(record) for record in finished))  # in the folders' order
    if len(models) < 2:
        raise UserError(
            f"these folders hold runs of one model only ({models[0]}); compare needs runs of at least two models "
            "(e.g. `lofit-bench compare runs/model-a runs/model-b`)"
        )
    summary = summarize(finished, labels=labels)
    comparisons = [
        _compare_task(task, [row for row in summary if row.task == task], models, finished, labels)
        for task in sorted({row.task for row in summary})
    ]
    warnings = budget_differences(records, which="the runs compared")
    warnings += [line.text for line in provenance_lines(records) if line.warning]
    warnings += version_differences(records)
    for comparison in comparisons:
        if len(set(comparison.test_examples.values())) > 1:
            sizes = ", ".join(f"{model}: {count}" for model, count in comparison.test_examples.items())
            warnings.append(f"{comparison.task}: the models were scored on different numbers of test examples ({sizes})")
    all_labels = RecordLabels(records)  # a failed run is named among every run read
    return Comparison(
        folders=folders,
        models=models,
        tasks=comparisons,
        warnings=warnings,
        failed=[failure_line(record, all_labels) for record in records if not record.ok],
        skipped=skipped,
    )


def _read(folders: list[Path]) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
    records: dict[str, RunRecord] = {}
    skipped: list[tuple[Path, str]] = []
    for folder in folders:
        read = read_record_folder(folder)
        skipped += read.skipped
        for record in read.records:
            records.setdefault(record.key, record)  # the same run in two folders (a copy) counts once
    return list(records.values()), skipped


def _refuse_duplicates(finished: list[RunRecord], labels: RecordLabels) -> None:
    """Two different records of one (model, method, task, seed) would be averaged as seeds."""
    seen: dict[tuple[str, str, str, int], RunRecord] = {}
    for record in finished:
        where = (labels.model(record), labels.method(record), record.task.name, record.seed)
        if where in seen:
            raise UserError(
                f"two runs of {where[1]} on {where[2]} (seed {where[3]}, {where[0]}) with different keys "
                f"({seen[where].file_name}, {record.file_name}); compare folders that hold each run once, "
                "e.g. not a tuned and an untuned folder of the same model"
            )
        seen[where] = record


def _compare_task(task: str, rows: list, all_models: list[str], records: list[RunRecord], labels: RecordLabels) -> TaskComparison:
    models = [model for model in all_models if any(row.model == model for row in rows)]
    cells: dict[tuple[str, str], Cell] = {}
    for model in models:
        scores = {row.method: row for row in rows if row.model == model}
        for method, row in scores.items():
            higher = sum(1 for other in scores.values() if shown(other.primary) > shown(row.primary))
            tied = sum(1 for other in scores.values() if shown(other.primary) == shown(row.primary)) > 1
            cells[(method, model)] = Cell(score=row.primary, rank=1 + higher, tied=tied, seeds=len(row.seeds))
    methods = sorted({row.method for row in rows}, key=lambda method: (*_ranks(method, models, cells), method))
    primary = rows[0].primary_metric
    values = _per_example(task, primary, records, labels)
    agreements = [_agreement(pair, methods, cells, values) for pair in itertools.combinations(models, 2)]
    test_examples = {model: next(row.test_examples for row in rows if row.model == model) for model in models}
    return TaskComparison(task, primary, models, methods, cells, test_examples, agreements)


def shown(score: float) -> float:
    """A score as the tables print it (percent, one decimal): methods that print the same are
    tied, not ranked on a difference of 3e-6 no reader can see."""
    return round(100 * score, 1)


def _ranks(method: str, models: list[str], cells: dict[tuple[str, str], Cell]) -> list[float]:
    """The method's rank on each model in column order (rows follow the first model's ranking)."""
    return [cells[(method, model)].rank if (method, model) in cells else float("inf") for model in models]


def _per_example(task: str, metric: str, records: list[RunRecord], labels: RecordLabels) -> dict[tuple[str, str], dict]:
    """(method, model) -> the primary metric per test example, averaged over seeds."""
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        if record.task.name == task:
            groups[(labels.method(record), labels.model(record))].append(record)
    return {key: per_example_values(items, metric) for key, items in groups.items()}


def _agreement(
    models: tuple[str, str], methods: list[str], cells: dict[tuple[str, str], Cell], values: dict[tuple[str, str], dict]
) -> Agreement:
    from scipy.stats import kendalltau

    shared = [method for method in methods if all((method, model) in cells for model in models)]
    first = [shown(cells[(method, models[0])].score) for method in shared]
    second = [shown(cells[(method, models[1])].score) for method in shared]
    tau = None
    if len(shared) >= 2 and len(set(first)) > 1 and len(set(second)) > 1:
        tau = float(kendalltau(first, second).statistic)
    agreement = Agreement(models=models, methods=len(shared), kendall_tau_b=tau, concordant=0, discordant=0, tied=0)
    for a, b in itertools.combinations(range(len(shared)), 2):
        order = (first[a] - first[b]) * (second[a] - second[b])
        if order > 0:
            agreement.concordant += 1
        elif order == 0:
            agreement.tied += 1
        else:
            agreement.discordant += 1
            better, worse = (shared[a], shared[b]) if first[a] > first[b] else (shared[b], shared[a])
            p_values = tuple(
                paired_bootstrap_p_value(values.get((better, model), {}), values.get((worse, model), {})) for model in models
            )
            agreement.reversals.append(Reversal(better, worse, p_values))
    return agreement


# -- rendering ---------------------------------------------------------------------------------
def _cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "not run"
    return f"{100 * cell.score:.1f} ({cell.rank}{'=' if cell.tied else ''})"


def _p_text(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def render_markdown(comparison: Comparison) -> str:
    from tabulate import tabulate

    lines = ["# lofit-bench: method rankings across models", ""]
    lines.append(f"- folders: {', '.join(str(folder) for folder in comparison.folders)}")
    lines.append(f"- models: {', '.join(comparison.models)} (each cell: primary metric %, then the method's rank on that model; '=' marks a tie)")
    lines += [f"- **warning: {text}**" for text in comparison.warnings]
    lines += [f"- **warning: left out {path}: {problem}**" for path, problem in comparison.skipped]
    lines.append("")
    for task in comparison.tasks:
        sizes = ", ".join(f"{model} {count}" for model, count in task.test_examples.items())
        lines += [f"## {task.task} (primary metric: {task.primary_metric}; test examples: {sizes})", ""]
        table = [[method, *(_cell_text(task.cells.get((method, model))) for model in task.models)] for method in task.methods]
        lines += [tabulate(table, headers=["method", *task.models], tablefmt="github"), ""]
        for agreement in task.agreements:
            lines += _agreement_lines(agreement)
        lines.append("")
    if comparison.failed:
        lines += ["## Failed runs (not ranked)", ""] + [f"- {line}" for line in comparison.failed] + [""]
    lines += [
        "## How to read this",
        "",
        "- **rank**: competition ranking by the task's primary metric on one model (ties share the better rank); "
        "rows follow the first model's ranking, columns the order of the folders given.",
        "- **Kendall's tau-b**: agreement of two models' orderings over the methods both ran, from -1 (reversed) to 1 "
        "(identical), ties corrected; '-' when every method ties on one model.",
        f"- **reversal**: two methods ordered one way on one model and the other way on the other; each p is the two-sided "
        f"paired bootstrap p-value of their difference on that model's test examples (10,000 resamples). Significant "
        f"(p < {SIGNIFICANCE}) on both models: the ranking really changed; on neither: noise at this test-set size.",
        "",
    ]
    return "\n".join(lines)


def _agreement_lines(agreement: Agreement) -> list[str]:
    first, second = agreement.models
    if agreement.methods < 2:
        return [f"- {first} vs {second}: fewer than two methods ran on both; no ranking to compare"]
    tau = "-" if agreement.kendall_tau_b is None else f"{agreement.kendall_tau_b:.2f}"
    pairs = agreement.concordant + agreement.discordant + agreement.tied
    lines = [
        f"- {first} vs {second}: Kendall's tau-b {tau} over {agreement.methods} methods; of {pairs} method pairs "
        f"{agreement.concordant} keep their order, {agreement.discordant} reverse, {agreement.tied} tie on at least one model"
    ]
    for reversal in agreement.reversals:
        verdict = {2: "significant on both: a real reversal", 1: "significant on one model only", 0: "significant on neither: within noise"}
        lines.append(
            f"  - {reversal.first} > {reversal.second} on {first} (p {_p_text(reversal.p_values[0])}), "
            f"the other way on {second} (p {_p_text(reversal.p_values[1])}): {verdict[reversal.significant_on]}"
        )
    return lines


def render_json(comparison: Comparison) -> dict[str, Any]:
    return {
        "folders": [str(folder) for folder in comparison.folders],
        "models": comparison.models,
        "warnings": comparison.warnings,
        "failed": comparison.failed,
        "skipped": [{"file": str(path), "problem": problem} for path, problem in comparison.skipped],
        "tasks": [
            {
                "task": task.task,
                "primary_metric": task.primary_metric,
                "test_examples": task.test_examples,
                "rows": [
                    {"method": method, **{model: asdict(cell) for (name, model), cell in task.cells.items() if name == method}}
                    for method in task.methods
                ],
                "agreements": [asdict(agreement) for agreement in task.agreements],
            }
            for task in comparison.tasks
        ],
    }

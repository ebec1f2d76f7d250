"""How much the chosen head sets agree across seeds and across tasks (paper Appendix G).

Yin et al. 2024, Appendix G, compare LoFiT's head sets of two seeds of one task (about 0.9 on
their 7B-13B models) and of different tasks (below a third) by Jaccard similarity. Here the
Jaccard index |A ∩ B| / |A ∪ B| of every pair of selections a folder's runs recorded
(``folds.FOLD.fit.heads.chosen``) is averaged per pair of (method config, task): the diagonal
pairs different seeds of the same fold, an off-diagonal cell every pair of selections of the
two entries. (For two sets of K heads the paper's |A ∩ B| / K is 2J / (1 + J).)
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from pathlib import Path

from lofit_bench.engine.interventions import Head
from lofit_bench.records.record import RunRecord
from lofit_bench.report.labels import RecordLabels
from lofit_bench.report.sections import Section, Table

#: (seed, fold, chosen heads) of one selection.
Selection = tuple[int, str, frozenset[Head]]


def jaccard(first: frozenset[Head] | set[Head], second: frozenset[Head] | set[Head]) -> float:
    """|A ∩ B| / |A ∪ B| (1.0 for two empty sets)."""
    union = set(first) | set(second)
    return len(set(first) & set(second)) / len(union) if union else 1.0


def head_sets(records: list[RunRecord], labels: RecordLabels | None = None) -> dict[str, dict[str, list[Selection]]]:
    """model -> "METHOD-LABEL on TASK" -> every (seed, fold, chosen heads) the finished runs
    recorded (``labels``: those of the finished records, when the caller has them)."""
    found: dict[str, dict[str, list[Selection]]] = defaultdict(lambda: defaultdict(list))
    finished = [record for record in records if record.ok]
    labels = labels or RecordLabels(finished)
    for record in finished:
        for fold, values in record.folds.items():
            heads = values.fit.get("heads") if isinstance(values.fit, dict) else None
            chosen = heads.get("chosen") if isinstance(heads, dict) else None  # RED records a head count here
            if chosen:
                entry = f"{labels.method(record)} on {record.task.name}"
                found[labels.model(record)][entry].append((record.seed, fold, frozenset((int(layer), int(head)) for layer, head in chosen)))
    return {model: dict(entries) for model, entries in found.items()}


def mean_overlap(first: list[Selection], second: list[Selection] | None = None) -> float | None:
    """Mean Jaccard over pairs: of different seeds and the same fold within ``first`` (second
    None), else of every selection of ``first`` with every one of ``second``. None: no pair."""
    if second is None:
        pairs = [(a, b) for a, b in itertools.combinations(first, 2) if a[0] != b[0] and a[1] == b[1]]
    else:
        pairs = list(itertools.product(first, second))
    if not pairs:
        return None
    return statistics.fmean(jaccard(a[2], b[2]) for a, b in pairs)


def overlap_matrix(entries: dict[str, list[Selection]]) -> tuple[list[str], list[list[float | None]]]:
    """Entries (sorted) and their mean-Jaccard matrix (diagonal: across seeds)."""
    names = sorted(entries)
    return names, [
        [mean_overlap(entries[row]) if row == column else mean_overlap(entries[row], entries[column]) for column in names]
        for row in names
    ]


def overlap_tables(records: list[RunRecord], labels: RecordLabels | None = None) -> list[Table]:
    tables = []
    for model, entries in sorted(head_sets(records, labels).items()):
        names, matrix = overlap_matrix(entries)
        if len(names) < 2 and all(value is None for row in matrix for value in row):
            continue
        rows = [[name, *("-" if value is None else f"{value:.2f}" for value in values)] for name, values in zip(names, matrix, strict=True)]
        tables.append(Table(f"{model}: mean Jaccard similarity of chosen head sets (diagonal: across seeds, same fold)",
                            ["heads of", *names], rows))
    return tables


def overlap_sections(runs_dir: Path, records: list[RunRecord], labels: RecordLabels | None = None) -> list[Section]:
    tables = overlap_tables(records, labels)
    if not tables:
        return []
    return [Section("Head overlap (Jaccard, paper Appendix G)", tables=tables,
                    notes=["Jaccard |A ∩ B| / |A ∪ B| of the chosen heads; the paper reports ~0.9 across seeds of one task "
                           "and under a third across tasks (Yin et al. 2024, Appendix G)."])]

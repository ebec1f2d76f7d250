"""The head selections of a run folder, record by record (`lofit-bench heads RUN_DIR`, the
report's heatmaps): where each finished run saved its ``heads.json``, labelled like its report row."""

from __future__ import annotations

from pathlib import Path

from lofit_bench.engine.heads import HEADS_FILE
from lofit_bench.errors import UserError
from lofit_bench.records.store import load_records
from lofit_bench.report.labels import RecordLabels


def selections_in(path: Path) -> list[tuple[str, Path]]:
    """(label, heads.json) for every saved selection in a run folder, record by record."""
    path = path.expanduser()
    if path.is_file():
        return [(path.parent.name, path)]
    found: list[tuple[str, Path]] = []
    records = load_records(path)
    finished = [record for record in records if record.ok]
    labels = RecordLabels(finished)
    for record in finished:
        if not record.artifacts:
            continue
        for fold in record.folds:
            heads_file = path / record.artifacts / fold / HEADS_FILE
            if heads_file.exists():
                label = f"{labels.method(record)} on {record.task.name} ({record.model_name}, seed {record.seed}, fold {fold})"
                found.append((label, heads_file))
    if not found:
        raise UserError(f"no finished run under {path} saved a head selection ({HEADS_FILE}); run a method that selects heads (e.g. lofit) first")
    return found

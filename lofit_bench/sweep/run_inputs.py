"""Runs that read another run's output: ``head_source=run:TASK`` (paper Figure 2's transfer).

A LoFiT config whose ``head_source`` is ``run:TASK`` tunes its biases on the heads that this
sweep's LoFiT run on TASK chose: the run with the same method, seed, model, budget and other
options, whose ``head_source`` is ``lofit``. The sweep checks that run is planned, runs it
first, and hands its ``heads.json`` to the dependent run (``RunSpec.inputs``); the key of the
dependent run hashes ``run:TASK`` (which heads it reads follows from the sweep's own runs).
"""

from __future__ import annotations

import dataclasses

from lofit_bench.engine.heads import HEADS_FILE
from lofit_bench.errors import UserError
from lofit_bench.records.run_folder import RunFolder
from lofit_bench.records.store import read_record
from lofit_bench.sweep.spec import RunSpec

PREFIX = "run:"


def source_task(spec: RunSpec) -> str | None:
    """The task whose run ``spec`` reads its heads from, or None."""
    source = spec.method_options.get("head_source")
    return source[len(PREFIX):] if isinstance(source, str) and source.startswith(PREFIX) else None


def source_spec(spec: RunSpec, specs: list[RunSpec]) -> RunSpec | None:
    """The run of ``specs`` whose heads ``spec`` reads."""
    task = source_task(spec)
    options = {key: value for key, value in spec.method_options.items() if key != "head_source"}
    for other in specs:
        other_options = {key: value for key, value in other.method_options.items() if key != "head_source"}
        if (other.method, other.task, other.seed, other.model, other.budget) == (spec.method, task, spec.seed, spec.model, spec.budget) \
                and other.method_options.get("head_source", "lofit") == "lofit" and other_options == options:
            return other
    return None


def check_sources(specs: list[RunSpec]) -> None:
    """Every ``run:TASK`` has its source run in the sweep (else one clear line, before any run)."""
    for spec in specs:
        task = source_task(spec)
        if task is not None and source_spec(spec, specs) is None:
            raise UserError(
                f"{spec.method}.head_source=run:{task} reads the heads of this sweep's {spec.method} run on {task} "
                f"(head_source lofit, same seed, budget and other options), which the sweep does not plan; add "
                f"{task} to --tasks and lofit to the head_source grid"
            )


def resolve_inputs(spec: RunSpec, specs: list[RunSpec], folder: RunFolder) -> RunSpec:
    """``spec`` with the heads.json of its source run (when it finished) in ``inputs``."""
    source = source_spec(spec, specs)
    if source is None:
        return spec
    record, _ = read_record(source.record_path(folder))
    if record is None or not record.ok or not record.artifacts:
        return spec  # the run then fails, saying that no source run finished
    folds = [fold for fold in record.folds if (folder.root / record.artifacts / fold / HEADS_FILE).exists()]
    if not folds:
        return spec
    from lofit_bench.plugins import get_host

    target_folds = get_host().tasks.get(spec.task).folds
    fold = next((fold for fold in folds if fold in target_folds), folds[0])
    path = folder.root / record.artifacts / fold / HEADS_FILE
    return dataclasses.replace(spec, inputs={**spec.inputs, f"heads:{source_task(spec)}": str(path.resolve())})

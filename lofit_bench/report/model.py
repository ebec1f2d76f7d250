"""The report's model: built once from run records, then rendered by :mod:`lofit_bench.report.build`
(markdown, CSV, JSON) and :mod:`lofit_bench.report.html` (HTML).

Records are aggregated per (model, task, method) over seeds. Records of different models
are never averaged together, p-values only pair runs of one model on one task against the
reference method the user chose (``--reference``; the core has no favourite), and every
budget is shown as the runs used it (overrides of a named preset included).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lofit_bench.budget import BUDGETS
from lofit_bench.errors import UserError, did_you_mean
from lofit_bench.records.record import RunRecord, Timings
from lofit_bench.records.store import read_record_folder
from lofit_bench.report.labels import (  # noqa: F401 - re-exported: the report's label and number formats
    RecordLabels,
    budget_axes,
    format_count,
    format_interval,
    format_p,
    format_parameter_share,
    format_percent,
    run_label,
)
from lofit_bench.report.stats import (
    bootstrap_interval,
    holm_adjusted,
    paired_p_value,
    per_example_values,
)

MEMORY_LABELS = {
    "cpu_peak_rss_delta": "peak RSS over model (CPU, MiB)",
    "cuda_peak_allocated": "peak GPU allocated (MiB)",
}

COLUMN_HELP = {
    "method": "method name (its config is in the record); its options are appended when the folder holds "
    "several configs of one method, so configs are never averaged as if they were seeds",
    "seeds": "number of seeds that finished",
    "metric (%)": "the task's metrics: mean over seeds (± sample std with several seeds), each first averaged over the task's folds",
    "PRIMARY 95 % CI": "95 % percentile bootstrap interval of the primary metric's mean (10,000 resamples of the test "
    "examples; with several seeds each resample also draws the seeds, so the interval covers seed variation too)",
    "p vs REFERENCE (Holm)": "two-sided p-value of the primary metric against the reference method's on the same test "
    "examples of the same model, Holm-adjusted over the table's methods (each is tested against one reference); the "
    "test is named: 'McNemar' (exact binomial test on the discordant examples, when both are right/wrong per example "
    "with one seed) or 'bootstrap' (paired, (k+1)/(B+1) with B = 10,000 resamples of the examples, values averaged "
    "over seeds); '-' for the reference itself, when it did not run, or when no reference was chosen "
    "(`lofit-bench report --reference METHOD`)",
    "params": "trainable parameters (exact numel of trained tensors); '+N stored' for values a method computes "
    "without training and adds to the model (ITI's shift directions)",
    "% params": "trainable parameters as a percentage of the base model's",
    "train s": "wall time of prepare + training/fitting, summed over folds (mean over seeds)",
    "eval s": "wall time of evaluation on the test split, summed over folds (mean over seeds)",
    "peak memory": "peak memory during fit/evaluation, labelled by kind; CPU: process RSS above the RSS with the "
    "model loaded; GPU: torch peak allocated, reset per phase",
    "tuning": "how the hyper-parameters were chosen: 'N trials (P pruned, F failed)' on the dev split by the harness's "
    "tuner (per fold, summed over folds, mean over seeds), 'off' (budget tune=false: the paper's / method's defaults), "
    "'nothing to tune' (no declared field left free), 'untuned (old record)' for records written before tuning existed; "
    "'no signal on dev' when every trial tied on every dev metric (the first trial's values were kept by the tie rule, not chosen); "
    "with --tune-per fold the seeds that reused the first seed's values are counted apart ('once per fold, N other "
    "seed(s) reuse the values')",
    "shared work": "(timing table) frozen-model work the run reused from another run of the sweep, with the seconds "
    "its computation took there, and what it computed for the others (OUT/shared/: activations, iti-probes, "
    "lofit-stage1, tuned-values)",
    "chosen values": "the tuned values the test split was evaluated with (per fold and seed when they differ); "
    "every trial is in results.json ('trials') and in the record (folds.FOLD.tuning); 'at range edge' names a "
    "value within a tenth of an end of its search range (on the range's scale: decades for log ranges), where "
    "the best value may lie outside the range",
}


@dataclass
class SummaryRow:
    """One (model, task, method) cell group, aggregated over seeds."""

    model: str
    task: str
    method: str
    seeds: list[int]
    metrics: dict[str, tuple[float, float | None]]
    primary_metric: str
    reference: str | None
    #: Against the reference, Holm-adjusted over the table's methods (``p_raw``: unadjusted).
    p_value: float | None
    trainable_parameters: int | None
    percent_parameters: float | None
    peak_memory_mib: float | None
    memory_kind: str | None
    train_seconds: float
    eval_seconds: float
    budget: str
    test_examples: int
    tuning: str = "-"
    chosen: str = "-"
    extra: dict[str, Any] = field(default_factory=dict)
    #: The test behind ``p_value``: "McNemar" (exact, right/wrong per example) or "bootstrap".
    p_test: str | None = None
    p_raw: float | None = None
    #: 95 % bootstrap interval of the primary metric (over test examples, and seeds when several).
    interval: tuple[float, float] | None = None
    #: Values stored beside the trained ones (ITI's directions), exact numel.
    stored_values: int | None = None
    #: Chosen values within a tenth of their search range of its edge: "NAME (upper edge)".
    range_edges: list[str] = field(default_factory=list)

    @property
    def primary(self) -> float:
        return self.metrics[self.primary_metric][0]


@dataclass
class HeaderLine:
    text: str
    warning: bool = False


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def resolve_reference(records: list[RunRecord], reference: str | None, labels: RecordLabels | None = None) -> str | None:
    """The method the p-values compare against: the one asked for (``--reference``), which
    must be in the folder; none when none is asked for (no method is special to the core).
    ``labels``: those of ``records``, when the caller has them already."""
    if reference is None or not records:
        return reference
    names = sorted({record.method.name for record in records})
    labels = labels or RecordLabels(records)
    method_labels = sorted({labels.method(record) for record in records})
    if reference not in names and reference not in method_labels:
        raise UserError(
            f"--reference {reference}: no finished run of that method in this folder.{did_you_mean(reference, names)} "
            f"Methods here: {', '.join(names) or '(none)'}"
        )
    return reference


def _reference_label(reference: str, labels: list[str], method_names: dict[str, str]) -> str | None:
    """Among one (model, task)'s method labels, the one that stands for ``reference``: the label
    itself, else the reference method's only config, else its config without options, else the
    first of its configs (the table's header names which)."""
    if reference in labels:
        return reference
    candidates = sorted(label for label in labels if method_names[label] == reference)
    if not candidates:
        return None
    return candidates[0]


def summarize(records: list[RunRecord], reference: str | None = None, labels: RecordLabels | None = None) -> list[SummaryRow]:
    """Aggregate finished records per (model, task, method); p-values against the reference's
    examples on the same model and task. ``labels``: those of the finished records, when the
    caller has them already."""
    finished = [record for record in records if record.ok]
    labels = labels or RecordLabels(finished)
    reference = resolve_reference(finished, reference, labels)
    groups: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    method_names: dict[str, str] = {}
    for record in finished:
        label = labels.method(record)
        method_names[label] = record.method.name
        groups[(labels.model(record), record.task.name, label)].append(record)
    summary = []
    for (model, task, method), items in sorted(groups.items()):
        first = items[0]
        primary = first.task.primary_metric
        table_labels = [label for (other_model, other_task, label) in groups if (other_model, other_task) == (model, task)]
        reference_label = _reference_label(reference, table_labels, method_names) if reference else None
        p_value, p_test = None, None
        if reference_label is not None and method != reference_label:
            p_value, p_test = paired_p_value(
                per_example_values(items, primary), per_example_values(groups[(model, task, reference_label)], primary)
            )
        params = first.trainable_parameters
        memory = [record.memory.peak_mib for record in items if record.memory]
        summary.append(
            SummaryRow(
                model=model,
                task=task,
                method=method,
                seeds=sorted(record.seed for record in items),
                metrics={name: _mean_std([record.metrics[name] for record in items]) for name in first.task.metrics},
                primary_metric=primary,
                reference=reference_label,
                p_value=p_value,
                p_raw=p_value,
                p_test=p_test,
                interval=bootstrap_interval([per_example_values([record], primary) for record in items]),
                trainable_parameters=params.count if params else None,
                percent_parameters=params.percent_of_base if params else None,
                stored_values=params.stored_values if params else None,
                peak_memory_mib=max(memory) if memory else None,
                memory_kind=first.memory.kind if first.memory else None,
                train_seconds=statistics.fmean(record.timings.fit if record.timings else 0.0 for record in items),
                eval_seconds=statistics.fmean(record.timings.evaluate if record.timings else 0.0 for record in items),
                budget=budget_name(first.budget),
                test_examples=sum(fold.eval_size for fold in first.folds.values()),
                tuning=tuning_label(items),
                chosen=chosen_label(items),
                range_edges=range_edge_labels(items),
            )
        )
    _adjust_for_several_methods(summary)
    return summary


def _adjust_for_several_methods(summary: list[SummaryRow]) -> None:
    """Holm's adjustment of each table's p-values: every method of one (model, task) is tested
    against the same reference, so the table's smallest p-value alone would over-claim."""
    for _, _, rows in table_groups(summary):
        adjusted = holm_adjusted({row.method: row.p_raw for row in rows})
        for row in rows:
            row.p_value = adjusted[row.method]


def table_groups(summary: list[SummaryRow]) -> list[tuple[str, str, list[SummaryRow]]]:
    """(model, task, rows) per table, in a stable order."""
    keys = sorted({(row.model, row.task) for row in summary})
    return [(model, task, [row for row in summary if (row.model, row.task) == (model, task)]) for model, task in keys]


# -- the report ------------------------------------------------------------------------------------
def precisions(records: list[RunRecord]) -> list[str]:
    """How the runs' models computed (``--precision`` and the weights' dtype), one entry per kind;
    records from before ``--precision`` computed in their weights' dtype."""
    kinds = set()
    for record in records:
        if record.model is not None:
            if (record.model.precision or "fp32") == "bf16-mixed":
                kinds.add(f"bf16-mixed ({record.model.dtype} weights, bf16 autocast)")
            else:
                kinds.add(f"{record.model.dtype} weights and matmuls (no autocast)")
    return sorted(kinds)


def header_lines(records: list[RunRecord], finished: list[RunRecord], reference: str | None,
                 labels: RecordLabels | None = None) -> list[HeaderLine]:
    """What every format states above the tables: models, budgets as used, the reference,
    warnings. ``labels``: those of ``records``, when the caller has them already."""
    labels = labels or RecordLabels(records)
    models = sorted({labels.model(record) for record in finished})
    budgets = sorted({budget_label(record.budget) for record in records})
    lines = [
        HeaderLine(f"model{'s' if len(models) > 1 else ''}: {', '.join(models) or '-'}"
                   + (" (one table per model; runs of different models are never averaged or paired)" if len(models) > 1 else "")),
        HeaderLine(f"budget: {'; '.join(budgets)}"),
        HeaderLine(f"precision: {'; '.join(precisions(finished)) or '-'}"),
        HeaderLine(f"p-values against: {reference}" if reference else "p-values: none (no reference method chosen: `lofit-bench report --reference METHOD`)"),
    ]
    options = sorted({
        f"{record.method.name} " + ", ".join(f"{key}={json.dumps(value)}" for key, value in sorted(record.method.options.items()))
        for record in records
        if record.method.options
    })
    if options:
        lines.append(HeaderLine(f"method options set for these runs (the rest are the methods' defaults): {'; '.join(options)}"))
    tuning = tuning_scheme(finished)
    if tuning:
        lines.append(HeaderLine(tuning))
    lines += provenance_lines(records)
    lines += [HeaderLine(text, warning=True) for text in budget_differences(records)]
    lines += [HeaderLine(text, warning=True) for text in version_differences(records)]
    edges = sorted({
        f"{record.method.name} {field} on {record.task.name}"
        for record in finished
        for field in range_edge_labels([record])
    })
    if edges:
        lines.append(HeaderLine(
            "tuned values within a tenth of an edge of their search range (the best value may lie outside it, "
            f"so these methods were tuned less well than the others): {'; '.join(edges)}", warning=True))
    return lines


def tuning_scheme(finished: list[RunRecord]) -> str | None:
    """Which ``--tune-per`` the tuned runs used, for a report with several seeds of a method."""
    tunings = [tuning for record in finished for tuning in fold_tunings(record).values() if tuning and tuning.get("mode") == "on" and (tuning.get("trials_run") or tuning.get("reused"))]
    seeds = {record.seed for record in finished}
    if not tunings or len(seeds) < 2:
        return None
    per_fold = [tuning for tuning in tunings if tuning.get("tune_per") == "fold"]
    if not per_fold:
        return "tuning: every seed tuned its own values (--tune-per seed)"
    first = sorted({str(tuning.get("tuned_on_seed")) for tuning in per_fold})
    text = (f"tuning: once per (method, task, fold) on seed {', '.join(first)}; the other seeds train once with "
            "those values (--tune-per fold)")
    return text if len(per_fold) == len(tunings) else text + "; some runs tuned every seed (--tune-per seed): a mix"


def task_table(rows: list[SummaryRow]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of one (model, task) table (shared by the markdown and HTML reports)."""
    metric_names = list(rows[0].metrics)
    kinds = sorted({row.memory_kind for row in rows if row.memory_kind})
    memory_header = " / ".join(MEMORY_LABELS.get(kind, kind) for kind in kinds) or "peak memory"
    reference = next((row.reference for row in rows if row.reference), None)
    primary = rows[0].primary_metric
    headers = [
        "method", "seeds", *[f"{name} (%)" for name in metric_names], f"{primary} 95 % CI", f"p vs {reference or '-'} (Holm)",
        "params", "% params", "train s", "eval s", memory_header, "tuning", "chosen values",
    ]
    table = [
        [
            row.method,
            str(len(row.seeds)),
            *[format_percent(row.metrics[name]) for name in metric_names],
            format_interval(row.interval),
            format_p(row.p_value) + (f" ({row.p_test})" if row.p_test and row.p_value is not None else ""),
            format_count(row.trainable_parameters) + (f" (+{format_count(row.stored_values)} stored)" if row.stored_values else ""),
            format_parameter_share(row.percent_parameters),
            f"{row.train_seconds:.1f}",
            f"{row.eval_seconds:.1f}",
            "-" if row.peak_memory_mib is None else f"{row.peak_memory_mib:.0f}",
            row.tuning,
            row.chosen + (f"; at range edge: {', '.join(row.range_edges)}" if row.range_edges else ""),
        ]
        for row in rows
    ]
    return headers, table


def timing_table(records: list[RunRecord], labels: RecordLabels | None = None) -> tuple[list[str], list[list[str]]]:
    """One row per finished run: loading, each part of the fit as the method timed it,
    evaluation. ``labels``: those of the finished records, when the caller has them already."""
    headers = ["model", "method", "task", "seed", "load s", "fit s", "fit parts (s)", "shared work", "eval s", "total s"]
    finished = [record for record in records if record.ok]
    labels = labels or RecordLabels(finished)
    rows = []
    for record in finished:
        timings = record.timings or Timings()
        rows.append([
            labels.model(record), labels.method(record), record.task.name, str(record.seed),
            f"{timings.load_model:.1f}", f"{timings.fit:.1f}",
            ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.fit_phases.items()) or "-",
            shared_work_label(record), f"{timings.evaluate:.1f}", f"{timings.total_s:.1f}",
        ])
    return headers, rows


def shared_work_label(record: RunRecord) -> str:
    """What the run's folds reused from the sweep's shared work and what they computed for the
    others (:mod:`lofit_bench.shared_work`), e.g. ``reused activations x2 (41 s saved); computed iti-probes``."""
    reused: Counter[str] = Counter()
    computed: Counter[str] = Counter()
    saved = 0.0
    for fold in record.folds.values():
        for use in fold.shared_work:
            (reused if use.reused else computed)[use.kind] += 1
            saved += (use.compute_s or 0.0) if use.reused else 0.0

    def listing(counts: Counter[str]) -> str:
        return ", ".join(f"{kind} x{count}" if count > 1 else kind for kind, count in counts.items())

    parts = ([f"reused {listing(reused)} ({saved:.0f} s saved)"] if reused else []) + (
        [f"computed {listing(computed)}"] if computed else [])
    return "; ".join(parts) or "-"


def failure_line(record: RunRecord, labels: RecordLabels) -> str:
    """One failed run as a line; ``labels``: those of the records the run is listed among."""
    error = record.error
    what = f"{error.type}: {error.message}" if error else f"no error recorded (status {record.status})"
    return f"{record.method.name} on {record.task.name} (seed {record.seed}, {labels.model(record)}): {what}"


# -- budgets and versions as the runs used them ----------------------------------------------------
def budget_overrides(budget: dict[str, Any]) -> dict[str, Any]:
    """The fields on which a recorded budget differs from the built-in preset of its name."""
    preset = BUDGETS.get(budget.get("name", ""))
    if preset is None:
        return {}
    defaults = preset.to_dict()
    return {name: value for name, value in budget.items() if name != "name" and name in defaults and defaults[name] != value}


def budget_name(budget: dict[str, Any]) -> str:
    """The preset's name with its overrides, e.g. ``smoke (max_length=1024)``."""
    overrides = budget_overrides(budget)
    if not overrides:
        return budget["name"]
    return f"{budget['name']} ({', '.join(f'{name}={json.dumps(value)}' for name, value in sorted(overrides.items()))})"


def _count(number: Any, noun: str) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def budget_label(budget: dict[str, Any]) -> str:
    """The budget as a line of the report header, overrides included."""
    parts = [_count(budget["epochs"], "epoch"), f"batch {budget['batch_size']}"]
    for name in ("train_examples", "dev_examples", "eval_examples"):
        parts.append(f"{name.split('_')[0]} {budget.get(name) or 'all'}")
    parts += [f"max_length {budget.get('max_length')}", f"{_count(budget.get('trials'), 'trial')} per fold"]
    parts.append({True: "tuned on dev", False: "untuned (tune off)"}.get(budget.get("tune"), "untuned (recorded before tuning)"))
    overrides = budget_overrides(budget)
    changed = f" (overridden: {', '.join(sorted(overrides))})" if overrides else ""
    return f"{budget['name']}{changed}: {', '.join(parts)}"


def distinct_budgets(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Every distinct budget of the folder, field by field (for results.json)."""
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        seen.setdefault(json.dumps(record.budget, sort_keys=True), record.budget)
    return list(seen.values())


def _differences(records: list[RunRecord], fields: dict[str, Any]) -> list[tuple[str, dict[str, list[str]]]]:
    """(field, value -> runs) for every field on which the records disagree; ``fields`` maps a
    field's name to a function reading it from a record."""
    found = []
    for name, read in fields.items():
        by_value: dict[str, list[str]] = defaultdict(list)
        for record in records:
            by_value[json.dumps(read(record))].append(run_label(record))
        if len(by_value) > 1:
            found.append((name, by_value))
    return found


def _describe_runs(runs: list[str]) -> str:
    runs = sorted(runs)
    return ", ".join(runs) if len(runs) <= 4 else f"{len(runs)} runs ({', '.join(runs[:2])}, ...)"


def budget_differences(records: list[RunRecord], which: str = "runs in this folder") -> list[str]:
    """One line per budget field on which ``records`` (the folder's runs) disagree, naming the runs."""
    names = sorted({name for record in records for name in record.budget})
    # A field every run declares as an axis differs on purpose (plotted, not flagged).
    declared = set.intersection(*(set(budget_axes(record)) for record in records)) if records else set()
    fields = {name: (lambda record, name=name: record.budget.get(name)) for name in names if name not in declared}
    return [
        f"{which} used different budgets: {name} = "
        + "; ".join(f"{value} for {_describe_runs(runs)}" for value, runs in sorted(by_value.items()))
        + "; compare with care"
        for name, by_value in _differences(records, fields)
    ]


def commit_runs(records: list[RunRecord]) -> dict[str, int]:
    """lofit-bench's code state (the short commit, ``-dirty`` when the code differed from it;
    ``release X`` for an installed package outside a git checkout; "unknown" when nothing was
    recorded) -> how many of ``records`` it ran, most runs first."""
    counts = Counter(_code_state(record) for record in records)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _code_state(record: RunRecord) -> str:
    environment = record.environment
    if environment is None:
        return "unknown"
    if environment.git_commit:
        return _short_commit(environment.git_commit)
    version = environment.versions.get("lofit-bench")
    return f"release {version}" if version else "unknown"


def provenance_lines(records: list[RunRecord]) -> list[HeaderLine]:
    """The code the runs come from: every commit with its run count (none hidden), a warning
    when there are several or any ran uncommitted code."""
    counts = commit_runs(records)
    listing = ", ".join(
        f"{commit} ({count} run{'s' if count != 1 else ''}{', uncommitted changes' if commit.endswith('-dirty') else ''})"
        for commit, count in counts.items()
    )
    if len(counts) == 1 and not any(commit.endswith("-dirty") or commit == "unknown" for commit in counts):
        return [HeaderLine(f"code: lofit-bench {'' if listing.startswith('release ') else 'commit '}{listing}")]
    return [HeaderLine(f"code: the runs come from {len(counts)} code state{'s' if len(counts) != 1 else ''}: {listing}; "
                       "rerun them on one clean commit to compare (`lofit-bench report --strict` refuses such a folder)", warning=True)]


def provenance_problems(records: list[RunRecord]) -> list[str]:
    """Why ``records`` do not come from one clean commit (``report --strict``); empty when they do."""
    counts = commit_runs(records)
    problems = [f"{count} run(s) of uncommitted code ({commit})" for commit, count in counts.items() if commit.endswith("-dirty")]
    problems += [f"{count} run(s) with no commit recorded" for commit, count in counts.items() if commit == "unknown"]
    if len(counts) > 1:
        problems.append(f"{len(counts)} code states ({', '.join(counts)})")
    return problems


def refuse_mixed_provenance(records: list[RunRecord], where: str) -> None:
    """``--strict`` (report and compare): one line naming what keeps ``records`` (read from
    ``where``) from being one clean commit's runs."""
    problems = provenance_problems(records)
    if problems:
        raise UserError(f"--strict: the runs in {where} do not all come from one clean commit: {'; '.join(problems)}. "
                        "Rerun them from a clean checkout of one commit, or leave out --strict")


def version_differences(records: list[RunRecord]) -> list[str]:
    """One line per library version on which the folder's runs disagree, among the runs that
    imported the library (an unrelated install never warns); the commit is :func:`provenance_lines`'."""
    with_environment = [record for record in records if record.environment]

    def used(record: RunRecord, package: str) -> bool:
        libraries = record.environment.used_libraries
        return libraries is None or package in libraries

    packages = sorted({name for record in with_environment for name in record.environment.versions})
    lines = []
    for package in packages:
        users = [record for record in with_environment if used(record, package)]
        for name, by_value in _differences(users, {package: lambda record, package=package: record.environment.versions.get(package)}):
            values = sorted(by_value.items(), key=lambda item: (-len(item[1]), item[0]))
            shown = "; ".join(f"{value} for {_describe_runs(runs)}" for value, runs in values)
            lines.append(f"runs in this folder come from different versions: {name} = {shown}; rerun them on one version to compare")
    return lines


def _short_commit(commit: str | None) -> str | None:
    if not commit:
        return commit
    dirty = commit.endswith("-dirty")
    return commit.removesuffix("-dirty")[:12] + ("-dirty" if dirty else "")


# -- tuning ----------------------------------------------------------------------------------------
def fold_tunings(record: RunRecord) -> dict[str, dict[str, Any]]:
    """Fold -> the fold's tuning record (``{}`` for a record written before tuning existed)."""
    return {fold: values.tuning or {} for fold, values in record.folds.items()}


def tuning_label(records: list[RunRecord]) -> str:
    """How one row's values were chosen (see COLUMN_HELP["tuning"])."""
    tunings = [tuning for record in records for tuning in fold_tunings(record).values()]
    if not tunings or not all(tunings):
        return "untuned (old record)"
    modes = {tuning.get("mode") for tuning in tunings}
    if modes == {"off"}:
        return "off"
    if modes != {"on"}:
        return "mixed: " + ", ".join(sorted(str(mode) for mode in modes))
    reused = [tuning for tuning in tunings if tuning.get("reused")]
    if all(not tuning.get("trials_run") for tuning in tunings) and not reused:
        return "nothing to tune"
    tuned_records = [record for record in records if not any(tuning.get("reused") for tuning in fold_tunings(record).values())]
    tuned = [tuning for tuning in tunings if not tuning.get("reused")]
    if not tuned_records:  # only the seeds that reused another seed's values are here
        seeds = sorted({tuning.get("tuned_on_seed") for tuning in reused})
        return f"values tuned on seed {', '.join(map(str, seeds))} (--tune-per fold)"
    run, pruned, failed = (  # summed over folds, mean over the seeds that tuned
        sum(tuning.get(key) or 0 for tuning in tuned) / len(tuned_records) for key in ("trials_run", "trials_pruned", "trials_failed")
    )
    extras = [f"{pruned:g} pruned"] + ([f"{failed:g} failed"] if failed else [])
    extras += ["no signal on dev: all tied, first kept"] if any(tuning.get("signal") == "no signal on dev" for tuning in tunings) else []
    label = f"{run:g} trial{'' if run == 1 else 's'} ({', '.join(extras)})"
    if reused:
        label += f"; once per fold, {len(records) - len(tuned_records)} other seed(s) reuse the values (--tune-per fold)"
    return label


def chosen_label(records: list[RunRecord]) -> str:
    """The tuned values of one row, once when every fold and seed chose the same."""
    chosen = []
    for record in records:
        for fold, tuning in fold_tunings(record).items():
            if tuning.get("chosen"):
                values = ", ".join(f"{name}={_short_value(value)}" for name, value in sorted(tuning["chosen"].items()))
                where = f"{fold}, " if len(record.folds) > 1 else ""
                chosen.append((f"{where}seed {record.seed}", values))
    distinct = sorted({values for _, values in chosen})
    if not distinct:
        return "-"
    if len(distinct) == 1:
        return distinct[0]
    return "; ".join(f"{label}: {values}" for label, values in chosen)


def range_edge_labels(records: list[RunRecord]) -> list[str]:
    """The tuned fields of one row whose chosen value sat at an edge of its search range in any
    fold or seed, e.g. ``learning_rate (upper edge)`` (the record's ``tuning.range_edges``)."""
    edges = {
        (name, edge)
        for record in records
        for tuning in fold_tunings(record).values()
        for name, edge in (tuning.get("range_edges") or {}).items()
    }
    return [f"{name} ({edge} edge)" for name, edge in sorted(edges)]


def _short_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else json.dumps(value)


def trial_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    """Every tuning trial of the folder, one entry per (run, fold), for results.json."""
    rows = []
    for record in records:
        for fold, tuning in fold_tunings(record).items():
            if tuning.get("trials"):
                rows.append({
                    "record": record.file_name, "method": record.method.name, "task": record.task.name,
                    "seed": record.seed, "fold": fold, "metric": tuning.get("metric"), "chosen_trial": tuning.get("chosen_trial"),
                    "chosen": tuning.get("chosen"), "sources": tuning.get("sources"), "trials": tuning["trials"],
                })
    return rows


# -- CSV -------------------------------------------------------------------------------------------
def csv_row(record: RunRecord, labels: RecordLabels) -> dict[str, Any]:
    """One record as a flat row (results.csv; results.json "runs"); ``labels``: those of the
    records it is listed among."""
    params = record.trainable_parameters
    memory = record.memory
    timings = record.timings
    throughput = record.throughput
    model = record.model
    row: dict[str, Any] = {
        "method": record.method.name,
        "method_label": labels.method(record),
        "task": record.task.name,
        "seed": record.seed,
        "status": record.status,
        "model": labels.model(record),
        "model_fingerprint": model.fingerprint if model else None,
        "lofit_bench_commit": record.environment.git_commit if record.environment else None,
        "dtype": model.dtype if model else None,
        "device": model.device if model else None,
        "budget": budget_name(record.budget),
        "trainable_parameters": params.count if params else None,
        "percent_parameters": params.percent_of_base if params else None,
        "stored_values": params.stored_values if params else None,
        "memory_kind": memory.kind if memory else None,
        "peak_memory_mib": memory.peak_mib if memory else None,
        "train_s": timings.fit if timings else None,
        "eval_s": timings.evaluate if timings else None,
        "total_s": timings.total_s if timings else None,
        "train_tokens_per_s": throughput.train_tokens_per_s if throughput else None,
        "eval_tokens_per_s": throughput.eval_tokens_per_s if throughput else None,
        "tuning": tuning_label([record]) if record.ok else None,
        "chosen_values": chosen_label([record]) if record.ok else None,
        "error": record.error.message if record.error else None,
        "record": record.file_name,
    }
    for name, value in (record.metrics or {}).items():
        row[f"metric:{name}"] = value
    return row


@dataclass
class ReportModel:
    """Everything a report says, in every format: built by :func:`build_report_model`."""

    title: str
    records: list[RunRecord]
    finished: list[RunRecord]
    failed: list[RunRecord]
    summary: list[SummaryRow]
    header: list[HeaderLine]
    reference: str | None
    #: One row per record (results.csv, results.json "runs").
    rows: list[dict[str, Any]]
    timing_headers: list[str]
    timing_rows: list[list[str]]
    trials: list[dict[str, Any]]
    #: The method and model labels of every record (CSV rows, failed runs), computed once.
    labels: RecordLabels
    #: The labels of the finished records (tables, plots), computed once.
    finished_labels: RecordLabels
    #: Record files left out, with why (unreadable, invalid, another schema).
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    #: The run folder the records came from (artefacts such as head selections are read there).
    runs_dir: Path | None = None
    #: Paper-shaped tables, axis plots, head overlap (:mod:`lofit_bench.report.sections`).
    sections: list[Any] = field(default_factory=list)

    def tables(self) -> list[tuple[str, str, list[SummaryRow]]]:
        return table_groups(self.summary)


def build_sections(runs_dir: Path, records: list[Any], finished_labels: RecordLabels | None = None) -> list[Any]:
    """Every extra section the folder's records (and its study, when it was run as one) call for:
    the paper-shaped tables, the declared axes' plots and the head overlap. ``finished_labels``:
    those of the finished records, when the caller has them already."""
    from lofit_bench.report.axes import axis_sections
    from lofit_bench.report.head_overlap import overlap_sections
    from lofit_bench.report.paper_tables import paper_table_sections

    finished = [record for record in records if record.ok]
    if not finished:
        return []
    labels = finished_labels or RecordLabels(finished)
    return [
        *paper_table_sections(runs_dir, finished, labels),
        *axis_sections(finished, labels),
        *overlap_sections(runs_dir, finished, labels),
    ]


def build_report_model(runs_dir: Path, reference: str | None = None) -> ReportModel:
    """Read the records of ``runs_dir`` and build the report from them."""
    folder = read_record_folder(runs_dir)
    records = folder.records
    if not records:
        skipped = f" ({len(folder.skipped)} file(s) could not be read; see the warnings)" if folder.skipped else ""
        raise UserError(f"no run records in {runs_dir}{skipped}; run `lofit-bench run --out {runs_dir}` first")
    finished = [record for record in records if record.ok]
    labels = RecordLabels(records)
    finished_labels = labels if len(finished) == len(records) else RecordLabels(finished)
    reference = resolve_reference(finished, reference, finished_labels)
    header = header_lines(records, finished, reference, labels)
    header += [HeaderLine(f"left out {path.name}: {problem}", warning=True) for path, problem in folder.skipped]
    timing_headers, timing_rows = timing_table(records, finished_labels)
    return ReportModel(
        title=f"lofit-bench report: {runs_dir}",
        records=records,
        finished=finished,
        failed=[record for record in records if not record.ok],
        summary=summarize(records, reference, finished_labels),
        header=header,
        reference=reference,
        rows=[csv_row(record, labels) for record in records],
        timing_headers=timing_headers,
        timing_rows=timing_rows,
        trials=trial_rows(finished),
        labels=labels,
        finished_labels=finished_labels,
        skipped=folder.skipped,
        runs_dir=runs_dir,
        sections=build_sections(runs_dir, records, finished_labels),
    )

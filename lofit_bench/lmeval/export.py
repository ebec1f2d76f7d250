"""Our tasks -> lm-eval: task configs that score with the tasks' own code, for `lm_eval` itself.

`lofit-bench export-lm-eval OUT_DIR [--tasks NAME,...]` exports every registered task (the
built-ins and those of installed plugins), or the ones named, that lm-eval can score the way
the harness does: a :class:`~lofit_bench.task.GenerationTask` (greedy generation, judged per
item) or a :class:`~lofit_bench.task.MultipleChoiceTask` (summed log-probs of each item's
choices). Any other task is skipped, with the reason. Into OUT_DIR go:

- ``data/<lm-eval name>_test.jsonl``: the test split of one task and fold, one document per
  item, built by :func:`lofit_bench.lmeval.task_functions.document` from the task itself and
  keyed by the task's item ids;
- ``utils.py``: one ``process_<lm-eval name>`` function per exported task, each calling
  :func:`~lofit_bench.lmeval.task_functions.score_document`, which finds the item again by id
  and scores it with the task's own ``judge`` or ``score_choices`` (no copy of any rule);
- one YAML per task and fold, with the ABSOLUTE path of its data file (lm-eval hands
  ``data_files`` to ``datasets.load_dataset`` unchanged, so a relative path would resolve
  against the working directory, not the YAML).

lm-eval names are ``lofit_<task>`` for a one-fold task and ``lofit_<task>_<fold>`` otherwise
(``lofit_clutrr``, ``lofit_truthfulqa_fold0``; characters other than letters, digits and
``_`` become ``_``); every one is tagged ``lofit``, and a task's folds also ``lofit_<task>``.
Then ``lm_eval --model hf --model_args pretrained=DIR --include_path OUT_DIR --tasks lofit_clutrr``
scores any Hugging Face model with our protocol. lm-eval needs lofit-bench (and the plugin that
provides the task) importable; lm-eval itself is not needed to export.

Generation tasks: greedy, ``task.max_new_tokens`` new tokens, stopping only at EOS; the judge
sees prompt + generated text as ``full_text`` (see the tokenizer caveat in
:mod:`~lofit_bench.lmeval.task_functions`). Multiple-choice tasks: every choice is scored
exactly as ``task.choices`` spells it after ``task.choice_context`` (``target_delimiter`` is
empty); TruthfulQA's choices are its true then false answers, each after a space, and one
lm-eval task reports both MC1 and MC2.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lofit_bench import __version__
from lofit_bench.errors import UserError
from lofit_bench.lmeval import PREFIX as LM_EVAL_PREFIX
from lofit_bench.lmeval import task_functions
from lofit_bench.registry import PREFIX_SEPARATOR
from lofit_bench.task import GenerationTask, Split, Task

UTILS_MODULE = "utils"
DATA_FOLDER = "data"
TAG = "lofit"
SPLIT: Split = "test"
EXPORT_VERSION = 2  # bump when the exported protocol changes (lm-eval records metadata.version)


@dataclass(frozen=True)
class ExportedTask:
    """One lm-eval task config: one harness task and fold, its documents and how they are scored."""

    name: str  # the lm-eval task name
    task: str  # the harness's registered task name
    fold: str
    class_path: str  # module:QualifiedName, "" when not importable by path
    summary: str
    tags: tuple[str, ...]
    output_type: str  # "multiple_choice" or "generate_until"
    fields: dict[str, str]  # doc_to_text / doc_to_choice / doc_to_target -> document column or value
    metrics: tuple[str, ...]
    documents: list[dict[str, Any]] = field(repr=False)
    provider: dict[str, str] | None = None  # the distribution that registered the task
    max_gen_toks: int | None = None

    @property
    def data_file(self) -> str:
        return f"{self.name}_{SPLIT}.jsonl"

    @property
    def process_results(self) -> str:
        return f"process_{self.name}"


@dataclass
class ExportResult:
    """What an export wrote, and the registered tasks it skipped with the reason."""

    out_dir: Path
    tasks: list[ExportedTask]
    skipped: dict[str, str]


def export_lm_eval_tasks(out_dir: Path, task_names: Sequence[str] | None = None) -> ExportResult:
    """Write the task configs, their data and ``utils.py`` into ``out_dir``.

    ``task_names`` None exports every registered task lm-eval can score, skipping the others
    (and any whose data cannot be read) with the reason; a named task that cannot be exported
    is a UserError that says why.
    """
    from lofit_bench.plugins import get_host

    host = get_host()
    named = task_names is not None
    names = list(dict.fromkeys(task_names)) if named else host.tasks.names()
    if named:
        for name in names:  # refused before resolving: resolving an lm-eval name would import lm-eval
            if name.startswith(LM_EVAL_PREFIX + PREFIX_SEPARATOR):
                raise UserError(f"task {name!r} cannot be exported to lm-eval: it is an lm-eval task already")
        host.tasks.resolve(names)  # one error listing the known tasks for any unknown name
    exported: list[ExportedTask] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            exports = task_exports(name, host.tasks.get(name), host.distribution_of(host.tasks.owner(name)))
            check_unique_names(exported, exports)
        except UserError as error:
            if named:
                raise
            skipped[name] = str(error)
            continue
        exported += exports
    out_dir = write_export(out_dir, exported)
    return ExportResult(out_dir, exported, skipped)


# -- one task -------------------------------------------------------------------------------
def task_tag(task: str) -> str:
    """``lofit_<task>`` in letters, digits and ``_``: a one-fold task's name, else its folds' tag."""
    return TAG + "_" + re.sub(r"\W", "_", task, flags=re.ASCII)


def lm_eval_name(task: str, fold: str, folds: Sequence[str]) -> str:
    """``lofit_<task>`` (one fold) or ``lofit_<task>_<fold>`` (``fold_0`` -> ``fold0``)."""
    if len(folds) == 1:
        return task_tag(task)
    return f"{task_tag(task)}_{re.sub(r'[^A-Za-z0-9]', '', fold)}"


def task_exports(name: str, cls: type, provider: dict[str, str] | None) -> list[ExportedTask]:
    """One :class:`ExportedTask` per fold of the task registered as ``name``."""
    try:
        task = cls()
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - a plugin's bug must not stop the other exports
        raise UserError(f"task {name!r} cannot be exported: building it failed ({type(error).__name__}: {error})") from None
    problem = task_functions.exportable_problem(task)
    if problem is not None:
        raise UserError(f"task {name!r} cannot be exported to lm-eval: {problem}")
    path = task_functions.class_path(cls)
    return [fold_export(task, name, fold, path, provider) for fold in task.folds]


def fold_export(task: Task, name: str, fold: str, path: str, provider: dict[str, str] | None) -> ExportedTask:
    documents = fold_documents(task, name, fold)
    export_name = lm_eval_name(name, fold, task.folds)
    tags = (TAG,) if len(task.folds) == 1 else (TAG, task_tag(name))
    description = " ".join((task.description or name).split())  # one line: it becomes a YAML comment
    summary = f"{description}; fold {fold}, {SPLIT} split ({len(documents)} items)"
    common = dict(name=export_name, task=name, fold=fold, class_path=path, summary=summary, tags=tags)
    common |= dict(metrics=tuple(task.metrics), documents=documents, provider=provider)
    if isinstance(task, GenerationTask):
        fields = {"doc_to_text": "prompt", "doc_to_target": "target"}
        return ExportedTask(output_type="generate_until", fields=fields, max_gen_toks=task.max_new_tokens, **common)
    fields = {"doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "0"}
    return ExportedTask(output_type="multiple_choice", fields=fields, **common)


def fold_documents(task: Task, name: str, fold: str) -> list[dict[str, Any]]:
    """The test split's documents, checked for what lm-eval and the scorer rely on."""
    try:
        items = task.items(fold, SPLIT)
        documents = [task_functions.document(task, item) for item in items]
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001
        raise UserError(f"task {name!r} cannot be exported: reading its {fold}/{SPLIT} items failed ({type(error).__name__}: {error})") from None
    problem = documents_problem(documents)
    if problem is not None:
        raise UserError(f"task {name!r} cannot be exported: its {fold}/{SPLIT} split {problem}")
    return documents


def documents_problem(documents: list[dict[str, Any]]) -> str | None:
    """Why lm-eval could not score these documents (or find their items again), or None."""
    if not documents:
        return "is empty"
    ids = [document["id"] for document in documents]
    if not all(isinstance(identifier, str) and identifier for identifier in ids) or len(set(ids)) != len(ids):
        return "does not give every item a distinct, non-empty string id"
    for document in documents:
        if not isinstance(document.get("prompt", document.get("context")), str):
            return f"gives item {document['id']!r} a prompt or context that is not a string"
        if "choices" in document and not _nonempty_strings(document["choices"]):
            return f"gives item {document['id']!r} no choices, or one that is not a non-empty string"
    return None


def _nonempty_strings(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(value, str) and value for value in values)


def check_unique_names(earlier: list[ExportedTask], new: list[ExportedTask]) -> None:
    """Two harness names can map to one lm-eval name (``local-qa``, ``local_qa``): refuse the later."""
    taken = {task.name: task.task for task in earlier}
    for task in new:
        if task.name in taken:
            raise UserError(
                f"task {task.task!r} cannot be exported: task {taken[task.name]!r} already exports as "
                f"lm-eval task {task.name!r}; export it on its own (--tasks {task.task})"
            )


# -- writing -------------------------------------------------------------------------------
def write_export(out_dir: Path, exported: list[ExportedTask]) -> Path:
    out_dir = Path(out_dir).expanduser().resolve()
    try:
        (out_dir / DATA_FOLDER).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write to {out_dir}: {error.strerror or error}; choose another folder") from None
    for task in exported:
        data = _jsonl(task.documents)
        (out_dir / DATA_FOLDER / task.data_file).write_text(data, encoding="utf-8")
        (out_dir / f"{task.name}.yaml").write_text(task_yaml(task, out_dir, _sha256(data)), encoding="utf-8")
    (out_dir / f"{UTILS_MODULE}.py").write_text(utils_source(exported), encoding="utf-8")
    return out_dir


def _jsonl(documents: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(document, ensure_ascii=False) + "\n" for document in documents)


def _quote(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string escapes are YAML's)."""
    return json.dumps(value, ensure_ascii=True)


def utils_source(exported: list[ExportedTask]) -> str:
    """``utils.py``: per task, a ``process_results`` that hands lm-eval's responses to the task."""
    lines = [
        f'"""lm-eval scoring for the tasks lofit-bench {__version__} exported here; regenerate rather than edit.',
        "",
        "Each function scores one document with the task's own code (found by its registered name,",
        "else by its class path): see lofit_bench.lmeval.task_functions.",
        '"""',
        "",
        "from lofit_bench.lmeval.task_functions import score_document",
    ]
    for task in exported:
        arguments = ", ".join(_quote(value) for value in (task.task, task.class_path, task.fold, SPLIT))
        lines += [
            "",
            "",
            f"def {task.process_results}(doc, results):",
            f"    return score_document({arguments}, doc, results)",
        ]
    return "\n".join(lines) + "\n"


def task_yaml(task: ExportedTask, out_dir: Path, documents_sha256: str) -> str:
    lines = [
        f"# Generated by lofit-bench {__version__} (`lofit-bench export-lm-eval`); regenerate rather than edit.",
        f"# {task.summary}.",
        "# Scored by the task's own code, so lofit-bench (and its plugin) must be importable where lm-eval runs.",
        f"task: {task.name}",
        "tag:",
        *[f"  - {tag}" for tag in task.tags],
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        f"    {SPLIT}: {_quote(str(out_dir / DATA_FOLDER / task.data_file))}",
        f"test_split: {SPLIT}",
        f"output_type: {task.output_type}",
        "num_fewshot: 0",
        *[f"{key}: {value}" for key, value in task.fields.items()],
    ]
    if task.output_type == "multiple_choice":
        lines.append('target_delimiter: ""')  # each choice is scored exactly as the task spells it
    else:
        # Greedy, stopping only at EOS (lm-eval always adds it), as the harness generates.
        lines += [
            "generation_kwargs:",
            "  until: []",
            f"  max_gen_toks: {task.max_gen_toks}",
            "  do_sample: false",
            "  temperature: 0.0",
        ]
    lines += [f"process_results: !function {UTILS_MODULE}.{task.process_results}", "metric_list:"]
    for metric in task.metrics:
        lines += [f"  - metric: {_quote(metric)}", "    aggregation: mean", "    higher_is_better: true"]
    provider = task.provider or {}
    lines += [
        "metadata:",
        f"  version: {EXPORT_VERSION}.0",
        f"  lofit_bench_version: {_quote(__version__)}",
        f"  lofit_task: {_quote(task.task)}",
        f"  fold: {_quote(task.fold)}",
        f"  split: {SPLIT}",
        f"  task_class: {_quote(task.class_path)}",
        f"  provided_by: {_quote(' '.join(filter(None, (provider.get('name'), provider.get('version')))))}",
        f"  documents_sha256: {_quote(documents_sha256)}",
    ]
    return "\n".join(lines) + "\n"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

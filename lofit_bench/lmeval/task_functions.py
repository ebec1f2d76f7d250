"""What the lm-eval tasks that `lofit-bench export-lm-eval` writes run: the tasks' own code.

An exported task's documents and its scoring both go through the task object itself, found
by its registered name (:func:`task_for`), so an lm-eval score and the harness's
``task.evaluate`` apply one rule, for built-in and plugin tasks alike:

- :func:`document` builds the JSONL document of one item (the export writes it; scoring
  rebuilds it to check the file still matches the task's data);
- :func:`score_document` turns lm-eval's responses for one document into the task's metric
  values: ``task.judge(item, generation)`` for a
  :class:`~lofit_bench.task.GenerationTask`, ``task.score_choices(item, log_likelihoods)``
  for a :class:`~lofit_bench.task.MultipleChoiceTask`.

The exported ``utils.py`` holds one two-line function per task that calls
:func:`score_document`, so lofit-bench (and the plugin that provides the task) must be
importable wherever lm-eval runs.

Generation tasks rebuild the harness's :class:`~lofit_bench.engine.scoring.Generation` from lm-eval's
continuation: ``full_text`` is prompt + generated text. The two are equal for tokenizers
whose decoding is concatenative (byte-level BPE, as SmolLM2, GPT-2, Llama-3 and Qwen use); a
SentencePiece tokenizer that drops the leading space of a separately decoded continuation can
make a parse of ``full_text`` (MQuAKE's strict, unstripped one) differ. ``new_tokens`` is
unknown there (lm-eval does not report it) and is -1.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from lofit_bench.errors import UserError
from lofit_bench.task import GenerationTask, MultipleChoiceTask, Split, Task

#: Why lm-eval would not reproduce a task's ``evaluate``; None for the kinds it can.
NOT_EXPORTABLE = (
    "it is neither a GenerationTask nor a MultipleChoiceTask (lofit_bench.task), so its evaluate() "
    "has no per-item scoring lm-eval can call"
)
UNKNOWN_TOKEN_COUNT = -1


# -- which task ------------------------------------------------------------------------------
def class_path(cls: type) -> str:
    """``module:QualifiedName``, or "" when that does not import back to ``cls`` (a class built
    in a function, say)."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    try:
        return path if _import_class(path) is cls else ""
    except (ImportError, AttributeError):
        return ""


def _import_class(path: str) -> type:
    module_name, _, qualified_name = path.partition(":")
    value: Any = importlib.import_module(module_name)
    for part in qualified_name.split("."):
        value = getattr(value, part)
    return value


def task_class(name: str, path: str = "") -> type[Task]:
    """The class registered as ``name`` with the plugin host; the class at ``path`` when the host
    does not know the name (its plugin not allowed by LOFIT_BENCH_LOAD_PLUGINS, say)."""
    from lofit_bench.plugins import get_host

    tasks = get_host().tasks
    if name in tasks.names():
        cls = tasks.get(name)
        if path and class_path(cls) not in ("", path):
            raise UserError(
                f"task {name!r} is now {class_path(cls)}, not the {path} it was exported from; "
                "run `lofit-bench export-lm-eval` again"
            )
        return cls
    if path:
        try:
            return _import_class(path)
        except (ImportError, AttributeError) as error:
            raise UserError(
                f"task {name!r} is not registered and its class {path} does not import ({error})"
            ) from None
    raise UserError(
        f"task {name!r} is not registered; install the plugin that provides it (`lofit-bench list tasks`)"
    )


_instances: dict[type, Task] = {}


def task_for(name: str, path: str = "") -> Task:
    """One instance per task class and process (its splits are read once)."""
    cls = task_class(name, path)
    if cls not in _instances:
        _instances[cls] = cls()
    return _instances[cls]


def exportable_problem(task: Task) -> str | None:
    """Why lm-eval cannot score ``task`` as its ``evaluate`` does, or None when it can."""
    return None if isinstance(task, GenerationTask | MultipleChoiceTask) else NOT_EXPORTABLE


# -- documents -------------------------------------------------------------------------------
def document(task: Task, item: Any) -> dict[str, Any]:
    """The lm-eval document of one item: its id and what lm-eval feeds the model."""
    if isinstance(task, GenerationTask):
        return {"id": item.id, "prompt": item.prompt, "target": task.completion(item)}
    if isinstance(task, MultipleChoiceTask):
        return {
            "id": item.id,
            "context": task.choice_context(item),
            "choices": list(task.choices(item)),
        }
    raise UserError(f"task {task.name!r} cannot be exported to lm-eval: {NOT_EXPORTABLE}")


_items_by_id: dict[tuple[int, str, str], dict[str, Any]] = {}


def item_for(task: Task, fold: str, split: Split, doc: dict[str, Any]) -> Any:
    """The task's item behind an exported document, checked to still read as the document."""
    key = (id(task), fold, split)
    if key not in _items_by_id:
        _items_by_id[key] = {item.id: item for item in task.items(fold, split)}
    item = _items_by_id[key].get(doc.get("id"))
    if item is None or document(task, item) != doc:
        what = "is not in" if item is None else "no longer matches"
        raise UserError(
            f"lm-eval document {doc.get('id')!r} {what} task {task.name!r}'s {fold}/{split} data; "
            "run `lofit-bench export-lm-eval` again"
        )
    return item


# -- scoring ---------------------------------------------------------------------------------
def log_likelihoods(results: Sequence[Any]) -> list[float]:
    """lm-eval hands a multiple-choice document one (log-likelihood, is-greedy) per choice."""
    return [float(result[0]) for result in results]


def generation(item: Any, text: str) -> Any:
    """The harness's Generation for lm-eval's continuation (see the module docstring)."""
    from lofit_bench.engine.scoring import Generation

    return Generation(
        prompt=item.prompt,
        full_text=item.prompt + text,
        new_text=text,
        new_tokens=UNKNOWN_TOKEN_COUNT,
    )


def entry(task: Task, item: Any, results: Sequence[Any]) -> dict[str, Any]:
    """The task's own per-item entry for lm-eval's responses to one document."""
    if isinstance(task, GenerationTask):
        return task.judge(item, generation(item, results[0]))
    if isinstance(task, MultipleChoiceTask):
        return task.score_choices(item, log_likelihoods(results))
    raise UserError(f"task {task.name!r} cannot be scored by lm-eval: {NOT_EXPORTABLE}")


def score_document(
    name: str, path: str, fold: str, split: Split, doc: dict[str, Any], results: Sequence[Any]
) -> dict[str, float]:
    """lm-eval's ``process_results`` for an exported task: the task's metric values for ``doc``."""
    task = task_for(name, path)
    values = entry(task, item_for(task, fold, split, doc), results)
    return {metric: float(values[metric]) for metric in task.metrics}

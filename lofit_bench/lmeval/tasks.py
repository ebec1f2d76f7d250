"""``lm_eval:TASK``: any lm-eval task (or group, or tag) as a lofit-bench task.

This built-in plugin registers the task-name prefix ``lm_eval``. ``lofit-bench run --tasks
lm_eval:NAME`` then builds, on demand, a :class:`LmEvalTask` subclass whose ``evaluate`` hands
the scorer's model (the method's live model, hooks attached) to lm-eval's ``simple_evaluate``
through :class:`~lofit_bench.lmeval.model.HookedHFLM`.

Where task names are looked up (lm-eval's ``TaskManager(include_defaults=False)``, so the
13 s index of the whole catalogue is never built), later entries overriding earlier ones:

1. the built-in lm-eval folders whose name starts NAME (``truthfulqa_mc2`` -> ``tasks/truthfulqa``);
2. the harness's own tasks, every registered task that can be exported, plugin tasks
   included, as :mod:`lofit_bench.lmeval.export` writes them (``lofit_clutrr``,
   ``lofit_mquake``, ``lofit_truthfulqa_fold{0,1}``, ...), once per process into a
   temporary folder;
3. the user's folders: ``--lm-eval-include PATH`` (repeatable), which sets
   ``LOFIT_BENCH_LM_EVAL_INCLUDE`` (paths joined by ``os.pathsep``) for the runs.

Such a task has no training data in the harness's sense (objective ``"none"``): the sweep
planner refuses methods that train on it. Its test split is lm-eval's evaluation split (test,
else validation); ``limit`` is lm-eval's ``limit`` per task.

Datasets are first loaded with the Hugging Face hub switched off (local files and the local
cache only). Only if that fails for want of a download, and neither ``HF_HUB_OFFLINE`` nor
``HF_DATASETS_OFFLINE`` is set, and the hub answers, is the load retried online; otherwise
the error says the task needs a download, at once rather than after a minute of retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from lofit_bench import hookimpl
from lofit_bench.errors import UserError, did_you_mean
from lofit_bench.lmeval import PREFIX, quiet_lm_eval, require_lm_eval
from lofit_bench.lmeval.lookup import builtin_folders, task_manager, user_include_paths
from lofit_bench.task import EvalResult, Split, Task, check_limit

DESCRIPTION = (
    "any lm-eval task, group or tag (evaluation only, for fit-free methods); "
    "--lm-eval-include adds task folders; needs `pip install 'lofit-bench[lm-eval]'`"
)
EVALUATION_KINDS = {"multiple_choice": "multiple_choice", "generate_until": "generation"}
_HUB_ERRORS = {"ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "DatasetNotFoundError"}
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")

T = TypeVar("T")


# -- offline first ---------------------------------------------------------------------------
@contextlib.contextmanager
def hub_switched_off() -> Iterator[None]:
    """datasets and huggingface_hub read their offline switches at import; flip them for a call."""
    import datasets.config
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _needs_download(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if type(seen).__name__ in _HUB_ERRORS or "Couldn't reach" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _offline_requested() -> bool:
    return any(os.environ.get(variable, "").lower() in ("1", "true", "yes", "on") for variable in _OFFLINE_VARIABLES)


def offline_first(task_name: str, action: Callable[[], T]) -> T:
    """Run ``action`` (which loads lm-eval datasets) without the hub; online only as a fallback."""
    from lofit_bench.engine.models import hub_reachable

    try:
        with hub_switched_off():
            return action()
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to build an lm-eval task is the user's to fix
        if not _needs_download(error):
            raise UserError(f"lm-eval could not load task {task_name!r}: {type(error).__name__}: {_first_line(error)}") from error
        if _offline_requested() or not hub_reachable():
            raise UserError(
                f"lm-eval task {task_name!r} needs a download from the Hugging Face Hub "
                f"({_first_line(error)}), and the hub cannot be reached (offline mode is set, or "
                "there is no network). Run it once where the hub is reachable so the dataset is "
                "cached, or give the task local data (dataset_path: json with absolute "
                "data_files) in a folder passed with --lm-eval-include."
            ) from None
    try:
        return action()
    except Exception as error:  # noqa: BLE001
        raise UserError(f"lm-eval could not load task {task_name!r}: {type(error).__name__}: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


# -- evaluating any model --------------------------------------------------------------------
def evaluate_model(
    model,
    tokenizer,
    task_names: str | list[str],
    include: list[Path] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    intervention: Callable[[], contextlib.AbstractContextManager] | None = None,
    progress: bool = False,
    manager=None,
) -> tuple[dict[str, Any], int]:
    """lm-eval's results for a live model (hooks attached), plus the tokens it processed.

    ``task_names`` are lm-eval task, group or tag names, looked up as for ``lm_eval:NAME``;
    ``include`` replaces ``LOFIT_BENCH_LM_EVAL_INCLUDE`` when given. The results dict is
    ``simple_evaluate``'s, samples included (``limit`` documents per task).
    """
    names = [task_names] if isinstance(task_names, str) else list(task_names)
    label = ", ".join(names)
    require_lm_eval(f"lm-eval task(s) {label}")
    import lm_eval

    from lofit_bench.lmeval.model import HookedHFLM

    manager = manager or task_manager(names, include)
    lm = HookedHFLM(model, tokenizer, batch_size=batch_size, intervention=intervention, progress=progress)

    def run() -> dict[str, Any]:
        with quiet_lm_eval():
            return lm_eval.simple_evaluate(
                model=lm,
                tasks=names,
                task_manager=manager,
                limit=limit,
                log_samples=True,
                bootstrap_iters=0,  # runs report their own spread over seeds
            )

    return offline_first(label, run), lm.tokens_processed


# -- the task class --------------------------------------------------------------------------
class LmEvalTask(Task):
    """Base of the classes :func:`lm_eval_task_class` builds; one per lm-eval name."""

    objective = "none"
    folds = ("main",)
    license = "see the lm-eval task's dataset"
    lm_eval_name: ClassVar[str]
    lm_eval_version: ClassVar[str]
    include: ClassVar[tuple[str, ...]]
    #: (lm-eval task, lm-eval metric key "metric,filter", our metric name), in report order.
    metric_keys: ClassVar[tuple[tuple[str, str, str], ...]]
    eval_ids: ClassVar[tuple[str, ...]]

    def split_ids(self, fold: str, split: Split) -> list[str]:
        self.check_fold(fold)
        return list(self.eval_ids) if split == "test" else []

    def training_examples(self, fold: str, split: Split = "train") -> list:
        raise UserError(
            f"task {self.name} provides no training data; use it with fit-free methods "
            "(zero-shot, or any method with uses_training_data = False), or train on a "
            "lofit-bench task and score the model with lofit_bench.lmeval.tasks.evaluate_model"
        )

    def evaluate(self, scorer: Any, fold: str, split: Split = "test", limit: int | None = None) -> EvalResult:
        self.check_fold(fold)
        if split != "test":
            raise UserError(f"task {self.name} has only lm-eval's evaluation split ('test'), not {split!r}")
        check_limit(limit)
        results, tokens = evaluate_model(
            scorer.model,
            scorer.tokenizer,
            self.lm_eval_name,
            include=[Path(path) for path in self.include],
            limit=limit,
            batch_size=scorer.batch_size,
            progress=scorer.progress,
        )
        scorer.tokens_processed += tokens
        return self.to_eval_result(results)

    @classmethod
    def to_eval_result(cls, results: dict[str, Any]) -> EvalResult:
        """Our metrics, ids and per-example rows from lm-eval's results; the rest as details."""
        several = len({task for task, _, _ in cls.metric_keys}) > 1
        metrics = {
            name: _as_float(results["results"].get(task, {}).get(key)) for task, key, name in cls.metric_keys
        }
        example_ids: list[str] = []
        per_example: list[dict[str, Any]] = []
        metric_names = {key.split(",")[0] for _, key, _ in cls.metric_keys}
        for task in dict.fromkeys(task for task, _, _ in cls.metric_keys):
            for sample in results.get("samples", {}).get(task, []):
                identifier = _document_id(task, sample["doc"], sample["doc_id"], several)
                example_ids.append(identifier)
                per_example.append(
                    {
                        "id": identifier,
                        "doc_id": sample["doc_id"],
                        "target": sample.get("target"),
                        "response": sample.get("filtered_resps"),
                        **{name: sample[name] for name in metric_names if name in sample},
                    }
                )
        details = {
            "harness": "lm-eval",
            "lm_eval_version": results.get("lm_eval_version", cls.lm_eval_version),
            "lm_eval_task": cls.lm_eval_name,
            "include_paths": list(cls.include),
            "results": results.get("results"),
            "groups": results.get("groups"),
            "group_subtasks": results.get("group_subtasks"),
            "configs": results.get("configs"),
            "versions": results.get("versions"),
            "n-shot": results.get("n-shot"),
            "n-samples": results.get("n-samples"),
        }
        return EvalResult(metrics, example_ids, _jsonable(per_example), _jsonable(details))

    @classmethod
    def source_fingerprint(cls) -> str | None:
        """The ``--lm-eval-include`` folders' content and lm-eval's version (lm-eval's own task
        files come with that version)."""
        return folder_fingerprint(cls.include, cls.lm_eval_version)


def folder_fingerprint(folders: Sequence[str], version: str) -> str:
    """A content hash of every file under ``folders`` (relative path, size, first MiB), with the
    lm-eval version: what a ``lm_eval:`` task reads from ``--lm-eval-include``."""
    digest = hashlib.sha256(f"lm_eval=={version}".encode())
    for folder in folders:
        root = Path(folder)
        for path in sorted(item for item in root.rglob("*") if item.is_file()):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(str(path.stat().st_size).encode())
            with open(path, "rb") as handle:
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def _document_id(task: str, document: Any, index: int, several: bool) -> str:
    """The document's own ``id`` where it has one (our exported tasks: the harness's ids)."""
    own = document.get("id") if isinstance(document, dict) else None
    identifier = own if isinstance(own, str) and own else str(index)
    return f"{task}/{identifier}" if several else identifier


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _jsonable(value: Any) -> Any:
    """lm-eval returns numpy numbers and, in configs, functions: make it plain JSON."""

    def default(item: Any) -> Any:
        return item.item() if hasattr(item, "item") else str(item)

    return json.loads(json.dumps(value, default=default))


_task_classes: dict[tuple[str, tuple[str, ...]], type[LmEvalTask]] = {}


def lm_eval_task_class(task_name: str) -> type[LmEvalTask]:
    """The task class for ``lm_eval:<task_name>``; loads the task once to check it and read
    its metrics and documents (cached per name and include paths)."""
    version = require_lm_eval(f"task {PREFIX}:{task_name}")
    user = tuple(str(path) for path in user_include_paths())
    key = (task_name, user)
    if key not in _task_classes:
        _task_classes[key] = _build_task_class(task_name, [Path(path) for path in user], version)
    return _task_classes[key]


def _build_task_class(task_name: str, user: list[Path], version: str) -> type[LmEvalTask]:
    manager = task_manager([task_name], user)
    if task_name not in manager.all_tasks:
        builtin = ", ".join(folder.name for folder in builtin_folders(task_name)) or "none"
        raise UserError(
            f"lm-eval knows no task, group or tag {task_name!r}.{did_you_mean(task_name, manager.all_tasks)} "
            f"Searched: lm-eval's built-in folders whose name it starts with ({builtin}), lofit-bench's "
            f"own lofit_* tasks, and --lm-eval-include folders ({', '.join(map(str, user)) or 'none'}). "
            "Pass the folder holding its YAML with --lm-eval-include PATH."
        )
    loaded = offline_first(task_name, lambda: manager.load([task_name]))
    leaves = loaded["tasks"]
    several = len(leaves) > 1
    metric_keys, eval_ids, kinds = [], [], set()
    for leaf_name, leaf in leaves.items():
        filters = filter_names(leaf)
        for metric in leaf.aggregation():
            for filter_name in filters:
                name = metric if filter_name == "none" else f"{metric}@{filter_name}"
                metric_keys.append((leaf_name, f"{metric},{filter_name}", f"{leaf_name}/{name}" if several else name))
        eval_ids += [_document_id(leaf_name, document, index, several) for index, document in enumerate(leaf.eval_docs)]
        kinds.add(EVALUATION_KINDS.get(leaf.OUTPUT_TYPE, str(leaf.OUTPUT_TYPE)))
    if not metric_keys:
        raise UserError(f"lm-eval task {task_name!r} defines no metrics")
    attributes = {
        "name": f"{PREFIX}:{task_name}",
        "description": f"lm-eval {version} task {task_name!r}" + (f" ({len(leaves)} subtasks)" if several else ""),
        "evaluation": kinds.pop() if len(kinds) == 1 else "mixed",
        "metrics": tuple(name for _, _, name in metric_keys),
        "primary_metric": metric_keys[0][2],
        "lm_eval_name": task_name,
        "lm_eval_version": version,
        "include": tuple(str(path) for path in user),
        "metric_keys": tuple(metric_keys),
        "eval_ids": tuple(eval_ids),
    }
    return type(f"LmEvalTask[{task_name}]", (LmEvalTask,), attributes)


def filter_names(task: Any) -> list[str]:
    """The names of a loaded lm-eval task's filter pipelines, as its results are keyed
    (``metric,filter``): the task config's ``filter_list``, or lm-eval's single ``none`` default."""
    filter_list = getattr(task.config, "filter_list", None)
    return [entry["name"] for entry in filter_list] if filter_list else ["none"]


@hookimpl
def register_task_prefixes(register):
    register(PREFIX, lm_eval_task_class, DESCRIPTION)

"""Where ``lm_eval:NAME`` task names are looked up: lm-eval's own folders that may define the
name, the harness's exported ``lofit_*`` tasks, and the user's ``--lm-eval-include`` folders.

Kept apart from :mod:`lofit_bench.lmeval.tasks` (which builds task classes from what is found
here) and below :mod:`lofit_bench.lmeval.export` (which it calls once per process to write the
harness's own tasks), so no module of the adapter imports one that imports it back.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from lofit_bench.errors import UserError
from lofit_bench.lmeval import INCLUDE_VARIABLE, quiet_lm_eval
from lofit_bench.progress import progress_enabled


def user_include_paths() -> list[Path]:
    """The folders in ``LOFIT_BENCH_LM_EVAL_INCLUDE``, checked to exist."""
    paths = [Path(item).expanduser().resolve() for item in os.environ.get(INCLUDE_VARIABLE, "").split(os.pathsep) if item]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise UserError(f"lm-eval include path(s) not found: {', '.join(missing)} (from --lm-eval-include / {INCLUDE_VARIABLE})")
    return paths


_exported_folder: Path | None = None


def exported_tasks_folder() -> Path:
    """Every exportable registered task as lm-eval configs, written once per process (a task
    that cannot be exported is left out; `lofit-bench export-lm-eval` says why)."""
    global _exported_folder
    if _exported_folder is None:
        from lofit_bench.lmeval.export import export_lm_eval_tasks

        folder = Path(tempfile.mkdtemp(prefix="lofit-bench-lm-eval-tasks-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        export_lm_eval_tasks(folder)
        _exported_folder = folder
    return _exported_folder


def builtin_folders(task_name: str) -> list[Path]:
    """lm-eval's own task folders that may define ``task_name``: those it starts with."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    return sorted(
        folder
        for folder in root.iterdir()
        if folder.is_dir()
        and not folder.name.startswith("_")
        and (task_name == folder.name or task_name.startswith((folder.name + "_", folder.name + "-")))
    )


def include_paths(task_names: list[str], extra: list[Path] | None = None) -> list[Path]:
    """Every folder indexed for ``task_names``, lowest precedence first."""
    user = user_include_paths() if extra is None else [Path(path).expanduser().resolve() for path in extra]
    builtin = sorted({folder for name in task_names for folder in builtin_folders(name)})
    return [*builtin, exported_tasks_folder(), *user]


def task_manager(task_names: list[str], extra: list[Path] | None = None):
    """An lm-eval TaskManager over :func:`include_paths` only (no whole-catalogue index)."""
    import datasets
    from lm_eval.tasks import TaskManager

    if not progress_enabled():
        datasets.disable_progress_bars()  # "Generating test split" bars
    with quiet_lm_eval():
        return TaskManager(include_defaults=False, include_path=[str(path) for path in include_paths(task_names, extra)])

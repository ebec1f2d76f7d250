"""The hooks a lofit-bench plugin can implement (pluggy, project name ``lofit_bench``).

A plugin is any module or object with functions decorated by :data:`hookimpl`. Each hook
receives a ``register`` callback and calls it once per method or task class it provides::

    from lofit_bench import hookimpl

    @hookimpl
    def register_methods(register):
        register(BitFit)

Built-in methods, tasks and executors are registered through these same hooks, and so are the
built-in ``lm_eval:`` task-name prefix (:func:`register_task_prefixes`) and the report formats
(:func:`register_report_formats`).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT_NAME = "lofit_bench"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_methods(register: Callable[[type], None]) -> None:
    """Register method classes: call ``register(MethodSubclass)`` once per method."""


@hookspec
def register_tasks(register: Callable[[type], None]) -> None:
    """Register task classes: call ``register(TaskSubclass)`` once per task."""


@hookspec
def register_task_prefixes(register: Callable[[str, Callable[[str], type], str], None]) -> None:
    """Register task-name prefixes: ``register(prefix, resolve, description)``.

    A task name ``prefix:REST`` then resolves to ``resolve(REST)``, a Task subclass built on
    demand (raise :class:`~lofit_bench.errors.UserError` for a REST that names nothing). The
    built-in ``lm_eval:`` prefix turns any lm-eval task into a lofit-bench task this way.
    """


@hookspec
def register_executors(register: Callable[[type], None]) -> None:
    """Register executors: call ``register(ExecutorSubclass)`` once per
    :class:`~lofit_bench.sweep.executors.Executor` (where a sweep's runs execute: ``--executor NAME``)."""


@hookspec
def register_report_formats(register: Callable[[object], None]) -> None:
    """Register report formats: ``register(ReportFormat(name, file_name, render, description))``.

    ``render(report)`` turns the one report model (:class:`~lofit_bench.report.model.ReportModel`)
    into the file's text; ``lofit-bench report`` writes it atomically as ``file_name``. The
    built-in ``md``, ``csv``, ``json`` and ``html`` formats are registered this way
    (:mod:`lofit_bench.report.formats`).
    """


@hookspec
def register_studies(register: Callable[[object], None]) -> None:
    """Register studies (an experiment as a sweep plus its table): call ``register(path)``
    once per study file (TOML/YAML/JSON with a ``[study]`` table; see
    :mod:`lofit_bench.sweep.studies`). ``lofit-bench list studies`` lists them and
    ``lofit-bench run --study NAME`` runs one."""

"""The hooks a lofit-bench plugin can implement (pluggy, project name ``lofit_bench``).

A plugin is any module or object with functions decorated by :data:`hookimpl`. Each hook
receives a ``register`` callback and calls it once per method or task class it provides::

    from lofit_bench import hookimpl

    @hookimpl
    def register_methods(register):
        register(BitFit)

Built-in methods and tasks are registered through these same hooks, and so is the built-in
``lm_eval:`` task-name prefix (:func:`register_task_prefixes`).
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
def register_studies(register: Callable[[object], None]) -> None:
    """Register studies (an experiment as a sweep plus its table): call ``register(path)``
    once per study file (TOML/YAML/JSON with a ``[study]`` table; see
    :mod:`lofit_bench.studies`). ``lofit-bench list studies`` lists them and
    ``lofit-bench run --study NAME`` runs one."""

"""The hooks a lofit-bench plugin can implement (pluggy, project name ``lofit_bench``).

A plugin is any module or object with functions decorated by :data:`hookimpl`. Each hook
receives a ``register`` callback and calls it once per method or task class it provides::

    from lofit_bench import hookimpl

    @hookimpl
    def register_methods(register):
        register(BitFit)

Built-in methods and tasks are registered through these same hooks.
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

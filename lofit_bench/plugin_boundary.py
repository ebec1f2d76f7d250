"""The boundary around plugin code: a plugin's exception is one line naming it, never our traceback.

An installed plugin's hooks, configs, data readers and checks run inside lofit-bench. When
one raises, the user must learn which plugin, which distribution and which call, in one line,
and the plugin's author needs the traceback (``--debug`` shows it). Before runs,
:func:`plugin_code` turns such an exception into :class:`PluginError` (a UserError: exit 2 at
the CLI). In a run, the exception stays the run's failure as it was raised, and
:func:`raised_in_plugin` names the plugin whose code raised it for the record. Built-in
plugins are lofit-bench's own code: their exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from lofit_bench.errors import UserError


class PluginError(UserError):
    """An installed plugin's own code raised (the message names the plugin and the call)."""


def error_text(error: BaseException) -> str:
    """``Type: message`` on one line (a KeyError's message is its key)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextmanager
def plugin_code(kind: str, name: str, call: str) -> Iterator[None]:
    """Run a call into the plugin that registered method or task ``name`` (``kind``); an
    exception other than UserError becomes one line: the plugin, its distribution and ``call``."""
    try:
        yield
    except UserError:
        raise  # already written for the user
    except Exception as error:
        from lofit_bench.plugins import get_host

        host = get_host()
        registry = host.methods if kind == "method" else host.tasks
        try:
            owner = registry.owner(name)
        except KeyError:
            raise error from None
        if host.is_builtin(owner):
            raise
        raise PluginError(
            f"{kind} {name!r} of plugin {host.describe(owner)} raised in {call}: {error_text(error)}. "
            "This is the plugin's error: report it to its author (--debug shows the traceback)"
        ) from error


def raised_in_plugin(traceback: TracebackType | None) -> str | None:
    """The installed plugin that lofit-bench called into when ``traceback``'s error was raised
    (its outermost frame of plugin code: the call, e.g. the method's ``fit``), as
    ``'name' (distribution version), in Class.function``; None when no plugin code ran."""
    from lofit_bench.plugins import get_host

    host = get_host()
    packages = host.installed_packages()
    if not packages:
        return None
    while traceback is not None:
        frame = traceback.tb_frame
        package = str(frame.f_globals.get("__name__", "")).split(".")[0]
        if package in packages:
            return f"{host.describe(packages[package])}, in {frame.f_code.co_qualname}"
        traceback = traceback.tb_next
    return None

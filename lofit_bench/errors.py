"""One exception type for everything a user can fix.

The CLI turns a :class:`UserError` into one line on stderr and exit code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input that the user can correct: the message says what is wrong and what to do."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest known name, or '' when none is close."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" Did you mean {matches[0]!r}?" if matches else ""


class DiskFull(UserError):
    """The disk filled up: the sweep stops cleanly (a rerun after freeing space resumes)."""

    exit_code = 3


class LofitBenchWarning(UserWarning):
    """Something the user should know that does not stop the command (printed as one line)."""


_warned: set[str] = set()


def warn(message: str) -> None:
    """One ``lofit-bench: warning: ...`` line on stderr (see :func:`install_warning_format`),
    once per process: a bad record read by the report and again by its heatmaps is one line."""
    import warnings

    if message in _warned:
        return
    _warned.add(message)
    warnings.warn(message, LofitBenchWarning, stacklevel=2)


def install_warning_format() -> None:
    """Print lofit-bench's warnings as one line each, in the parent and in every run's process."""
    import warnings

    warnings.formatwarning = one_line_warning


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    if issubclass(category, LofitBenchWarning):
        text = " ".join(str(message).split())  # a warning is one line, even if a plugin's error has several
        return f"lofit-bench: warning: {text}\n"
    return f"{filename}:{lineno}: {category.__name__}: {message}\n"


class Diverged(Exception):
    """Training produced a non-finite loss or non-finite trained values: the run failed.

    Not a UserError: it is recorded as the run's failure (type ``Diverged``), with the step,
    the loss and the learning rate in the message, and the sweep goes on.
    """

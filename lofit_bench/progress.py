"""Progress bars with ETA (tqdm) that a quiet mode turns off."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

QUIET_VARIABLE = "LOFIT_BENCH_QUIET"


def progress_enabled(requested: bool = True) -> bool:
    """Bars are on unless asked off, or LOFIT_BENCH_QUIET / CI is set."""
    if not requested:
        return False
    return not (os.environ.get(QUIET_VARIABLE) or os.environ.get("CI"))


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass


@contextmanager
def progress_bar(total: int | None, description: str, enabled: bool = True) -> Iterator:
    if not progress_enabled(enabled):
        yield _NullBar()
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=description, leave=False, dynamic_ncols=True) as bar:
        yield bar

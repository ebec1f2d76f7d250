"""Checks of sweep settings shared by the command line and sweep files.

A value given as ``--seeds abc`` and as ``seeds = "abc"`` in a sweep file must fail with the
same words: each checker takes the raw value and returns it normalised, or raises
:class:`~lofit_bench.errors.UserError` with a message that names the setting but not where it
came from (the caller adds ``--seeds`` or ``sweep config FILE: seeds``).
"""

from __future__ import annotations

import re
from typing import Any

from lofit_bench.errors import UserError

#: numpy's seed range (transformers.set_seed seeds numpy too): larger seeds fail inside the run.
MAX_SEED = 2**32 - 1
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def names(value: Any, setting: str) -> list[str]:
    """A list of names, or one comma-separated string of them."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UserError(f"{setting} must be a list of names (or one comma-separated string, e.g. a,b), got {value!r}")
    result = [item.strip() for item in value if item.strip()]
    if not result:
        raise UserError(f"{setting} must name at least one entry, got {value!r}")
    return result


def seeds(value: Any) -> list[int]:
    """Whole numbers in numpy's seed range, as a list, an int, or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    result = []
    for item in items:
        if isinstance(item, str) and item.strip().lstrip("-").isdigit():
            item = int(item.strip())
        if isinstance(item, bool) or not isinstance(item, int):
            raise UserError(f"seeds must be whole numbers, e.g. 42,43 (got {value!r})")
        result.append(item)
    if not result:
        raise UserError(f"seeds must name at least one seed, e.g. 42,43 (got {value!r})")
    for seed in result:
        check_seed(seed)
    return result


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed {seed} is out of range: seeds must be whole numbers from 0 to {MAX_SEED}")


def jobs(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"jobs must be a whole number of at least 1, got {value!r}")
    return value


def positive_count(value: Any, setting: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{setting} must be a whole number of at least 1, got {value!r}")
    return value


def device(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise UserError(f"device must be auto, cpu, mps, cuda or cuda:N, got {value!r}")
    return value


def choice(value: Any, setting: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise UserError(f"{setting} must be one of {', '.join(choices)}, got {value!r}")
    return value


def text(value: Any, setting: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{setting} must be a non-empty string, got {value!r}")
    return value


def table(value: Any, setting: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{setting} must be a table of FIELD = VALUE, got {value!r}")
    return value

"""Names that become paths: method and task names are file-name parts of records and artefacts.

A registered name must be a safe file name (:func:`name_problem`), so a plugin's method named
``../../x`` cannot write outside ``--out``. Names built from a prefix (``lm_eval:hellaswag``)
may hold characters a file name should not (``:`` is not allowed on Windows and means
something to many tools), so :func:`file_part` maps every name to a safe file-name part,
reversibly (:func:`name_of_file_part`). :func:`inside` checks any path the tool builds
against its root.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote

from lofit_bench.errors import UserError

MAX_NAME_LENGTH = 100
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
#: Characters kept as they are in a file-name part; everything else is %XX-encoded.
_FILE_SAFE = "._+-"


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a method or task name, or None when it can."""
    if not isinstance(name, str) or not name:
        return "it is not a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"it is longer than {MAX_NAME_LENGTH} characters"
    if not _SAFE_NAME.match(name) or ".." in name:
        return "a name must start with a letter or digit and use only letters, digits, '.', '_', '+' and '-' (no '..')"
    return None


def file_part(name: str) -> str:
    """``name`` as a safe file-name part: ``lm_eval:hellaswag`` -> ``lm_eval%3Ahellaswag``."""
    return quote(name, safe=_FILE_SAFE)


def name_of_file_part(part: str) -> str:
    """The inverse of :func:`file_part`."""
    return unquote(part)


def inside(root: Path, path: Path) -> Path:
    """``path``, after checking that it stays inside ``root`` (symlinks and ``..`` resolved)."""
    resolved_root = root.resolve()
    resolved = path.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise UserError(f"refusing to write {path}: it is outside the output folder {root}")
    return path

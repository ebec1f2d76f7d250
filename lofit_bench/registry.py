"""Name -> object registries for methods and tasks (after lm-eval's registry).

Registries are filled by plugin hooks (see :mod:`lofit_bench.plugins`); the core never
imports a method or task by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from lofit_bench.errors import UserError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries that answers unknown names with the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._owners: dict[str, str] = {}

    def add(self, name: str, entry: T, owner: str = "?") -> bool:
        """Register ``entry`` under ``name``; returns False (and keeps the first) on a taken name."""
        if name in self._entries:
            return False
        self._entries[name] = entry
        self._owners[name] = owner
        return True

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(self.unknown_message([name])) from None

    def resolve(self, names: list[str]) -> list[T]:
        """Look up several names at once, reporting every unknown one in a single error."""
        unknown = [name for name in names if name not in self._entries]
        if unknown:
            raise UserError(self.unknown_message(unknown))
        return [self._entries[name] for name in names]

    def unknown_message(self, unknown: list[str]) -> str:
        plural = "s" if len(unknown) > 1 else ""
        hints = "".join(did_you_mean(name, self._entries) for name in unknown)
        known = ", ".join(sorted(self._entries)) or "(none)"
        return (
            f"unknown {self.kind}{plural}: {', '.join(unknown)}.{hints} "
            f"Known {self.kind}s: {known}. Run `lofit-bench list {self.kind}s` for details."
        )

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

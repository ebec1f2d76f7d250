"""Name -> object registries for methods and tasks (after lm-eval's registry).

Registries are filled by plugin hooks (see :mod:`lofit_bench.plugins`); the core never
imports a method or task by name. Besides fixed names, a registry can hold name *prefixes*:
``PREFIX:REST`` is answered by the resolver registered for ``PREFIX`` (``lm_eval:hellaswag``
builds a task around an lm-eval task), so open-ended families of entries need no special case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from lofit_bench.errors import UserError, did_you_mean

T = TypeVar("T")

PREFIX_SEPARATOR = ":"


@dataclass(frozen=True)
class Prefix(Generic[T]):
    """Names ``prefix:REST`` resolve to ``resolve(REST)``, which raises UserError for a bad REST."""

    prefix: str
    resolve: Callable[[str], T]
    description: str
    owner: str


class Registry(Generic[T]):
    """A dict of named entries that answers unknown names with the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        self._prefixes: dict[str, Prefix[T]] = {}

    def add(self, name: str, entry: T, owner: str = "?") -> bool:
        """Register ``entry`` under ``name``; returns False (and keeps the first) on a taken name."""
        if name in self._entries:
            return False
        self._entries[name] = entry
        self._owners[name] = owner
        return True

    def add_prefix(self, prefix: str, resolve: Callable[[str], T], description: str = "", owner: str = "?") -> bool:
        """Register a resolver for names ``prefix:REST``; False (keeping the first) on a taken prefix."""
        if prefix in self._prefixes:
            return False
        self._prefixes[prefix] = Prefix(prefix, resolve, description, owner)
        return True

    def prefixes(self) -> list[Prefix[T]]:
        return [self._prefixes[prefix] for prefix in sorted(self._prefixes)]

    def _prefix_of(self, name: str) -> tuple[Prefix[T], str] | None:
        prefix, separator, rest = name.partition(PREFIX_SEPARATOR)
        if separator and prefix in self._prefixes:
            if not rest:
                raise UserError(f"{self.kind} name {name!r} names nothing after {prefix!r}{PREFIX_SEPARATOR}")
            return self._prefixes[prefix], rest
        return None

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        prefixed = self._prefix_of(name)
        if prefixed is not None:
            prefix, rest = prefixed
            return prefix.resolve(rest)
        raise UserError(self.unknown_message([name]))

    def resolve(self, names: list[str]) -> list[T]:
        """Look up several names at once, reporting every unknown one in a single error."""
        unknown = [name for name in names if name not in self]
        if unknown:
            raise UserError(self.unknown_message(unknown))
        return [self.get(name) for name in names]

    def unknown_message(self, unknown: list[str]) -> str:
        plural = "s" if len(unknown) > 1 else ""
        hints = "".join(did_you_mean(name, self._entries) for name in unknown)
        known = ", ".join(sorted(self._entries)) or "(none)"
        prefixes = "".join(f" {prefix.prefix}{PREFIX_SEPARATOR}NAME: {prefix.description}." for prefix in self.prefixes())
        return (
            f"unknown {self.kind}{plural}: {', '.join(unknown)}.{hints} "
            f"Known {self.kind}s: {known}.{prefixes} Run `lofit-bench list {self.kind}s` for details."
        )

    def owner(self, name: str) -> str:
        if name in self._owners:
            return self._owners[name]
        prefixed = self._prefix_of(name)
        if prefixed is None:
            raise KeyError(name)
        return prefixed[0].owner

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        """True for registered names and for any name under a registered prefix (whose
        resolver may still reject it in :meth:`get`)."""
        if name in self._entries:
            return True
        if not isinstance(name, str):
            return False
        prefix, separator, rest = name.partition(PREFIX_SEPARATOR)
        return bool(separator and rest) and prefix in self._prefixes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

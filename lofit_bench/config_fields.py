"""One check for every config field: its type annotation, then the bounds in its metadata.

Method configs (and anything else built from user input as a dataclass) declare their rules
next to the field, named as in JSON Schema::

    learning_rate: float | None = field(default=None, metadata={"help": "...", "exclusive_minimum": 0})
    dropout: float = field(default=0.1, metadata={"help": "...", "minimum": 0, "exclusive_maximum": 1})
    target_modules: list[str] = field(default_factory=list, metadata={"help": "...", "min_items": 1})

:func:`check_fields` checks every field against its annotation (``bool`` is never a number, a
whole number is a valid float, ``list[X]`` checks each item) and those bounds (for a list,
each item), and raises one :class:`~lofit_bench.errors.UserError` naming the option. A
config's ``__post_init__`` then holds only rules between fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from lofit_bench.errors import UserError

BOUNDS = ("minimum", "exclusive_minimum", "maximum", "exclusive_maximum")


def check_fields(config: Any, prefix: str = "") -> None:
    """Raise UserError for the first field of dataclass ``config`` whose value breaks its
    annotation or its metadata bounds; ``prefix`` names the owner in the message (``lofit``)."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        name = f"{prefix}.{item.name}" if prefix else item.name
        annotation = hints.get(item.name, Any)
        if not matches(value, annotation):
            raise UserError(f"{name} must be {describe(annotation)}, got {value!r}")
        problem = bound_problem(value, item.metadata)
        if problem:
            raise UserError(f"{name} {problem}, got {value!r}")


def matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (parsed JSON or a Python value) fits ``annotation``."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list | tuple) and all(matches(item, item_type) for item in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def describe(annotation: Any) -> str:
    """``annotation`` in words, for error messages (``float | None`` -> "a number (or null)")."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(annotation) if option is not type(None)]
        nullable = len(options) < len(typing.get_args(annotation))
        if set(options) == {int, float}:
            words = "a number"
        else:
            words = " or ".join(describe(option) for option in options)
        return f"{words} (or null)" if nullable else words
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return f"a JSON list of {_plural(describe(item_type))}"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
            dict: "a JSON object"}.get(annotation, str(annotation))


def bound_problem(value: Any, metadata: typing.Mapping[str, Any]) -> str | None:
    """What is wrong with ``value`` under the metadata's bounds, or None (None values pass)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        if len(value) < metadata.get("min_items", 0):
            return f"needs at least {metadata['min_items']} item(s)"
        for entry in value:
            problem = bound_problem(entry, {key: metadata[key] for key in (*BOUNDS, "choices", "min_length") if key in metadata})
            if problem:
                return f"(each item) {problem}"
        return None
    if "choices" in metadata and value not in metadata["choices"]:
        return f"must be one of {', '.join(repr(choice) for choice in metadata['choices'])}"
    if isinstance(value, str) and metadata.get("min_length") and len(value) < metadata["min_length"]:
        return "must not be empty"
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    limits = [
        ("minimum", lambda bound: value >= bound, ">="),
        ("exclusive_minimum", lambda bound: value > bound, ">"),
        ("maximum", lambda bound: value <= bound, "<="),
        ("exclusive_maximum", lambda bound: value < bound, "<"),
    ]
    if any(key in metadata and not holds(metadata[key]) for key, holds, _ in limits):
        wanted = " and ".join(f"{sign} {metadata[key]:g}" for key, _, sign in limits if key in metadata)
        return f"must be {wanted}"
    return None


def _plural(words: str) -> str:
    return {"a number": "numbers", "a whole number": "whole numbers", "a string": "strings",
            "true or false": "true/false values"}.get(words, words)

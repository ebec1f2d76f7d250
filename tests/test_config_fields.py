"""One check of every config field from its annotation and metadata bounds."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lofit_bench.config_fields import check_fields, describe
from lofit_bench.errors import UserError
from lofit_bench.method import Method, MethodConfig


@dataclass
class Example(MethodConfig):
    rate: float | None = field(default=None, metadata={"exclusive_minimum": 0})
    fraction: float = field(default=0.5, metadata={"minimum": 0, "exclusive_maximum": 1})
    rank: int = field(default=2, metadata={"minimum": 1})
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    layers: list[int] | None = field(default=None, metadata={"min_items": 1, "minimum": 0})
    names: list[str] = field(default_factory=lambda: ["x"], metadata={"min_length": 1})
    flag: bool = False


class ExampleMethod(Method):
    name = "example"
    config_class = Example

    def prepare(self, lm):  # pragma: no cover - never run
        pass

    def trainable_parameters(self) -> int:  # pragma: no cover
        return 0

    def remove(self) -> None:  # pragma: no cover
        pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 0}, r"example\.rate must be > 0, got 0"),
        ({"rate": "fast"}, r"example\.rate must be a number \(or null\), got 'fast'"),
        ({"fraction": 1.0}, r"example\.fraction must be >= 0 and < 1, got 1.0"),
        ({"rank": 1.5}, r"example\.rank must be a whole number, got 1.5"),
        ({"rank": True}, r"example\.rank must be a whole number, got True"),
        ({"rank": 0}, r"example\.rank must be >= 1"),
        ({"mode": "c"}, r"example\.mode must be one of 'a', 'b'"),
        ({"layers": []}, r"example\.layers needs at least 1 item"),
        ({"layers": [0, -2]}, r"example\.layers \(each item\) must be >= 0"),
        ({"layers": [0, "1"]}, r"example\.layers must be a JSON list of whole numbers \(or null\)"),
        ({"names": [""]}, r"example\.names \(each item\) must not be empty"),
        ({"flag": "yes"}, r"example\.flag must be true or false"),
    ],
)
def test_a_field_that_breaks_its_annotation_or_bounds_is_named(options, message):
    with pytest.raises(UserError, match=message):
        ExampleMethod.from_options(options)


def test_good_values_pass_and_whole_numbers_are_valid_floats():
    config = Example.from_dict({"rate": 1, "fraction": 0, "layers": [0, 3], "mode": "b"})
    assert config.rate == 1 and config.layers == [0, 3]
    check_fields(config, "example")


def test_annotations_read_as_words():
    assert describe(int | float) == "a number"
    assert describe(list[float] | None) == "a JSON list of numbers (or null)"

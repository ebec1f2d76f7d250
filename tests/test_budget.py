"""Budgets: the presets, the dict round trip that records and `--budget-set` rely on, and errors."""

from __future__ import annotations

import dataclasses

import pytest

from lofit_bench.budget import BUDGETS, Budget, get_budget
from lofit_bench.errors import UserError


def test_paper_preset_is_the_papers_protocol() -> None:
    paper = get_budget("paper")
    assert paper.name == "paper"
    assert (paper.epochs, paper.batch_size) == (5, 8)
    assert paper.train_examples is paper.dev_examples is paper.eval_examples is None  # full splits
    assert paper.lr_scheduler == "linear" and paper.warmup_ratio == 0.0
    assert paper.seeds == (42, 43)


def test_smoke_preset_is_small() -> None:
    smoke = get_budget("smoke")
    assert (smoke.train_examples, smoke.dev_examples, smoke.eval_examples) == (16, 8, 12)
    assert (smoke.epochs, smoke.batch_size, smoke.max_length, smoke.trials) == (1, 8, 768, 1)


@pytest.mark.parametrize("name", list(BUDGETS))
def test_dict_round_trip(name: str) -> None:
    budget = get_budget(name)
    data = budget.to_dict()
    assert data["seeds"] == list(budget.seeds)  # JSON-friendly
    assert set(data) == {item.name for item in dataclasses.fields(Budget)}
    assert Budget.from_dict(data) == budget


def test_from_dict_applies_overrides() -> None:
    budget = Budget.from_dict(
        get_budget("smoke").to_dict() | {"eval_examples": 50, "seeds": [1, 2]}
    )
    assert budget.eval_examples == 50
    assert budget.seeds == (1, 2)
    assert Budget.from_dict({"name": "one-seed", "seeds": 7}).seeds == (7,)


def test_also_eval_takes_a_list_or_a_comma_separated_string_and_side_effects_can_be_off() -> None:
    assert Budget.from_dict({"name": "b", "also_eval": "truthfulqa, lm_eval:hellaswag"}).also_eval == (
        "truthfulqa", "lm_eval:hellaswag"
    )
    assert Budget(name="b", also_eval=["clutrr"]).also_eval == ("clutrr",)
    assert Budget.from_dict(get_budget("demo").to_dict() | {"also_eval": ["mquake"]}).to_dict()["also_eval"] == ["mquake"]
    assert Budget(name="b", side_effect_texts=0).side_effect_texts == 0
    assert (get_budget("paper").side_effect_texts, get_budget("smoke").side_effect_texts) == (16, 4)


def test_unknown_field_is_a_user_error_listing_the_known() -> None:
    with pytest.raises(UserError, match="unknown budget fields: epoch, lr\\. Known: .*epochs"):
        Budget.from_dict({"name": "typo", "epoch": 3, "lr": 0.1})


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("batch_size", -1),
        ("eval_batch_size", 0),
        ("max_length", 0),
        ("trials", 0),
        ("train_examples", 0),
        ("eval_examples", -5),
        ("epochs", "five"),  # what `--budget-set epochs=five` passes on
        ("epochs", 2.5),
        ("train_examples", True),
        ("warmup_ratio", "x"),
        ("warmup_ratio", 1.5),
        ("seeds", []),
        ("seeds", ["a"]),
        ("side_effect_texts", -1),
        ("side_effect_texts", "many"),
        ("also_eval", [3]),
        ("also_eval", {"truthfulqa": 1}),
    ],
)
def test_bad_values_are_user_errors(field: str, value: object) -> None:
    with pytest.raises(UserError, match=f"budget 'custom': {field}"):
        Budget.from_dict({"name": "custom", field: value})


def test_unknown_budget_suggests_the_closest() -> None:
    with pytest.raises(UserError) as caught:
        get_budget("smok")
    message = str(caught.value)
    assert "Did you mean 'smoke'?" in message
    assert "paper" in message and "smoke" in message

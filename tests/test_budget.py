"""Budgets: the presets, the dict round trip that records and `--budget-set` rely on, and errors."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest

from lofit_bench.budget import BUDGETS, Budget, get_budget
from lofit_bench.errors import UserError


def _readme_budget_table() -> tuple[list[str], dict[str, list[str]]]:
    """The README's Budgets table: the preset names of its header, and field -> their cells."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = readme[readme.index("## Budgets"):].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("| field |"))
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in itertools.takewhile(lambda line: line.startswith("|"), lines[start:])]
    names = [name.strip("`") for name in rows[0][1:]]
    return names, {row[0].split(" (")[0]: row[1:] for row in rows[2:]}


def _as_documented(budget: Budget, field: str) -> str:
    """A budget field as the README's table writes it."""
    if field == "lr_scheduler / warmup_ratio":
        return f"{budget.lr_scheduler} / {budget.warmup_ratio:g}"
    value = getattr(budget, "trials" if field == "trials on dev" else field)
    if value is None or value == ():
        return "all" if field in ("train_examples", "dev_examples", "eval_examples") else "none"
    if isinstance(value, bool):
        return str(value).lower()
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def test_the_readme_budget_table_is_every_preset_field_by_field() -> None:
    names, table = _readme_budget_table()
    assert sorted(names) == sorted(BUDGETS)
    documented = {name for field in table for name in field.replace("trials on dev", "trials").split(" / ")}
    assert documented == {item.name for item in dataclasses.fields(Budget)} - {"name"}
    for field, cells in table.items():
        assert cells == [_as_documented(BUDGETS[name], field) for name in names], field


def test_the_smoke_budget_spends_what_its_fields_say(tmp_path) -> None:
    """A smoke run of a trained, tuned method trains, tunes, scores and measures exactly as many
    examples, steps and trials as the preset's fields give."""
    from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep

    budget = get_budget("smoke")
    specs = plan_sweep(["lora"], ["clutrr"], budget, ModelSettings("tiny-random-llama", device="cpu"))
    assert [spec.seed for spec in specs] == list(budget.seeds)
    [outcome] = run_sweep(specs, tmp_path, executor="inline", quiet=True)
    fold = json.loads(outcome.path.read_text())["folds"]["main"]
    training, tuning = fold["fit"]["training"], fold["tuning"]
    assert len(fold["train_ids"]) == training["examples"] == budget.train_examples
    assert fold["eval_size"] == len(fold["eval_ids"]) == budget.eval_examples
    assert training["epochs"] == budget.epochs
    assert training["steps"] == budget.epochs * math.ceil(budget.train_examples / budget.batch_size)
    assert (tuning["trials_run"], tuning["dev_examples"]) == (budget.trials, budget.dev_examples)
    assert fold["side_effects"]["texts"] == budget.side_effect_texts


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

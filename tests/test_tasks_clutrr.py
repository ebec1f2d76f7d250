"""CLUTRR task: lo-fit's 300-story sample, the double-space prompt, and exact match."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tasks_helpers import FakeScorer, assert_judges_each_prompts_own_generation, tiny_scorer

from lofit_bench.errors import UserError
from lofit_bench.tasks import clutrr
from lofit_bench.tasks.clutrr import Clutrr

CLEO_PROMPT = (
    'Read the following story about a family. "Cleo was talking about food with her sister Bridget. '
    "Bridget's grandfather Roy was n't feeling well after eating at the restaurant.\" Assume the relations "
    "described in the story are all true. Based on relations between the fictional characters in the story "
    "(assume the relations are all true) and your commonsense knowledge about family relationship, how is  Roy "
    "related to Cleo? Answer:  Roy is Cleo 's\n"
)


def story(story_id: str, target: str = "grandfather") -> dict[str, str]:
    return {
        "id": story_id,
        "clean_story": "[Roy] is [Cleo]'s grandfather.",
        "query": "('Cleo', 'Roy')",
        "target_text": target,
    }


def test_split_sizes_and_lo_fit_training_sample() -> None:
    task = Clutrr()
    assert task.data_summary() == {"main": {"train": 300, "dev": 450, "test": 450}}
    train = task.split_ids("main", "train")
    assert [identifier[:8] for identifier in train[:3]] == ["03bbe084", "1bffcc3e", "9f9ea60f"]
    assert len(set(train)) == 300
    assert not set(train) & (
        set(task.split_ids("main", "dev")) | set(task.split_ids("main", "test"))
    )


def test_sampling_leaves_the_global_rng_alone() -> None:
    state = random.getstate()
    Clutrr().split_ids("main", "train")
    assert random.getstate() == state


def test_prompt_keeps_lo_fit_double_space() -> None:
    examples = Clutrr().training_examples("main", "test")
    assert examples[0].prompt == CLEO_PROMPT
    assert examples[0].completion == "grandfather"
    assert all(
        example.prompt.endswith("'s\n") for example in Clutrr().training_examples("main", "train")
    )


@pytest.mark.parametrize(
    ("reply", "correct"),
    [
        ("grandfather. blah", True),
        (" Grandfather.", True),
        ("grandfather", True),
        ("grandfather\nQ: next question.", False),  # nothing cuts at a newline
        ("grandmother.", False),
    ],
)
def test_exact_match_from_planted_generations(reply: str, correct: bool) -> None:
    scorer = FakeScorer(reply=lambda prompt: reply)
    result = Clutrr().evaluate(scorer, "main", "test", limit=1)
    assert scorer.generate_calls == [[CLEO_PROMPT]]
    (entry,) = result.per_example
    assert entry["exact_match"] is correct and entry["gold"] == "grandfather"
    assert result.metrics == {"exact_match": float(correct), "relation_choice_accuracy": 0.0}  # the fake scores tie: 'aunt' wins


def test_accuracy_over_several_stories(tmp_path: Path) -> None:
    stories = [story("a"), story("b", "Uncle"), story("c", "aunt")]
    (tmp_path / "test.json").write_text(json.dumps(stories), encoding="utf-8")
    replies = iter(["grandfather.", "uncle.", "niece."])
    result = Clutrr(data_dir=tmp_path).evaluate(
        FakeScorer(reply=lambda prompt: next(replies)), "main", "test"
    )
    assert [entry["exact_match"] for entry in result.per_example] == [True, True, False]
    assert result.metrics["exact_match"] == pytest.approx(2 / 3)
    assert result.example_ids == ["a", "b", "c"]


def test_evaluate_on_the_tiny_model_judges_each_prompts_own_generation() -> None:
    task = Clutrr()
    result = task.evaluate(tiny_scorer(), "main", "test", limit=3)
    assert set(result.metrics) == {"exact_match", "relation_choice_accuracy"}
    assert_judges_each_prompts_own_generation(task, result, limit=3)
    assert result.example_ids == task.split_ids("main", "test")[:3]
    assert {"id", "prediction", "gold", "exact_match"} <= set(result.per_example[0])


def test_missing_or_malformed_files_raise_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="val.json is missing"):
        Clutrr(data_dir=tmp_path).split_ids("main", "dev")
    (tmp_path / "val.json").write_text("[{", encoding="utf-8")
    with pytest.raises(UserError, match="unreadable"):
        Clutrr(data_dir=tmp_path).split_ids("main", "dev")
    (tmp_path / "val.json").write_text(
        json.dumps([{"id": "x", "query": "('A', 'B')"}]), encoding="utf-8"
    )
    with pytest.raises(UserError, match="malformed"):
        Clutrr(data_dir=tmp_path).split_ids("main", "dev")
    (tmp_path / "train.json").write_text(json.dumps([story("a")]), encoding="utf-8")
    with pytest.raises(UserError, match="fewer than"):
        Clutrr(data_dir=tmp_path).split_ids("main", "train")
    with pytest.raises(UserError):
        Clutrr().split_ids("fold_0", "test")


def test_registers_itself() -> None:
    registered: list[type] = []
    clutrr.register_tasks(register=registered.append)
    assert registered == [Clutrr]
    assert (Clutrr.objective, Clutrr.evaluation, Clutrr.primary_metric) == (
        "sft",
        "generation",
        "exact_match",
    )


def test_relation_choice_accuracy_takes_the_most_likely_of_the_closed_set(tmp_path: Path) -> None:
    (tmp_path / "test.json").write_text(json.dumps([story("a", "grandfather"), story("b", "aunt")]), encoding="utf-8")
    planted = {"grandfather": -1.0, "aunt": -3.0}
    scorer = FakeScorer(score=lambda context, relation: planted.get(relation, -2.0), reply=lambda prompt: "x")
    result = Clutrr(data_dir=tmp_path).evaluate(scorer, "main", "test")
    assert [entry["relation_choice"] for entry in result.per_example] == ["grandfather", "grandfather"]
    assert result.metrics == {"exact_match": 0.0, "relation_choice_accuracy": 0.5}
    prompt = Clutrr(data_dir=tmp_path).stories("main", "test")[0].prompt
    assert scorer.loglikelihood_calls[0][:2] == [(prompt, "aunt"), (prompt, "brother")]
    assert len(scorer.loglikelihood_calls[0]) == 2 * len(clutrr.RELATIONS)


def test_the_closed_set_is_every_relation_of_every_split() -> None:
    task = Clutrr()
    for split in ("train", "dev", "test"):
        assert {item.target_text.lower() for item in task.stories("main", split)} <= set(clutrr.RELATIONS)
    assert len(clutrr.RELATIONS) == 18

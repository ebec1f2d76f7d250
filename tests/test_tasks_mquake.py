"""MQuAKE task: splits, the edited-fact prompt, and strict versus lenient exact match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tasks_helpers import FakeScorer, assert_judges_each_prompts_own_generation, tiny_scorer

from lofit_bench.errors import UserError
from lofit_bench.task import SFTExample
from lofit_bench.tasks import mquake
from lofit_bench.tasks.mquake import Mquake

REFERENCE_OUTPUTS = (
    Path(__file__).parent
    / "fixtures"
    / "mquake_reference_outputs"
    / "gemma-7b-base_mquake_lofit_seed42"
    / "outputs.json"
)


def case(
    case_id: int, new_answer: str = "Canberra", aliases: tuple[str, ...] = ("Canberra City",)
) -> dict:
    return {
        "case_id": case_id,
        "requested_rewrite": [
            {
                "prompt": "The capital of {} is",
                "subject": "Sweden",
                "target_new": {"str": "Canberra"},
                "target_true": {"str": "Stockholm"},
            }
        ],
        "questions": [f"Question {case_id}?", "ignored paraphrase", "ignored paraphrase"],
        "new_answer": new_answer,
        "new_answer_alias": list(aliases),
        "answer": "Stockholm",
        "single_hops": [{"question": "What is the capital of Sweden?", "answer": "Stockholm"}],
    }


def write_cases(folder: Path, cases: list[dict], name: str = "test.jsonl") -> None:
    (folder / name).write_text("".join(json.dumps(item) + "\n" for item in cases), encoding="utf-8")


def test_split_sizes() -> None:
    task = Mquake()
    assert task.data_summary() == {"main": {"train": 134, "dev": 95, "test": 864}}
    assert len(set(task.split_ids("main", "test"))) == 864


def test_prompt_and_completion_are_literal() -> None:
    (first,) = Mquake().training_examples("main", "train")[:1]
    assert first == SFTExample(
        id="case-18",
        prompt=(
            "Q: Imagine that The name of the current head of the Nigeria government is Karl Döhler. "
            "Who was the head of government of the country where Ahmadu Bello was a citizen? A:"
        ),
        completion="Karl Döhler",
    )


def test_test_prompts_equal_the_authors_prompts() -> None:
    reference = json.loads(REFERENCE_OUTPUTS.read_text(encoding="utf-8"))
    assert [example.prompt for example in Mquake().training_examples("main", "test")] == [
        record["prompt"] for record in reference
    ]


@pytest.mark.parametrize(
    ("reply", "strict", "lenient"),
    [
        ("Canberra\nQ: next", True, True),
        (" canberra", False, True),  # the space after "A:" is not stripped by the paper's parser
        (" Canberra City.", False, True),
        ("canberra city", True, True),
        (" Sydney", False, False),
    ],
)
def test_strict_and_lenient_exact_match(
    tmp_path: Path, reply: str, strict: bool, lenient: bool
) -> None:
    write_cases(tmp_path, [case(1)])
    scorer = FakeScorer(reply=lambda prompt: reply)
    result = Mquake(data_dir=tmp_path).evaluate(scorer, "main", "test")
    assert scorer.generate_calls == [
        ["Q: Imagine that The capital of Sweden is Canberra. Question 1? A:"]
    ]
    (entry,) = result.per_example
    assert (entry["exact_match"], entry["exact_match_lenient"]) == (strict, lenient)
    assert result.metrics == {
        "exact_match": float(strict), "exact_match_lenient": float(lenient), "efficacy": 0.0, "new_answer_log_prob": 0.0
    }


def test_limit_and_accuracy(tmp_path: Path) -> None:
    write_cases(tmp_path, [case(1), case(2, "Paris", ()), case(3, "Oslo", ())])
    replies = iter(["Canberra", " paris"])
    result = Mquake(data_dir=tmp_path).evaluate(
        FakeScorer(reply=lambda prompt: next(replies)), "main", "test", limit=2
    )
    assert result.example_ids == ["case-1", "case-2"]
    assert {name: result.metrics[name] for name in Mquake.metrics} == {"exact_match": 0.5, "exact_match_lenient": 1.0}


def test_evaluate_on_the_tiny_model_judges_each_prompts_own_generation() -> None:
    task = Mquake()
    result = task.evaluate(tiny_scorer(), "main", "test", limit=3)
    assert set(result.metrics) == {"exact_match", "exact_match_lenient", "efficacy", "new_answer_log_prob"}
    assert_judges_each_prompts_own_generation(task, result, limit=3)
    assert result.example_ids == task.split_ids("main", "test")[:3]


def test_efficacy_and_the_new_answer_log_prob_are_read_from_planted_log_likelihoods(tmp_path: Path) -> None:
    write_cases(tmp_path, [case(1), case(2, "Paris", ())])
    planted = {"Canberra": -2.0, "Paris": -9.0, "Stockholm": -5.0}
    scorer = FakeScorer(score=lambda context, continuation: planted[continuation], reply=lambda prompt: " no")
    result = Mquake(data_dir=tmp_path).evaluate(scorer, "main", "test")
    prompt = "Q: Imagine that The capital of Sweden is Canberra. Question 1? A:"
    assert scorer.loglikelihood_calls[0][:2] == [(prompt, "Canberra"), (prompt, "Stockholm")]  # no space: as SFT trains it
    assert [(entry["efficacy"], entry["new_answer_log_prob"]) for entry in result.per_example] == [(True, -2.0), (False, -9.0)]
    assert result.metrics["efficacy"] == 0.5 and result.metrics["new_answer_log_prob"] == -5.5


def test_single_hops_are_read_with_their_original_answers() -> None:
    first = Mquake().cases("main", "test")[0]
    assert first.answer == "United States of America"
    assert first.single_hops == (
        ("Who is Emily Blunt married to?", "John Krasinski"),
        ("What is the country of citizenship of John Krasinski?", "United States of America"),
    )


def test_missing_or_malformed_files_raise_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="train.jsonl is missing"):
        Mquake(data_dir=tmp_path).split_ids("main", "train")
    (tmp_path / "train.jsonl").write_text('{"case_id": 1}\n', encoding="utf-8")
    with pytest.raises(UserError, match="malformed on line 1"):
        Mquake(data_dir=tmp_path).split_ids("main", "train")
    write_cases(tmp_path, [case(1)], "val.jsonl")
    (tmp_path / "val.jsonl").write_text(
        (tmp_path / "val.jsonl").read_text() + "not json\n", encoding="utf-8"
    )
    with pytest.raises(UserError, match="malformed on line 2"):
        Mquake(data_dir=tmp_path).split_ids("main", "dev")


def test_registers_itself() -> None:
    registered: list[type] = []
    mquake.register_tasks(register=registered.append)
    assert registered == [Mquake]
    assert (
        Mquake.metrics == ("exact_match", "exact_match_lenient")
        and Mquake.primary_metric == "exact_match"
    )

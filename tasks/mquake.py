"""MQuAKE-CF-3k single-edit cases as the LoFiT paper runs them: SFT, exact match over aliases.

Data: lo-fit's ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` (134 / 95 / 864 cases, 2- to
4-hop). Only ``questions[0]`` of each case is used, in every split; the two paraphrases are
ignored (lo-fit ``utils/dataloaders.py::MQUAKE``).

Prompt: ``Q: Imagine that <edited statement>. <question> A:`` where the edited statement is
the rewrite cloze filled with the subject, a space, and ``target_new.str``. The SFT
completion is ``new_answer`` with no space after ``A:`` (the trainer appends EOS).

Evaluation (``utils/evaluate.py::evaluate_mquake``): greedy, at most 16 new tokens, gold set =
``new_answer`` + ``new_answer_alias``. Two metrics:

- ``exact_match`` (primary, the paper's STRICT parse,
  :func:`~lofit_bench.metrics.parse_mquake_answer_strict`): the text after the last 'A:' up to
  the first newline, lowercased, NOT stripped, must equal a lowercased gold string. A model
  that answers "A: Sweden" (with the natural space) scores 0 — the authors' Gemma output scores
  3.1 % this way.
- ``exact_match_lenient`` (ours, reported beside it): the same span, whitespace-stripped,
  case-folded and without trailing punctuation, matched against equally normalised golds
  (35.9 % on that output).

Example ids are ``case-<case_id>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lofit_bench import hookimpl
from lofit_bench.errors import UserError
from lofit_bench.metrics import (
    matches_any_lenient,
    matches_any_strict,
    parse_mquake_answer_strict,
)
from lofit_bench.task import (
    EvalResult,
    SFTExample,
    Split,
    Task,
    check_limit,
    evaluate_by_generation,
)

PROMPT_TEMPLATE = "Q: Imagine that {edited_statement}. {question} A:"
SPLIT_FILES = {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl"}
MAX_NEW_TOKENS = 16


@dataclass(frozen=True)
class MquakeCase:
    """One single-edit case, reduced to what the protocol reads."""

    id: str
    edited_statement: str
    question: str
    new_answer: str
    new_answer_alias: tuple[str, ...]

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(
            edited_statement=self.edited_statement, question=self.question
        )

    @property
    def golds(self) -> list[str]:
        return [self.new_answer, *self.new_answer_alias]


def case_from_record(record: dict[str, Any]) -> MquakeCase:
    """Build a case from one JSON line (KeyError / TypeError / IndexError if malformed)."""
    rewrite = record["requested_rewrite"][0]
    edited_statement = (
        rewrite["prompt"].format(rewrite["subject"]) + " " + rewrite["target_new"]["str"]
    )
    return MquakeCase(
        id=f"case-{record['case_id']}",
        edited_statement=edited_statement,
        question=record["questions"][0],
        new_answer=record["new_answer"],
        new_answer_alias=tuple(record["new_answer_alias"]),
    )


def read_cases(path: Path) -> list[MquakeCase]:
    """Parse one split file, turning any problem with it into a one-line UserError."""
    fix = "reinstall lofit-bench or pass a data_dir holding lo-fit's MQuAKE train.jsonl, val.jsonl and test.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"MQuAKE data file {path} is missing; {fix}.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"MQuAKE data file {path} is unreadable ({error}); {fix}.") from None
    cases = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            cases.append(case_from_record(json.loads(line)))
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise UserError(
                f"MQuAKE data file {path} is malformed on line {number} ({type(error).__name__}: {error}); {fix}."
            ) from None
    if not cases:
        raise UserError(f"MQuAKE data file {path} holds no cases; {fix}.")
    return cases


class Mquake(Task):
    """MQuAKE single-edit cases, LoFiT protocol: SFT on the new answer, exact match on test."""

    name = "mquake"
    description = (
        "MQuAKE-CF-3k single-edit multi-hop questions; SFT, exact match (strict and lenient)"
    )
    objective = "sft"
    evaluation = "generation"
    metrics = ("exact_match", "exact_match_lenient")
    primary_metric = "exact_match"
    folds = ("main",)
    license = "MIT"

    def __init__(self, data_dir: Path | None = None) -> None:
        super().__init__(data_dir)
        self._cases_by_split: dict[str, list[MquakeCase]] = {}

    def cases(self, fold: str, split: Split) -> list[MquakeCase]:
        """The cases of one split in file order, read on first use and cached."""
        self.check_fold(fold)
        if split not in SPLIT_FILES:
            raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLIT_FILES)}")
        if split not in self._cases_by_split:
            self._cases_by_split[split] = read_cases(self.data_dir / SPLIT_FILES[split])
        return self._cases_by_split[split]

    def split_ids(self, fold: str, split: Split) -> list[str]:
        return [case.id for case in self.cases(fold, split)]

    def training_examples(self, fold: str, split: Split = "train") -> list[SFTExample]:
        return [
            SFTExample(id=case.id, prompt=case.prompt, completion=case.new_answer)
            for case in self.cases(fold, split)
        ]

    def evaluate(
        self, scorer: Any, fold: str, split: Split = "test", limit: int | None = None
    ) -> EvalResult:
        check_limit(limit)

        def judge(case: MquakeCase, generation: Any) -> dict[str, Any]:
            prediction = parse_mquake_answer_strict(generation.full_text)
            return {
                "prediction": prediction,
                "gold": case.golds,
                "exact_match": matches_any_strict(prediction, case.golds),
                "exact_match_lenient": matches_any_lenient(prediction, case.golds),
            }

        return evaluate_by_generation(
            scorer, self.cases(fold, split)[:limit], item_id=lambda case: case.id, prompt=lambda case: case.prompt,
            judge=judge, metrics=self.metrics, max_new_tokens=MAX_NEW_TOKENS, description=f"mquake {split}",
        )


@hookimpl
def register_tasks(register):
    register(Mquake)

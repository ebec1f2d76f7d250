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

Two teacher-forced measures beside them (``secondary_metrics``, ours; they move for a method
that never produces the answer format, so the tuner can tell its trials apart):

- ``efficacy``: the new answer is more likely than the original one after the prompt (the
  summed log-probs of ``new_answer`` and ``answer``, each straight after ``A:`` as the SFT
  completion is): the knowledge-editing standard's efficacy score.
- ``new_answer_log_prob``: the summed log-probability (nats) of ``new_answer`` there.

Each case's ``single_hops`` (question and original answer of every hop) are kept for the
locality measure (:mod:`lofit_bench.engine.locality`).

Example ids are ``case-<case_id>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
from lofit_bench.task import GenerationTask, Split

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
    #: The original (pre-edit) answer of the multi-hop question.
    answer: str = ""
    #: (question, original answer) of each single hop of the chain.
    single_hops: tuple[tuple[str, str], ...] = ()

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
        answer=str(record.get("answer", "")),
        single_hops=tuple((str(hop["question"]), str(hop["answer"])) for hop in record.get("single_hops", [])),
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


class Mquake(GenerationTask):
    """MQuAKE single-edit cases, LoFiT protocol: SFT on the new answer, exact match on test."""

    name = "mquake"
    description = (
        "MQuAKE-CF-3k single-edit multi-hop questions; SFT, exact match (strict and lenient)"
    )
    metrics = ("exact_match", "exact_match_lenient")
    secondary_metrics = ("efficacy", "new_answer_log_prob")
    primary_metric = "exact_match"
    folds = ("main",)
    license = "MIT"
    max_new_tokens = MAX_NEW_TOKENS

    def load_split(self, split: Split) -> list[MquakeCase]:
        return read_cases(self.data_dir / SPLIT_FILES[split])

    def cases(self, fold: str, split: Split) -> list[MquakeCase]:
        """The cases of one split in file order."""
        return self.items(fold, split)

    def completion(self, case: MquakeCase) -> str:
        return case.new_answer

    def judge(self, case: MquakeCase, generation: Any) -> dict[str, Any]:
        prediction = parse_mquake_answer_strict(generation.full_text)
        return {
            "prediction": prediction,
            "gold": case.golds,
            "exact_match": matches_any_strict(prediction, case.golds),
            "exact_match_lenient": matches_any_lenient(prediction, case.golds),
        }

    def locality_facts(self, fold: str, limit: int | None = None) -> list[tuple[str, str]]:
        """(id, ``Q: <question> A:``) of every distinct single hop of the first ``limit`` test
        cases: facts no fit trains on (:mod:`lofit_bench.engine.locality`)."""
        seen: dict[str, str] = {}
        for case in self.cases(fold, "test")[:limit]:
            for number, (question, _) in enumerate(case.single_hops):
                seen.setdefault(question, f"{case.id}-hop-{number}")
        return [(identifier, f"Q: {question} A:") for question, identifier in seen.items()]

    def teacher_forced_requests(self, case: MquakeCase) -> list[tuple[str, str]]:
        """The new answer, then the original one, each right after the prompt (as SFT trains it)."""
        return [(case.prompt, case.new_answer), (case.prompt, case.answer or case.new_answer)]

    def judge_teacher_forced(self, case: MquakeCase, log_likelihoods: Sequence[float]) -> dict[str, Any]:
        new, original = log_likelihoods
        return {"efficacy": bool(case.answer) and new > original, "new_answer_log_prob": new}


@hookimpl
def register_tasks(register):
    register(Mquake)

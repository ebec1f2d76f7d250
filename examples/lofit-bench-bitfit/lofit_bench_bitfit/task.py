"""local-qa: a tiny short-answer QA task read from local JSONL files, to show a task plugin.

Data: 50 simple factual questions written for this example (capitals, small arithmetic,
everyday facts), shipped as package data in ``data/local-qa/``: ``train.jsonl`` (30),
``dev.jsonl`` (8), ``test.jsonl`` (12). One JSON object per line:
``{"id": "train-000", "question": "...", "answer": "..."}``. Pass ``data_dir`` to the task
to read the same three files from elsewhere (your own questions).

Prompt: ``Q: <question>\\nA:``; the SFT completion is ``" " + answer`` (the trainer appends
EOS). Every shipped answer is at most 7 characters, so it fits in the 8 new tokens even
with a byte-level tokenizer.

Evaluation: greedy decoding of at most 8 new tokens, then exact match after
:func:`normalize_answer` (applied to prediction and gold alike): strip surrounding
whitespace, keep the text before the first newline, strip again, lowercase.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lofit_bench.errors import UserError
from lofit_bench.task import GenerationTask, Split

PROMPT_TEMPLATE = "Q: {question}\nA:"
SPLIT_FILES = {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"}
MAX_NEW_TOKENS = 8
DATA_ROOT = Path(__file__).resolve().parent / "data"


def normalize_answer(text: str) -> str:
    """Strip, cut at the first newline, strip again, lowercase: ``" Paris\\nQ: ..."`` -> ``"paris"``."""
    return text.strip().split("\n", 1)[0].strip().lower()


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(question=self.question)


def read_questions(path: Path) -> list[Question]:
    """Parse one split file, turning any problem with it into a one-line UserError."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UserError(
            f"local-qa data file {path} is unreadable ({error}); check data_dir"
        ) from None
    questions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            questions.append(
                Question(str(record["id"]), str(record["question"]), str(record["answer"]))
            )
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"local-qa data file {path} is malformed on line {number} ({type(error).__name__}: {error})"
            ) from None
    if not questions:
        raise UserError(f"local-qa data file {path} holds no questions")
    return questions


class LocalQA(GenerationTask):
    """Short factual questions from local JSONL files; SFT, greedy exact match."""

    name = "local-qa"
    description = "50 simple factual questions shipped with lofit-bench-bitfit; SFT, exact match"
    metrics = ("exact_match",)
    primary_metric = "exact_match"
    folds = ("main",)
    license = "MIT (written for the lofit-bench-bitfit example)"
    max_new_tokens = MAX_NEW_TOKENS

    @classmethod
    def default_data_dir(cls) -> Path:
        return DATA_ROOT / cls.name

    def load_split(self, split: Split) -> list[Question]:
        return read_questions(self.data_dir / SPLIT_FILES[split])

    def questions(self, fold: str, split: Split) -> list[Question]:
        """The questions of one split in file order."""
        return self.items(fold, split)

    def completion(self, question: Question) -> str:
        return " " + question.answer

    def judge(self, question: Question, generation: Any) -> dict[str, Any]:
        prediction = normalize_answer(generation.new_text)
        return {
            "prediction": prediction,
            "gold": question.answer,
            "exact_match": prediction == normalize_answer(question.answer),
        }

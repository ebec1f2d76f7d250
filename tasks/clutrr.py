"""CLUTRR 2-hop kinship reasoning as the LoFiT paper runs it: SFT, exact match after greedy decoding.

Data: lo-fit's ``train.json`` (a pool of 3,151 stories), ``val.json`` (450) and ``test.json``
(450). Training uses ``random.sample(pool, 300)`` after ``random.seed(42)``, as lo-fit's
``--train_size 300`` does; a local ``random.Random(42)`` draws the same sample (first ids
03bbe084…, 1bffcc3e…, 9f9ea60f…) without touching the global RNG.

Prompt (lo-fit ``utils/dataloaders.py::CLUTRR``): brackets removed from ``clean_story``; the
query ``('A', 'B')`` is split on ',' after dropping parentheses and quotes, so B keeps a
leading space and the prompt reads "how is  Roy related to Cleo? Answer:  Roy is Cleo 's"
(two spaces, kept on purpose: it changes tokenisation). Training and evaluation prompts end
with ``'s\\n``; the SFT completion is the gold relation (the trainer appends EOS).

Evaluation (``utils/evaluate.py::evaluate_clutrr``): greedy, at most 16 new tokens; the
prediction is read from the whole decoded sequence by
:func:`~lofit_bench.metrics.parse_clutrr_answer` and must equal the lowercased gold relation.
Beside it (``secondary_metrics``, ours): ``relation_choice_accuracy``, the gold relation has
the highest summed log-probability after the prompt among the closed set of
:data:`RELATIONS` (the 18 relation words of the data; each scored as the SFT completion is,
straight after ``'s\\n``). It moves for a method that never produces the answer format.

Example ids are the dataset's story uuids.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lofit_bench import hookimpl
from lofit_bench.errors import UserError
from lofit_bench.metrics import parse_clutrr_answer
from lofit_bench.task import GenerationTask, Split

PROMPT_TEMPLATE = (
    'Read the following story about a family. "{story}" Assume the relations described in the '
    "story are all true. Based on relations between the fictional characters in the story "
    "(assume the relations are all true) and your commonsense knowledge about family "
    "relationship, how is {second} related to {first}? Answer: {second} is {first} 's"
)
SPLIT_FILES = {"train": "train.json", "dev": "val.json", "test": "test.json"}
TRAIN_SIZE = 300
TRAIN_SEED = 42
#: Every relation word of the CLUTRR 2-hop data (train pool, dev and test use the same 18).
RELATIONS = (
    "aunt", "brother", "daughter", "daughter-in-law", "father", "father-in-law", "granddaughter",
    "grandfather", "grandmother", "grandson", "mother", "mother-in-law", "nephew", "niece", "sister",
    "son", "son-in-law", "uncle",
)
MAX_NEW_TOKENS = 16


def parse_query(query: str) -> tuple[str, str]:
    """(A, B) from "('A', 'B')" as lo-fit parses it; B keeps the space that followed the comma."""
    persons = query[1:-1].replace("'", "").split(",")
    return persons[0], persons[1]


@dataclass(frozen=True)
class ClutrrStory:
    """One CLUTRR record: the fields the protocol reads. B is asked about relative to A."""

    id: str
    clean_story: str
    first: str
    second: str
    target_text: str

    @property
    def prompt(self) -> str:
        """The template plus the newline both training and evaluation put after it."""
        story = self.clean_story.replace("[", "").replace("]", "")
        return PROMPT_TEMPLATE.format(story=story, first=self.first, second=self.second) + "\n"


def read_stories(path: Path) -> list[ClutrrStory]:
    """Parse one split file, turning any problem with it into a one-line UserError."""
    fix = "reinstall lofit-bench or pass a data_dir holding lo-fit's CLUTRR train.json, val.json and test.json"
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"CLUTRR data file {path} is missing; {fix}.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"CLUTRR data file {path} is unreadable ({error}); {fix}.") from None
    try:
        if not isinstance(records, list) or not records:
            raise ValueError("expected a non-empty JSON list")
        stories = []
        for record in records:
            first, second = parse_query(str(record["query"]))
            stories.append(
                ClutrrStory(
                    id=str(record["id"]),
                    clean_story=str(record["clean_story"]),
                    first=first,
                    second=second,
                    target_text=str(record["target_text"]),
                )
            )
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise UserError(
            f"CLUTRR data file {path} is malformed ({type(error).__name__}: {error}); {fix}."
        ) from None
    return stories


def sample_training_stories(pool: list[ClutrrStory]) -> list[ClutrrStory]:
    """lo-fit's ``random.seed(42); random.sample(pool, 300)``, with a local generator."""
    if len(pool) < TRAIN_SIZE:
        raise UserError(
            f"the CLUTRR training pool holds {len(pool)} stories, fewer than the {TRAIN_SIZE} the protocol samples"
        )
    return random.Random(TRAIN_SEED).sample(pool, TRAIN_SIZE)


class Clutrr(GenerationTask):
    """CLUTRR 2-hop, LoFiT protocol: SFT on 300 sampled stories, exact match on 450 test stories."""

    name = "clutrr"
    description = "CLUTRR 2-hop kinship (task_1.2); SFT, exact match of the generated relation"
    metrics = ("exact_match",)
    secondary_metrics = ("relation_choice_accuracy",)
    primary_metric = "exact_match"
    folds = ("main",)
    license = "CC-BY-NC-4.0 (non-commercial)"
    max_new_tokens = MAX_NEW_TOKENS

    def load_split(self, split: Split) -> list[ClutrrStory]:
        stories = read_stories(self.data_dir / SPLIT_FILES[split])
        return sample_training_stories(stories) if split == "train" else stories

    def stories(self, fold: str, split: Split) -> list[ClutrrStory]:
        """The stories of one split in protocol order (train: sample order)."""
        return self.items(fold, split)

    def completion(self, story: ClutrrStory) -> str:
        return story.target_text

    def judge(self, story: ClutrrStory, generation: Any) -> dict[str, Any]:
        prediction = parse_clutrr_answer(generation.full_text)
        gold = story.target_text.lower()
        return {"prediction": prediction, "gold": gold, "exact_match": prediction == gold}

    def teacher_forced_requests(self, story: ClutrrStory) -> list[tuple[str, str]]:
        return [(story.prompt, relation) for relation in RELATIONS]

    def judge_teacher_forced(self, story: ClutrrStory, log_likelihoods: Sequence[float]) -> dict[str, Any]:
        """The most likely relation wins (ties: the first in :data:`RELATIONS`, scored wrong unless gold)."""
        best = max(range(len(RELATIONS)), key=lambda index: (log_likelihoods[index], -index))
        return {"relation_choice": RELATIONS[best], "relation_choice_accuracy": RELATIONS[best] == story.target_text.lower()}


@hookimpl
def register_tasks(register):
    register(Clutrr)

"""What a third-party author ran into writing a plugin from the docs alone (issue 33)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import pytest

from lofit_bench.errors import UserError
from lofit_bench.methods.lora import LoRA
from lofit_bench.task import GenerationTask


def test_an_unknown_option_is_named_as_the_user_types_it():
    with pytest.raises(UserError) as error:
        LoRA.config_class.from_dict({"lr": 0.1})
    assert str(error.value).startswith("unknown option(s) for LoRAConfig: lora.lr. Known: lora.")
    assert "lora.learning_rate" in str(error.value)


class _Sums(GenerationTask):
    name = "sums"
    metrics: ClassVar[tuple[str, ...]] = ("exact_match",)

    def load_split(self, split):
        return [SimpleNamespace(id=f"{split}-{index}", prompt=f"{index} + 1 =") for index in range(3)]

    def completion(self, item):
        return "x"

    def judge(self, item, generation):
        return {"exact_match": 0.0}


def test_a_generation_task_with_one_fold_reads_each_split_once():
    task = _Sums()
    assert task.items("main", "train") is task.items("main", "train")
    assert [item.id for item in task.items("main", "dev")] == ["dev-0", "dev-1", "dev-2"]


def test_a_generation_task_with_several_folds_must_give_each_fold_its_items():
    class TwoFolds(_Sums):
        folds: ClassVar[tuple[str, ...]] = ("fold_0", "fold_1")

    with pytest.raises(UserError, match=r"declares 2 folds .* override items\(fold, split\)"):
        TwoFolds().items("fold_0", "train")

    class OwnItems(TwoFolds):
        def items(self, fold, split):
            return [SimpleNamespace(id=f"{fold}-{split}", prompt="p")]

    assert OwnItems().items("fold_1", "test")[0].id == "fold_1-test"

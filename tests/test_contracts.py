"""Every built-in method and task, and the example plugin, against lofit_bench.testing's contracts;
and each contract check failing on a method built to break it (a check that cannot fail proves nothing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lofit_bench.method import Capabilities, Method
from lofit_bench.methods.full_ft import FullFineTuning
from lofit_bench.methods.iti import ITI
from lofit_bench.methods.lofit import LoFiT
from lofit_bench.methods.lora import LoRA
from lofit_bench.methods.loreft import LoReFT
from lofit_bench.methods.red import RED
from lofit_bench.methods.repe import RepE
from lofit_bench.methods.zero_shot import ZeroShot
from lofit_bench.tasks.clutrr import Clutrr
from lofit_bench.tasks.mquake import Mquake
from lofit_bench.tasks.truthfulqa import TruthfulQA
from lofit_bench.testing import (
    MethodContract,
    TaskContract,
    check_capabilities,
    check_identity_at_start,
    check_removal,
    check_round_trip,
    check_test_split_untouched,
    check_trainable_count,
    live_method,
)

pytestmark = pytest.mark.usefixtures("builtin_host")


# -- the built-in methods ------------------------------------------------------------------------
class TestZeroShotContract(MethodContract):
    method_class = ZeroShot


class TestLoFiTContract(MethodContract):
    method_class = LoFiT


class TestITIContract(MethodContract):
    method_class = ITI


class TestRepEContract(MethodContract):
    method_class = RepE  # MQuAKE is a generation task: the contrast vector


class TestRepEReadingContract(MethodContract):
    method_class = RepE
    options = {"vector": "reading"}


class TestLoRAContract(MethodContract):
    method_class = LoRA


class TestFullFineTuningContract(MethodContract):
    method_class = FullFineTuning


class TestREDContract(MethodContract):
    method_class = RED


class TestLoReFTContract(MethodContract):
    method_class = LoReFT


# -- the built-in tasks --------------------------------------------------------------------------
class TestClutrrContract(TaskContract):
    task_class = Clutrr


class TestMquakeContract(TaskContract):
    task_class = Mquake


class TestTruthfulQAContract(TaskContract):
    task_class = TruthfulQA


# -- the checks fail where they should -------------------------------------------------------------
class NormShift(Method):
    """A correct toy method: a vector added to the final norm's output, set (not trained) by fit.
    The broken variants below each break one rule."""

    name = "norm-shift"
    initial_value = 0.0

    def prepare(self, lm) -> None:
        self.lm = lm
        self.site = lm.model.model.norm
        self.site.register_parameter("contract_shift", nn.Parameter(torch.full((lm.layout.hidden_size,), self.initial_value)))
        self.handle = self.site.register_forward_hook(lambda module, args, output: output + module.contract_shift)

    def fit(self, context) -> dict:
        context.dev_examples()  # dev may be read
        with torch.no_grad():
            self.site.contract_shift.fill_(0.5)
        return {}

    def trainable_parameters(self) -> int:
        return self.site.contract_shift.numel()

    def save(self, directory: Path) -> None:
        super().save(directory)
        torch.save(self.site.contract_shift.detach().clone(), directory / "shift.pt")

    def load(self, directory: Path) -> None:
        super().load(directory)
        with torch.no_grad():
            self.site.contract_shift.copy_(torch.load(directory / "shift.pt"))

    def remove(self) -> None:
        self.handle.remove()
        del self.site.contract_shift
        self.lm = None


class StartsShifted(NormShift):
    initial_value = 0.1


class LeavesItsParameter(NormShift):
    def remove(self) -> None:
        self.handle.remove()  # logits restored, but the parameter stays on the model
        self.lm = None


class LeavesAWeightTrainable(NormShift):
    def prepare(self, lm) -> None:
        super().prepare(lm)
        lm.model.lm_head.weight.requires_grad_(True)


class ForgetsOnLoad(NormShift):
    def load(self, directory: Path) -> None:
        Method.load(self, directory)


class CountsNothing(NormShift):
    def trainable_parameters(self) -> int:
        return 0


class AlsoChangesABaseWeight(NormShift):
    def fit(self, context) -> dict:
        with torch.no_grad():
            self.lm.model.lm_head.weight[0, 0] += 1.0
        return super().fit(context)


class PeeksAtTheTest(NormShift):
    def fit(self, context) -> dict:
        try:  # swallowing the guard's error does not hide the read
            context.task.training_examples(context.fold, "test")
        except Exception:
            pass
        return super().fit(context)


class EvaluatesOnTheDefaultSplit(NormShift):
    def fit(self, context) -> dict:
        context.task.evaluate(None, context.fold)  # split defaults to "test"
        return super().fit(context)


class WatchesTheWholeForwardUndeclared(NormShift):
    def fit(self, context) -> dict:
        self.watch = self.lm.model.register_forward_pre_hook(lambda module, args: None)
        return super().fit(context)

    def remove(self) -> None:
        self.watch.remove()
        super().remove()


class DeclaresItWatchesTheWholeForward(WatchesTheWholeForwardUndeclared):
    capabilities = Capabilities(watches_whole_forward=True)


class DeclaresPromptPositionsWithoutAListener(NormShift):
    capabilities = Capabilities(needs_prompt_positions=True)


def contract_for(method_class: type[Method]) -> type[MethodContract]:
    return type(f"Contract{method_class.__name__}", (MethodContract,), {"method_class": method_class})


def test_the_toy_method_passes_every_check(tmp_path):
    contract = contract_for(NormShift)
    life = live_method(contract, tmp_path)
    check_identity_at_start(life)
    check_removal(life)
    check_round_trip(contract, life)
    check_trainable_count(life)
    check_test_split_untouched(life)
    check_capabilities(life)
    assert life.changed == {"model.norm.contract_shift": 64}


def test_a_declared_whole_forward_hook_passes(tmp_path):
    check_capabilities(live_method(contract_for(DeclaresItWatchesTheWholeForward), tmp_path))


@pytest.mark.parametrize(
    ("method_class", "check", "message"),
    [
        (StartsShifted, check_identity_at_start, "prepare\\(\\) changed the logits"),
        (LeavesItsParameter, check_removal, "tensor 'model.norm.contract_shift' was added"),
        (LeavesAWeightTrainable, check_removal, "'lm_head.weight' has requires_grad=True"),
        (ForgetsOnLoad, "round_trip", "does not give the fitted model's logits"),
        (CountsNothing, check_trainable_count, "trainable_parameters\\(\\) is 0"),
        (AlsoChangesABaseWeight, check_trainable_count, "lm_head.weight \\(16576\\)"),
        (PeeksAtTheTest, check_test_split_untouched, "training_examples\\(split='test'\\)"),
        (EvaluatesOnTheDefaultSplit, check_test_split_untouched, "evaluate\\(split='test'\\)"),
        (WatchesTheWholeForwardUndeclared, check_capabilities, "1 hook\\(s\\) on the whole model's forward"),
        (DeclaresPromptPositionsWithoutAListener, check_capabilities, "carries no PromptListener"),
    ],
)
def test_each_check_catches_the_method_that_breaks_it(tmp_path, method_class, check, message):
    contract = contract_for(method_class)
    life = live_method(contract, tmp_path)
    with pytest.raises(AssertionError, match=message):
        check_round_trip(contract, life) if check == "round_trip" else check(life)


def test_identity_tolerance_is_a_bound_not_a_pass(tmp_path):
    life = live_method(contract_for(StartsShifted), tmp_path)
    with pytest.raises(AssertionError, match="beyond the stated tolerance"):
        check_identity_at_start(life, tolerance=1e-6)
    check_identity_at_start(life, tolerance=10.0)


class RepeatsATrainingCase(Mquake):
    def load_split(self, split):
        cases = super().load_split(split)
        return cases + super().load_split("train")[:1] if split == "test" else cases


class ShufflesItsIds(Mquake):
    def split_ids(self, fold, split):
        ids = super().split_ids(fold, split)
        return ids[id(self) % len(ids):] + ids[: id(self) % len(ids)]


class JudgesEverythingWrong(Mquake):
    def judge(self, case, generation):
        return {**super().judge(case, generation), "exact_match": False}


class JudgesEverythingRight(Mquake):
    def judge(self, case, generation):
        return {**super().judge(case, generation), "exact_match": True}


@pytest.mark.parametrize(
    ("task_class", "test_name", "message"),
    [
        (RepeatsATrainingCase, "test_splits_are_disjoint_and_ids_unique", "train and test share 1 ids"),
        (ShufflesItsIds, "test_ids_are_stable_across_instances", "ids differ"),
        (ShufflesItsIds, "test_training_examples_follow_the_split_ids", "ids differ"),
        (JudgesEverythingWrong, "test_a_model_that_knows_the_answers_scores_one", "the gold answer scores"),
        (JudgesEverythingRight, "test_a_model_that_answers_wrong_scores_zero", "a wrong answer scores"),
    ],
)
def test_each_task_check_catches_the_task_that_breaks_it(task_class, test_name, message):
    contract = type("BrokenTaskContract", (TaskContract,), {"task_class": task_class})()
    with pytest.raises(AssertionError, match=message):
        getattr(contract, test_name)()


# -- the example plugin: its own contract file, run from its source folder ---------------------------
EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "lofit-bench-bitfit"


def _example_contracts():
    """The example's tests/test_contract.py, imported with the example's source on the path."""
    sys.path.insert(0, str(EXAMPLE_DIR))
    try:
        spec = importlib.util.spec_from_file_location("bitfit_example_contract", EXAMPLE_DIR / "tests" / "test_contract.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLE_DIR))
    return module.TestBitFitContract, module.TestLocalQAContract


TestBitFitContract, TestLocalQAContract = _example_contracts()


# -- DPO: the same contract on TruthfulQA's preference pairs -------------------------------------
class TestLoRAOnTruthfulQAContract(MethodContract):
    method_class = LoRA
    task = "truthfulqa"


class TestLoReFTOnTruthfulQAContract(MethodContract):
    method_class = LoReFT
    task = "truthfulqa"

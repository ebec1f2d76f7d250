"""Contract tests every method and task plugin must pass, as pytest classes (peft's common tester).

A plugin author checks a method with one import and one subclass; pytest collects it::

    from lofit_bench.testing import MethodContract

    class TestBitFitContract(MethodContract):
        method_class = BitFit
        options = {"learning_rate": 1e-2}   # a small, fast config
        task = LocalQA                      # a Task subclass, or a registered name ("mquake")

The class runs one method life on lofit-bench's tiny random Llama under :data:`CONTRACT_BUDGET`
(load -> prepare -> fit -> save -> remove, once per class), then checks it:

1. ``prepare`` leaves the logits unchanged (bit for bit, or within ``identity_tolerance``),
   where the method claims it (``identity_at_start``; a method that starts from a random
   edit sets it to False and says why);
2. ``remove()`` after the fit restores the logits bit for bit and leaves no parameter,
   buffer, submodule, hook or patched ``forward`` behind, every parameter with
   ``requires_grad=False`` and every weight bit-identical;
3. save/load round-trips: a fresh model, ``prepare`` and ``load`` give the fitted logits;
4. ``trainable_parameters()`` equals the numel of the parameter tensors the fit created or
   changed (see :func:`changed_parameters`), plus ``stored_values()`` where the method keeps
   its stored values as parameters;
5. the fit never reads the test split: every method of the task that takes a ``split``
   refuses ``"test"`` during the fit (see :func:`guard_test_split`); dev may be read;
6. ``capabilities`` (:class:`~lofit_bench.method.Capabilities`) agrees with what the fit
   attached: ``needs_prompt_positions`` exactly when the model carries a PromptListener, and
   no cached-prefix shortcut allowed when a hook sits on the whole model's forward (the
   harness reads the declaration, never the hooks, so an undeclared one would be missed).

:class:`TaskContract` does the same for tasks: splits disjoint by id, ids stable across two
instances, training examples and ids agree, and ``evaluate`` on planted scorers gives the
known answer (a perfect model scores 1 on the primary metric, a wrong one 0).

Logits are read on one fixed probe text through ``evaluation_model()``, in eval mode, with
its prompt declared (:func:`~lofit_bench.prompt_positions.declare_prompt`), so methods that
edit prompt positions only (LoReFT) are probed as the Scorer would run them.

This module needs pytest (the ``testing`` extra: ``pip install 'lofit-bench[testing]'``);
nothing else in lofit-bench imports it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from lofit_bench.budget import Budget, get_budget
from lofit_bench.engine.model_integrity import ModelStructure
from lofit_bench.engine.models import load_model
from lofit_bench.engine.scoring import Generation
from lofit_bench.method import Capabilities, FitContext, Method
from lofit_bench.prompt_positions import PromptSpans, declare_prompt, find_prompt_listeners
from lofit_bench.task import SPLITS, PreferenceExample, SFTExample, Task

#: Two optimizer steps on four examples, two dev examples, one trial: seconds per method on
#: the tiny model. Two steps, not one: a LoRA ``A`` gets its first gradient only once ``B``
#: has left zero.
CONTRACT_BUDGET: Budget = get_budget("smoke").replace(
    name="contract", train_examples=4, dev_examples=2, eval_examples=2, epochs=1, batch_size=2
)
CONTRACT_MODEL = "tiny-random-llama"
PROBE_PROMPT = "Q: Imagine that Alice is Bob's sister. Who is Alice to Bob? A:"
PROBE_COMPLETION = " his sister"


# -- probing a model ---------------------------------------------------------------------------
def probe_logits(model: nn.Module, tokenizer: Any) -> torch.Tensor:
    """Logits of the probe text, in eval mode, its prompt declared to any prompt listener."""
    prompt_length = len(tokenizer(PROBE_PROMPT)["input_ids"])
    input_ids = tokenizer(PROBE_PROMPT + PROBE_COMPLETION, return_tensors="pt")["input_ids"]
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), declare_prompt(model, PromptSpans.right_padded([prompt_length])):
        return model(input_ids=input_ids.to(device)).logits.detach().cpu().clone()


def changed_parameters(before: dict[str, torch.Tensor], model: nn.Module) -> dict[str, int]:
    """Numel of each parameter of ``model`` that is not in ``before`` (created by the fit) or
    whose value differs from it (trained, or set by the fit), by name; shared tensors once.

    The count a method reports is checked against this: a trained tensor is counted once
    whole, however few of its values moved. A trained tensor held only by a hook's closure
    (which the Trainer never sees, so it never trains) and a base weight changed by mistake
    both leave the count unmatched. A tensor that trained but ended bit-identical would be
    missed, hence two optimizer steps in :data:`CONTRACT_BUDGET`.
    """
    changed = {}
    for name, parameter in model.named_parameters():
        old = before.get(name)
        if old is None or old.shape != parameter.shape or not torch.equal(old, parameter.detach().cpu()):
            changed[name] = parameter.numel()
    return changed


def parameter_values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().cpu().clone() for name, parameter in model.named_parameters()}


# -- the test-split guard ----------------------------------------------------------------------
class TestSplitRead(AssertionError):
    """Raised when something asks a guarded task for its test split."""

    __test__ = False  # not a pytest test class, whatever its name


def guard_test_split(task_class: type[Task]) -> Task:
    """An instance of ``task_class`` whose every method taking a ``split`` argument refuses
    ``"test"`` (the explicit value or the default, as ``evaluate``'s ``split="test"``) with
    :class:`TestSplitRead`. Each refused call is also listed in ``instance.test_split_reads``,
    so a method that swallows the error is caught too."""

    def guarded(function: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            if bound.arguments.get("split") == "test":
                self.test_split_reads.append(f"{function.__name__}(split='test')")
                raise TestSplitRead(f"the fit asked the task for its test split: {function.__name__}(split='test')")
            return function(self, *args, **kwargs)

        return wrapper

    overrides: dict[str, Any] = {}
    for name, function in inspect.getmembers(task_class, inspect.isfunction):
        if name.startswith("__") or "split" not in inspect.signature(function).parameters:
            continue
        if isinstance(inspect.getattr_static(task_class, name), staticmethod):
            continue
        overrides[name] = guarded(function)
    guarded_class = type(f"TestSplitGuarded{task_class.__name__}", (task_class,), overrides)
    instance = guarded_class()
    instance.test_split_reads = []
    return instance


# -- one method life ---------------------------------------------------------------------------
@dataclass
class MethodLife:
    """What the contract saw while one method went through prepare -> fit -> save -> remove."""

    base_logits: torch.Tensor
    prepared_logits: torch.Tensor
    #: Refused reads of the test split; when there are any, the fit did not finish and the
    #: fields below are None.
    test_split_reads: list[str] = field(default_factory=list)
    fitted_logits: torch.Tensor | None = None
    removed_logits: torch.Tensor | None = None
    base_structure: ModelStructure | None = None
    removed_structure: ModelStructure | None = None
    changed: dict[str, int] = field(default_factory=dict)
    trainable: int = 0
    stored: int = 0
    state_dir: Path | None = None
    fit_result: dict[str, Any] = field(default_factory=dict)
    #: After the fit: the method's declaration, the PromptListeners on the model, and the
    #: hooks the fit added on the whole model's forward (the model's and evaluation_model()'s own).
    capabilities: Capabilities = field(default_factory=Capabilities)
    listeners: list[str] = field(default_factory=list)
    whole_forward_hooks: int = 0

    def require_fit(self) -> None:
        if self.test_split_reads:
            pytest.fail("the fit did not finish: it read the test split (see test_fit_never_reads_the_test_split)")


def resolve_task_class(task: str | type[Task]) -> type[Task]:
    if isinstance(task, str):
        from lofit_bench import plugins

        return plugins.get_host().tasks.get(task)
    return task


def live_method(contract: type[MethodContract], work_dir: Path) -> MethodLife:
    """Run one life of ``contract.method_class`` and record what the checks need."""
    lm = load_model(contract.model, device="cpu")
    base_logits = probe_logits(lm.model, lm.tokenizer)
    base_structure = ModelStructure.capture(lm.model)

    method = contract.method_class.from_options(dict(contract.options))
    method.prepare(lm)
    prepared_logits = probe_logits(method.evaluation_model(), lm.tokenizer)
    prepared_values = parameter_values(method.evaluation_model())

    task = guard_test_split(resolve_task_class(contract.task))
    context = FitContext(lm, task, task.folds[0], contract.budget, contract.seed, work_dir / "fit")
    fit_result: dict[str, Any] = {}
    try:
        fit_result = method.fit(context)
    except TestSplitRead:
        pass  # recorded in task.test_split_reads; the other checks need a finished fit
    if task.test_split_reads:
        method.remove()
        return MethodLife(base_logits, prepared_logits, test_split_reads=list(task.test_split_reads))
    fitted_logits = probe_logits(method.evaluation_model(), lm.tokenizer)
    changed = changed_parameters(prepared_values, method.evaluation_model())
    trainable, stored = method.trainable_parameters(), method.stored_values()
    capabilities = method.capabilities
    listeners = [type(listener).__name__ for listener in find_prompt_listeners(method.evaluation_model())]
    hooks = whole_forward_hooks(lm.model, method.evaluation_model()) - whole_forward_hooks(base_structure)

    state_dir = work_dir / "state"
    method.save(state_dir)
    method.remove()
    removed_logits = probe_logits(lm.model, lm.tokenizer)
    return MethodLife(
        base_logits=base_logits, prepared_logits=prepared_logits, fitted_logits=fitted_logits,
        removed_logits=removed_logits, base_structure=base_structure,
        removed_structure=ModelStructure.capture(lm.model), changed=changed, trainable=trainable, stored=stored,
        state_dir=state_dir, test_split_reads=list(task.test_split_reads), fit_result=fit_result,
        capabilities=capabilities, listeners=listeners, whole_forward_hooks=hooks,
    )


def whole_forward_hooks(*models: nn.Module | ModelStructure) -> int:
    """Forward (pre-)hooks on the models themselves, not their submodules (each model once)."""
    total = 0
    for model in {id(model): model for model in models}.values():
        if isinstance(model, ModelStructure):
            tables = model.hooks.get("", {})
            total += tables.get("_forward_pre_hooks", 0) + tables.get("_forward_hooks", 0)
        else:
            total += len(model._forward_pre_hooks) + len(model._forward_hooks)
    return total


# -- the checks (plain functions: the contract classes call them, and tests can too) -----------
def check_capabilities(life: MethodLife) -> None:
    life.require_fit()
    declared = life.capabilities
    assert declared.needs_prompt_positions == bool(life.listeners), (
        f"the fitted model carries PromptListener(s) {life.listeners} but capabilities does not declare "
        "needs_prompt_positions" if life.listeners else
        "capabilities declares needs_prompt_positions, but the fitted model carries no PromptListener"
    )
    assert not (life.whole_forward_hooks and declared.allows_cached_prefix), (
        f"the fit left {life.whole_forward_hooks} hook(s) on the whole model's forward, and capabilities allows "
        "the scorer's cached-prefix shortcut; declare Capabilities(watches_whole_forward=True) if the hook "
        "depends on each call starting at the sequence's first token"
    )


def check_identity_at_start(life: MethodLife, tolerance: float = 0.0) -> None:
    if tolerance == 0.0:
        assert torch.equal(life.prepared_logits, life.base_logits), (
            "prepare() changed the logits before any fit (max |difference| "
            f"{(life.prepared_logits - life.base_logits).abs().max().item():.3g}); a method that does not start "
            "as the identity sets identity_at_start = False, one that starts within rounding sets identity_tolerance"
        )
    else:
        assert torch.allclose(life.prepared_logits, life.base_logits, rtol=0.0, atol=tolerance), (
            f"prepare() moved the logits by up to {(life.prepared_logits - life.base_logits).abs().max().item():.3g}, "
            f"beyond the stated tolerance {tolerance}"
        )


def check_removal(life: MethodLife) -> None:
    life.require_fit()
    differences = life.base_structure.differences(life.removed_structure)
    assert not differences, "remove() left the model changed:\n  " + "\n  ".join(differences)
    assert torch.equal(life.removed_logits, life.base_logits), "remove() did not restore the logits bit for bit"


def check_round_trip(contract: type[MethodContract], life: MethodLife) -> None:
    life.require_fit()
    lm = load_model(contract.model, device="cpu")
    base_logits = probe_logits(lm.model, lm.tokenizer)
    restored = contract.method_class.from_options(dict(contract.options))
    restored.prepare(lm)
    restored.load(life.state_dir)
    loaded_logits = probe_logits(restored.evaluation_model(), lm.tokenizer)
    trainable = restored.trainable_parameters()
    restored.remove()
    assert torch.equal(loaded_logits, life.fitted_logits), (
        "a fresh model + prepare() + load() does not give the fitted model's logits (max |difference| "
        f"{(loaded_logits - life.fitted_logits).abs().max().item():.3g})"
    )
    assert trainable == life.trainable, f"trainable_parameters() is {trainable} after load(), {life.trainable} after fit"
    assert torch.equal(probe_logits(lm.model, lm.tokenizer), base_logits), "remove() after load() did not restore the logits"


def check_trainable_count(life: MethodLife) -> None:
    """The fit's created or changed parameters hold exactly the trained values, plus the stored
    ones where the method keeps them as parameters (ITI's fixed shifts); stored values kept
    outside parameters (RepE's reading vector, held by its hook) are not among them."""
    life.require_fit()
    changed = sum(life.changed.values())
    listing = ", ".join(f"{name} ({numel})" for name, numel in sorted(life.changed.items())) or "none"
    allowed = {life.trainable, life.trainable + life.stored}
    assert changed in allowed, (
        f"trainable_parameters() is {life.trainable} and stored_values() {life.stored}, but the parameter "
        f"tensors the fit created or changed hold {changed} values: {listing}"
    )


def check_test_split_untouched(life: MethodLife) -> None:
    assert not life.test_split_reads, f"the fit read the test split: {', '.join(life.test_split_reads)}"


class MethodContract:
    """Subclass as ``TestXContract`` and set ``method_class`` (and ``options``, ``task``)."""

    method_class: ClassVar[type[Method]]
    #: Config fields for a small, fast run (``Method.from_options``).
    options: ClassVar[dict[str, Any]] = {}
    #: The task trained on: a registered name or a Task subclass (its first fold is used).
    task: ClassVar[str | type[Task]] = "mquake"
    model: ClassVar[str] = CONTRACT_MODEL
    budget: ClassVar[Budget] = CONTRACT_BUDGET
    seed: ClassVar[int] = 0
    #: False for a method whose prepare() starts from a non-zero edit; say why beside it.
    identity_at_start: ClassVar[bool] = True
    #: 0.0: bit-identical logits after prepare(); else the largest |difference| allowed.
    identity_tolerance: ClassVar[float] = 0.0

    @pytest.fixture(scope="class")
    @classmethod
    def life(cls, tmp_path_factory: pytest.TempPathFactory) -> MethodLife:
        """One life per class: the checks below read what it saw."""
        return live_method(cls, tmp_path_factory.mktemp(f"contract-{cls.method_class.name}"))

    def test_prepare_leaves_the_logits_unchanged(self, life: MethodLife) -> None:
        if not self.identity_at_start:
            pytest.skip(f"{self.method_class.name} declares identity_at_start = False")
        check_identity_at_start(life, self.identity_tolerance)

    def test_remove_restores_the_model_exactly(self, life: MethodLife) -> None:
        check_removal(life)

    def test_save_and_load_round_trip(self, life: MethodLife) -> None:
        check_round_trip(type(self), life)

    def test_trainable_count_matches_the_changed_tensors(self, life: MethodLife) -> None:
        check_trainable_count(life)

    def test_fit_never_reads_the_test_split(self, life: MethodLife) -> None:
        check_test_split_untouched(life)

    def test_capabilities_match_what_the_fit_attached(self, life: MethodLife) -> None:
        check_capabilities(life)


# -- tasks -------------------------------------------------------------------------------------
WRONG_ANSWER = " zq-no-such-answer-qz"


def normalise_choice(text: str) -> str:
    return text.strip().rstrip(".").strip().lower()


class PlantedScorer:
    """A scorer that knows the answers: ``generate`` replies with each prompt's SFT completion
    (or, ``wrong``, a nonsense string); ``loglikelihoods`` gives 1 to the preferred answer of a
    DPO pair and 0 to the rest (``wrong``: 1 to the rejected one)."""

    def __init__(self, examples: list[Any], wrong: bool = False) -> None:
        self.completions = {example.prompt: example.completion for example in examples if isinstance(example, SFTExample)}
        self.favoured = {
            normalise_choice(example.rejected if wrong else example.chosen)
            for example in examples if isinstance(example, PreferenceExample)
        }
        self.wrong = wrong

    def generate(self, prompts: list[str], max_new_tokens: int = 16, description: str = "") -> list[Generation]:
        replies = [WRONG_ANSWER if self.wrong else self.completions[prompt] for prompt in prompts]
        return [Generation(prompt, prompt + reply, reply, len(reply)) for prompt, reply in zip(prompts, replies, strict=True)]

    def loglikelihoods(self, requests: list[tuple[str, str]], description: str = "") -> list[float]:
        return [1.0 if normalise_choice(continuation) in self.favoured else 0.0 for _, continuation in requests]


class TaskContract:
    """Subclass as ``TestXContract`` and set ``task_class``."""

    task_class: ClassVar[type[Task]]
    #: Test examples scored by the planted scorers.
    limit: ClassVar[int] = 4

    def test_splits_are_disjoint_and_ids_unique(self) -> None:
        task = self.task_class()
        for fold in task.folds:
            ids = {split: task.split_ids(fold, split) for split in SPLITS}
            for split, split_ids in ids.items():
                assert split_ids, f"fold {fold}: the {split} split is empty"
                assert len(split_ids) == len(set(split_ids)), f"fold {fold}: the {split} split repeats ids"
            for index, first in enumerate(SPLITS):
                for second in SPLITS[index + 1:]:
                    shared = set(ids[first]) & set(ids[second])
                    assert not shared, f"fold {fold}: {first} and {second} share {len(shared)} ids, e.g. {sorted(shared)[:3]}"

    def test_ids_are_stable_across_instances(self) -> None:
        first, second = self.task_class(), self.task_class()
        for fold in first.folds:
            for split in SPLITS:
                assert first.split_ids(fold, split) == second.split_ids(fold, split), f"fold {fold}, {split}: ids differ"

    def test_training_examples_follow_the_split_ids(self) -> None:
        task = self.task_class()
        if task.objective == "none":
            pytest.skip(f"{task.name} has no training data (objective 'none')")
        fold = task.folds[0]
        for split in SPLITS:
            examples = task.training_examples(fold, split)
            assert [example.id for example in examples] == task.split_ids(fold, split), f"{split}: ids differ"
            kind = SFTExample if task.objective == "sft" else PreferenceExample
            assert all(isinstance(example, kind) for example in examples), f"{split}: not all {kind.__name__}"

    def test_a_model_that_knows_the_answers_scores_one(self) -> None:
        self._check_planted(wrong=False, expected=1.0)

    def test_a_model_that_answers_wrong_scores_zero(self) -> None:
        self._check_planted(wrong=True, expected=0.0)

    def _check_planted(self, wrong: bool, expected: float) -> None:
        task = self.task_class()
        if task.objective == "none":
            pytest.skip(f"{task.name} has no training data to plant answers from (objective 'none')")
        fold = task.folds[0]
        scorer = PlantedScorer(task.training_examples(fold, "test")[: self.limit], wrong=wrong)
        result = task.evaluate(scorer, fold, "test", limit=self.limit)
        assert result.example_ids == task.split_ids(fold, "test")[: self.limit]
        assert set(task.metrics) <= set(result.metrics) and task.primary_metric in task.metrics
        assert result.metrics[task.primary_metric] == expected, (
            f"{task.name}: {'a wrong' if wrong else 'the gold'} answer scores "
            f"{task.primary_metric} {result.metrics[task.primary_metric]}, not {expected}"
        )


__all__ = [
    "CONTRACT_BUDGET",
    "MethodContract",
    "MethodLife",
    "ModelStructure",
    "PlantedScorer",
    "TaskContract",
    "TestSplitRead",
    "changed_parameters",
    "guard_test_split",
    "live_method",
    "probe_logits",
]

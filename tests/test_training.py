"""The shared training loop: only hook parameters train, SFT loss is on completions only, the
extra loss is added, DPO starts at ln 2 against the model as it was when training began;
declared prompt positions reach the model's listeners through the one trainer subclass, and
what trl leaves on the model object is undone."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from lofit_bench.budget import get_budget
from lofit_bench.engine import training as training_module
from lofit_bench.engine.training import (
    OptimizerSettings,
    build_trainer,
    train,
    trainable_parameter_count,
)
from lofit_bench.method import Capabilities
from lofit_bench.prompt_positions import PromptListener, PromptSpans, declare_prompt
from lofit_bench.task import PreferenceExample, SFTExample

SFT_EXAMPLES = [SFTExample(str(i), f"Q: what is {i} + {i}?\nA:", f" {2 * i}") for i in range(5)]
DPO_EXAMPLES = [
    PreferenceExample(
        str(i), f"Is {i} even?", " yes" if i % 2 == 0 else " no", " no" if i % 2 == 0 else " yes"
    )
    for i in range(4)
]
BUDGET = get_budget("smoke").replace(epochs=2, batch_size=2, max_length=64)


class AttentionOutputBias(nn.Module):
    """A LoFiT-like intervention: a learned vector added to layer 0's attention-output input."""

    def __init__(self, width: int, initial: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.full((width,), initial))

    def add_bias(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] + self.bias, *args[1:])


@pytest.fixture
def biased_lm(tiny_lm, request):
    """tiny_lm with an AttentionOutputBias registered as a submodule (so the Trainer finds it)."""
    initial = getattr(request, "param", 0.0)
    layout = tiny_lm.layout
    intervention = AttentionOutputBias(layout.n_heads * layout.head_dim, initial)
    tiny_lm.model.add_module("test_intervention", intervention)
    handle = layout.attention_output(tiny_lm.model, 0).register_forward_pre_hook(
        intervention.add_bias
    )
    yield tiny_lm, intervention
    handle.remove()


def base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: tensor.detach().clone()
        for name, tensor in model.state_dict().items()
        if not name.startswith("test_intervention.")
    }


def run_training(
    lm, examples, objective, tmp_path, learning_rate=1e-2, budget=BUDGET, extra_loss=None
):
    return train(
        lm.model,
        lm.tokenizer,
        examples,
        objective,
        budget,
        OptimizerSettings(learning_rate=learning_rate),
        seed=0,
        work_dir=tmp_path,
        extra_loss=extra_loss,
    )


def assert_only_intervention_changed(lm, intervention, weights_before, bias_before) -> None:
    weights_after = base_weights(lm.model)
    assert weights_after.keys() == weights_before.keys()
    for name, tensor in weights_before.items():
        assert torch.equal(weights_after[name], tensor), f"base weight {name} changed"
    assert not torch.equal(intervention.bias.detach(), bias_before)


def test_sft_trains_only_the_hook_parameter(biased_lm, tmp_path) -> None:
    lm, intervention = biased_lm
    assert trainable_parameter_count(lm.model) == intervention.bias.numel() == 64
    weights_before, bias_before = base_weights(lm.model), intervention.bias.detach().clone()
    result = run_training(lm, SFT_EXAMPLES, "sft", tmp_path)
    assert_only_intervention_changed(lm, intervention, weights_before, bias_before)
    assert result.objective == "sft"
    assert (result.examples, result.epochs) == (5, 2)
    assert result.steps == math.ceil(5 / 2) * 2
    assert len(result.losses) == result.steps
    assert all(math.isfinite(loss) and loss > 0 for loss in result.losses)
    assert result.final_loss == result.losses[-1]
    assert result.seconds > 0 and result.tokens > 0 and result.tokens_per_second > 0
    record = result.to_dict()
    assert record["steps"] == 6 and len(record["losses"]) == 6


def test_sft_loss_is_cross_entropy_on_completion_tokens_only(biased_lm, tmp_path) -> None:
    lm, _ = biased_lm
    tokenizer = lm.tokenizer
    example = SFTExample("planted", "The password is swordfish. The password is", " swordfish")
    prompt_ids = tokenizer(example.prompt)["input_ids"]
    # trl appends EOS to the completion; the loss covers the completion and that EOS.
    ids = tokenizer(example.prompt + example.completion)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        log_probs = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
    token_losses = [
        -float(log_probs[position - 1, ids[position]]) for position in range(1, len(ids))
    ]
    completion_loss = sum(token_losses[len(prompt_ids) - 1 :]) / (len(ids) - len(prompt_ids))
    every_token_loss = sum(token_losses) / len(token_losses)
    assert abs(completion_loss - every_token_loss) > 1e-2  # the check below can tell them apart

    one_step = BUDGET.replace(epochs=1, batch_size=1)
    result = run_training(lm, [example], "sft", tmp_path, budget=one_step)
    assert result.steps == 1
    assert result.losses[0] == pytest.approx(completion_loss, abs=1e-4)


@pytest.mark.parametrize("biased_lm", [0.5], indirect=True)
def test_extra_loss_is_added_and_pulls_the_parameter(biased_lm, tmp_path) -> None:
    lm, intervention = biased_lm

    def l1_penalty() -> torch.Tensor:
        return 100.0 * intervention.bias.abs().sum()

    plain = run_training(lm, SFT_EXAMPLES, "sft", tmp_path / "plain", learning_rate=0.05)
    plain_size = float(intervention.bias.detach().abs().mean())
    with torch.no_grad():
        intervention.bias.fill_(0.5)
    penalized = run_training(
        lm, SFT_EXAMPLES, "sft", tmp_path / "penalized", learning_rate=0.05, extra_loss=l1_penalty
    )
    penalized_size = float(intervention.bias.detach().abs().mean())
    # Same first batch and starting point: the logged losses differ by the penalty, 100 * 64 * 0.5.
    assert penalized.losses[0] - plain.losses[0] == pytest.approx(3200.0, rel=1e-4)
    assert penalized_size < plain_size - 0.1


@pytest.mark.parametrize("biased_lm", [0.1], indirect=True)
def test_dpo_trains_the_parameter_from_ln2(biased_lm, tmp_path) -> None:
    lm, intervention = biased_lm
    weights_before, bias_before = base_weights(lm.model), intervention.bias.detach().clone()
    result = run_training(lm, DPO_EXAMPLES, "dpo", tmp_path, budget=BUDGET.replace(epochs=1))
    assert_only_intervention_changed(lm, intervention, weights_before, bias_before)
    assert result.objective == "dpo"
    assert result.steps == 2 and len(result.losses) == 2
    # The reference is the model as it is when training starts (intervention included), so
    # policy and reference agree on the first batch: -log sigmoid(0) = ln 2.
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-4)


def test_wrong_example_type_is_a_type_error(biased_lm, tmp_path) -> None:
    lm, _ = biased_lm
    with pytest.raises(TypeError, match="SFTExample"):
        run_training(lm, DPO_EXAMPLES, "sft", tmp_path)
    with pytest.raises(TypeError, match="PreferenceExample"):
        run_training(lm, SFT_EXAMPLES, "dpo", tmp_path)


# -- the method's declared needs through the one trainer subclass ----------------------------------
class PromptBias(PromptListener):
    """A LoReFT-like listener: a learned vector added to the input embeddings at the declared
    prompt positions only (none on DPO's reference pass); it records every declaration."""

    def __init__(self, width: int, initial: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.full((width,), initial))
        self.spans: PromptSpans | None = None
        self.declared: list[PromptSpans] = []

    def set_prompt(self, spans: PromptSpans | None) -> None:
        self.spans = spans
        if spans is not None:
            self.declared.append(spans)

    def edit(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self.spans is None:
            raise RuntimeError("a forward call without a declared prompt")
        if self.spans.reference:
            return None
        mask = torch.zeros(output.shape[:2], dtype=output.dtype)
        for row, (start, length) in enumerate(zip(self.spans.starts, self.spans.lengths, strict=True)):
            mask[row, start : start + length] = 1
        return output + mask.unsqueeze(-1) * self.bias


@pytest.fixture
def prompt_biased_lm(tiny_lm):
    listener = PromptBias(tiny_lm.layout.hidden_size, 0.25)
    tiny_lm.model.add_module("test_listener", listener)
    handle = tiny_lm.model.get_input_embeddings().register_forward_hook(listener.edit)
    yield tiny_lm, listener
    handle.remove()


NEEDS_PROMPTS = Capabilities(needs_prompt_positions=True)


def test_extra_loss_and_prompt_positions_give_the_planted_first_loss(prompt_biased_lm, tmp_path) -> None:
    """One step on one example: the logged loss is the completion's cross entropy with the
    prompt's embeddings edited (and only those), plus the extra term at the starting values."""
    lm, listener = prompt_biased_lm
    tokenizer = lm.tokenizer
    example = SFTExample("planted", "The password is swordfish. The password is", " swordfish")
    prompt = len(tokenizer(example.prompt)["input_ids"])
    ids = tokenizer(example.prompt + example.completion)["input_ids"] + [tokenizer.eos_token_id]

    def completion_loss(spans: PromptSpans) -> float:
        with torch.no_grad(), declare_prompt(lm.model, spans):
            log_probs = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
        return -sum(float(log_probs[position - 1, ids[position]]) for position in range(prompt, len(ids))) / (
            len(ids) - prompt
        )

    edited = completion_loss(PromptSpans.right_padded([prompt]))
    assert abs(edited - completion_loss(PromptSpans.right_padded([len(ids)]))) > 1e-3  # the span matters
    assert abs(edited - completion_loss(PromptSpans.right_padded([prompt]).as_reference())) > 1e-3  # the edit matters
    penalty = 10.0 * 64 * 0.25
    listener.declared.clear()
    result = train(
        lm.model, tokenizer, [example], "sft", BUDGET.replace(epochs=1, batch_size=1),
        OptimizerSettings(learning_rate=1e-2), seed=0, work_dir=tmp_path,
        extra_loss=lambda: 10.0 * listener.bias.abs().sum(), capabilities=NEEDS_PROMPTS,
    )
    assert result.steps == 1
    assert result.losses[0] == pytest.approx(edited + penalty, abs=1e-4)
    assert listener.declared and all(spans.lengths == (prompt,) for spans in listener.declared)
    assert listener.spans is None  # every declaration was withdrawn after its call


def test_dpo_declares_its_reference_pass(prompt_biased_lm, tmp_path) -> None:
    lm, listener = prompt_biased_lm
    result = train(
        lm.model, lm.tokenizer, DPO_EXAMPLES, "dpo", BUDGET.replace(epochs=1), OptimizerSettings(1e-2),
        seed=0, work_dir=tmp_path, capabilities=NEEDS_PROMPTS,
    )
    assert result.steps == 2
    prompts = {len(lm.tokenizer(example.prompt)["input_ids"]) for example in DPO_EXAMPLES}
    references = [spans for spans in listener.declared if spans.reference]
    policy = [spans for spans in listener.declared if not spans.reference]
    assert len(references) == len(policy) == 2  # the precomputed reference batches, then the steps
    assert all(set(spans.lengths) <= prompts and spans.rows == 4 for spans in listener.declared)
    # The reference is the unedited model and the policy is edited: the first loss is not ln 2.
    assert abs(result.losses[0] - math.log(2)) > 1e-3


def test_undeclared_prompt_positions_are_read_off_the_model(prompt_biased_lm, tmp_path) -> None:
    """A plugin that calls train() without capabilities still has its listener told."""
    lm, listener = prompt_biased_lm
    run_training(lm, SFT_EXAMPLES[:2], "sft", tmp_path, budget=BUDGET.replace(epochs=1))
    assert listener.declared


def test_a_declaration_the_model_contradicts_fails_before_training(tiny_lm, biased_lm, tmp_path) -> None:
    with pytest.raises(RuntimeError, match="carries no PromptListener"):
        train(tiny_lm.model, tiny_lm.tokenizer, SFT_EXAMPLES, "sft", BUDGET, OptimizerSettings(1e-2), 0, tmp_path,
              capabilities=NEEDS_PROMPTS)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_one_trainer_subclass_per_trl_trainer(biased_lm, tmp_path) -> None:
    from trl import DPOTrainer, SFTTrainer

    lm, _ = biased_lm
    for objective, examples, trl_class in (("sft", SFT_EXAMPLES, SFTTrainer), ("dpo", DPO_EXAMPLES, DPOTrainer)):
        trainer = build_trainer(lm.model, lm.tokenizer, examples, objective, BUDGET, OptimizerSettings(1e-2), 0,
                                 tmp_path / objective, None, None, False)
        assert type(trainer).__mro__[1] is trl_class
        assert type(trainer).__name__ == f"Harness{trl_class.__name__}"


# -- what trl leaves on the model object ------------------------------------------------------------
def instance_state(model: nn.Module) -> tuple[dict[str, object], bool, bool]:
    return dict(vars(model)), model.config.use_cache, model.training


def test_trl_leaves_changes_on_the_model_that_model_left_as_found_undoes(biased_lm, tmp_path, monkeypatch) -> None:
    """With trl 1.16 the Trainer patches ``forward`` on the instance, adds attributes and turns
    the cache off; model_left_as_found puts every instance attribute back (the same objects)."""
    lm, _ = biased_lm
    lm.model.eval()
    before, use_cache, training = instance_state(lm.model)
    run_training(lm, SFT_EXAMPLES[:2], "sft", tmp_path / "guarded", budget=BUDGET.replace(epochs=1))
    after, use_cache_after, training_after = instance_state(lm.model)
    assert after.keys() == before.keys() and all(after[name] is value for name, value in before.items())
    assert (use_cache_after, training_after) == (use_cache, training) == (True, False)

    monkeypatch.setattr(training_module, "model_left_as_found", lambda model: contextlib.nullcontext())
    run_training(lm, SFT_EXAMPLES[:2], "sft", tmp_path / "unguarded", budget=BUDGET.replace(epochs=1))
    left, use_cache_left, training_left = instance_state(lm.model)
    # What the guard protects against: accelerate marks the model on every trl the project declares;
    # trl 1.16 also patches ``forward`` on the instance (trl 1.12 with loss_type "nll" does not).
    assert "_is_accelerate_prepared" in set(left) - set(before)
    assert (use_cache_left, training_left) == (False, True)


def test_checkpointing_is_named_as_the_installed_config_accepts() -> None:
    from trl import DPOConfig, SFTConfig

    from lofit_bench.engine.training import checkpointing_arguments

    class OldConfig:
        def __init__(self, gradient_checkpointing=True, gradient_checkpointing_kwargs=None): ...

    class NewConfig:
        def __init__(self, activation_checkpointing=True, activation_checkpointing_kwargs=None, gradient_checkpointing=None): ...

    assert checkpointing_arguments(OldConfig, True) == {"gradient_checkpointing": True,
                                                         "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    assert checkpointing_arguments(NewConfig, False) == {"activation_checkpointing": False, "activation_checkpointing_kwargs": None}
    for config_class in (SFTConfig, DPOConfig):  # the installed trl takes what is chosen
        config = config_class(output_dir="unused", use_cpu=True, report_to="none", **checkpointing_arguments(config_class, False))
        assert not getattr(config, "activation_checkpointing", config.gradient_checkpointing)

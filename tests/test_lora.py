"""LoRA through peft: r * (d_in + d_out) values per adapted matrix, identity at init, only the
adapter trains (SFT and DPO, the reference being the adapter-disabled model), peft's save
format round-trips, unload restores the very same base modules, and sweeps are recorded."""

from __future__ import annotations

import json

import pytest
import torch
from method_helpers import TINY, small_budget
from torch import nn

from lofit_bench import plugins
from lofit_bench.engine.models import load_model
from lofit_bench.method import FitContext
from lofit_bench.methods.lora import LoRA, LoRAConfig
from lofit_bench.sweep.runner import plan_sweep, run_sweep


def logits(model: nn.Module, tokenizer) -> torch.Tensor:
    ids = tokenizer("Alice is Bob's sister. Who is Alice to Bob?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def fit(method, lm, tmp_path, task="mquake", **budget):
    task_object = plugins.get_host().tasks.get(task)()
    return method.fit(FitContext(lm, task_object, task_object.folds[0], small_budget(**budget), 0, tmp_path))


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("tiny-random-llama", {}),
        ("tiny-random-qwen2", {}),  # q/v projections with biases: LoRA still adds r * (d_in + d_out)
        ("tiny-random-llama", {"rank": 4, "target_modules": ["o_proj", "down_proj"]}),
    ],
)
def test_counts_are_rank_times_in_plus_out_per_adapted_matrix(model, options):
    lm = load_model(model, device="cpu")
    targets = options.get("target_modules", ["q_proj", "v_proj"])
    rank = options.get("rank", 8)
    expected = sum(
        rank * (module.in_features + module.out_features)
        for name, module in lm.model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )
    before = logits(lm.model, lm.tokenizer)
    method = LoRA(LoRAConfig(**options))
    method.prepare(lm)
    assert method.trainable_parameters() == expected == sum(row["values"] for row in method.adapted_matrices())
    assert len(method.adapted_matrices()) == 2 * len(targets)
    assert not method.evaluation_model().training  # the adapter's dropout is off outside training
    assert torch.equal(logits(method.evaluation_model(), lm.tokenizer), before)  # B = 0: an exact identity
    method.remove()


def test_tiny_llama_count_by_hand():
    # q_proj 64 -> 64, v_proj 64 -> 32 (2 KV heads x 16), 2 layers, r = 8
    lm = load_model("tiny-random-llama", device="cpu")
    method = LoRA()
    method.prepare(lm)
    assert method.trainable_parameters() == 2 * (8 * (64 + 64) + 8 * (64 + 32)) == 3584
    method.remove()


def test_sft_trains_only_the_adapter_and_remove_restores_the_same_modules(builtin_host, tiny_lm, tmp_path):
    modules = dict(tiny_lm.model.named_modules())
    base = {name: tensor.clone() for name, tensor in tiny_lm.model.state_dict().items()}
    before = logits(tiny_lm.model, tiny_lm.tokenizer)
    method = LoRA(LoRAConfig(learning_rate=0.05))
    method.prepare(tiny_lm)
    wrapped = method.evaluation_model()
    adapter = {name: tensor.clone() for name, tensor in wrapped.state_dict().items() if "lora_" in name}
    result = fit(method, tiny_lm, tmp_path, batch_size=4)
    assert result["hyperparameters"]["learning_rate"] == 0.05 and result["training"]["steps"] == 2
    trainable = [name for name, parameter in wrapped.named_parameters() if parameter.requires_grad]
    assert trainable and all(".lora_A.default." in name or ".lora_B.default." in name for name in trainable)
    after = wrapped.state_dict()
    assert any(not torch.equal(adapter[name], after[name]) for name in adapter if "lora_B" in name)
    for name, tensor in base.items():  # every base weight, now under peft's base_layer, bit-identical
        wrapped_name = "base_model.model." + name.replace("q_proj.", "q_proj.base_layer.").replace(
            "v_proj.", "v_proj.base_layer.")
        assert torch.equal(tensor, after[wrapped_name]), name
    assert not torch.equal(logits(wrapped, tiny_lm.tokenizer), before)
    method.remove()
    assert dict(tiny_lm.model.named_modules()).keys() == modules.keys()
    assert all(module is modules[name] for name, module in tiny_lm.model.named_modules())  # not merged: the originals
    assert torch.equal(logits(tiny_lm.model, tiny_lm.tokenizer), before)
    assert not hasattr(tiny_lm.model, "peft_config") and "forward" not in vars(tiny_lm.model)
    assert not any(parameter.requires_grad for parameter in tiny_lm.model.parameters())


def test_dpo_reference_is_the_adapter_disabled_model(builtin_host, tiny_lm, tmp_path, monkeypatch):
    from trl import DPOTrainer

    seen = []
    real = DPOTrainer.compute_ref_log_probs

    def spy(self, model, inputs):
        peft_model = self.model
        reference = real(self, model, inputs)
        with peft_model.disable_adapter():
            disabled = real(self, model, {**inputs})
        ref_b_zero = all(not parameter.any() for name, parameter in peft_model.named_parameters()
                         if ".lora_B.ref." in name)
        seen.append((sorted(peft_model.peft_config), ref_b_zero and torch.equal(reference[0], disabled[0])
                     and torch.equal(reference[1], disabled[1])))
        return reference

    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs", spy)
    method = LoRA()
    method.prepare(tiny_lm)
    result = fit(method, tiny_lm, tmp_path, task="truthfulqa", train_examples=4, batch_size=4, max_length=256)
    assert seen and all(adapters == ["default", "ref"] and same for adapters, same in seen)
    assert result["training"]["objective"] == "dpo" and result["hyperparameters"]["learning_rate"] == 1e-4
    assert result["training"]["losses"][0] == pytest.approx(0.6931, abs=1e-4)  # policy == reference at start
    assert sorted(method.evaluation_model().peft_config) == ["default"]  # trl's "ref" copy is gone
    assert "forward" not in vars(tiny_lm.model)
    method.remove()


def test_save_in_peft_format_and_load_round_trip(builtin_host, tiny_lm, tmp_path):
    method = LoRA(LoRAConfig(learning_rate=0.05, rank=4))
    method.prepare(tiny_lm)
    fit(method, tiny_lm, tmp_path, train_examples=4)
    expected = logits(method.evaluation_model(), tiny_lm.tokenizer)
    method.save(tmp_path / "state")
    assert {path.name for path in (tmp_path / "state" / "adapter").iterdir()} >= {
        "adapter_config.json", "adapter_model.safetensors"}
    method.remove()
    fresh = load_model("tiny-random-llama", device="cpu")
    before = logits(fresh.model, fresh.tokenizer)
    restored = LoRA()
    restored.prepare(fresh)
    restored.load(tmp_path / "state")
    assert restored.config == method.config and restored.trainable_parameters() == 2 * 4 * (128 + 96)
    assert torch.equal(logits(restored.evaluation_model(), fresh.tokenizer), expected)
    restored.remove()
    assert torch.equal(logits(fresh.model, fresh.tokenizer), before)


def test_sweeps_on_clutrr_and_truthfulqa_are_recorded(builtin_host, tmp_path):
    budget = small_budget(train_examples=4, batch_size=4)
    outcomes = run_sweep(plan_sweep(["lora"], ["clutrr"], budget, TINY), tmp_path, progress=False,
                         echo=lambda _: None, executor="inline")
    outcomes += run_sweep(plan_sweep(["lora"], ["truthfulqa"], budget.replace(eval_examples=1, max_length=256), TINY),
                          tmp_path, progress=False, echo=lambda _: None, executor="inline")
    clutrr, truthfulqa = (json.loads(outcome.path.read_text()) for outcome in outcomes)
    for record in (clutrr, truthfulqa):
        assert record["status"] == "ok", record.get("error")
        assert record["trainable_parameters"]["count"] == 3584
        assert record["trainable_parameters"]["base_parameters"] == 107200  # adapters excluded
    assert clutrr["folds"]["main"]["fit"]["hyperparameters"]["learning_rate"] == 1e-3  # Table 7
    assert {fold["fit"]["training"]["objective"] for fold in truthfulqa["folds"].values()} == {"dpo"}

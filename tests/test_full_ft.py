"""Full fine-tuning: every weight trains (in fp32, also on a bf16 model), remove() restores the
model bit for bit, the whole state dict round-trips, dev tuning keeps the best trial, and a
sweep records every parameter as trained."""

from __future__ import annotations

import json

import pytest
import torch
from method_helpers import TINY, small_budget

from lofit_bench import plugins
from lofit_bench.engine.models import load_model
from lofit_bench.errors import UserError
from lofit_bench.method import FitContext
from lofit_bench.methods import full_ft as full_ft_module
from lofit_bench.methods.full_ft import FullFineTuning, FullFTConfig
from lofit_bench.sweep.runner import plan_sweep, run_sweep


def logits(lm) -> torch.Tensor:
    ids = lm.tokenizer("Alice is Bob's sister. Who is Alice to Bob?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def context(lm, tmp_path, task="mquake", **budget) -> FitContext:
    task_object = plugins.get_host().tasks.get(task)()
    return FitContext(lm, task_object, task_object.folds[0], small_budget(**budget), 0, tmp_path)


def test_every_weight_trains_and_remove_restores_the_model(builtin_host, tiny_lm, tmp_path, monkeypatch):
    seen = []
    real_train = full_ft_module.train

    def spy(model, *args, **kwargs):
        seen.append({name: (parameter.requires_grad, parameter.dtype) for name, parameter in model.named_parameters()})
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(full_ft_module, "train", spy)
    base = {name: tensor.clone() for name, tensor in tiny_lm.model.state_dict().items()}
    before = logits(tiny_lm)
    method = FullFineTuning(FullFTConfig(learning_rate=1e-3))
    method.prepare(tiny_lm)
    fit = method.fit(context(tiny_lm, tmp_path, batch_size=4))
    [flags] = seen
    assert all(requires_grad for requires_grad, _ in flags.values()) and len(flags) == len(list(tiny_lm.model.parameters()))
    assert method.trainable_parameters() == tiny_lm.parameter_count == 107200
    assert fit["hyperparameters"]["learning_rate"] == 1e-3 and fit["restore_copy_mib"] == round(107200 * 4 / 2**20, 1)  # the fp32 copy kept to restore
    changed = [name for name, tensor in tiny_lm.model.state_dict().items() if not torch.equal(tensor, base[name])]
    assert len(changed) == len(base)  # every tensor moved (norm weights too)
    assert not any(parameter.requires_grad for parameter in tiny_lm.model.parameters())  # flags as found
    method.remove()
    assert all(torch.equal(tensor, base[name]) for name, tensor in tiny_lm.model.state_dict().items())
    assert torch.equal(logits(tiny_lm), before)
    assert "forward" not in vars(tiny_lm.model) and not tiny_lm.model.training


def test_a_bf16_model_trains_in_fp32_and_is_cast_back(builtin_host, tmp_path, monkeypatch):
    lm = load_model("tiny-random-llama", dtype="bf16", device="cpu")
    base = {name: tensor.clone() for name, tensor in lm.model.state_dict().items()}
    dtypes = []
    real_train = full_ft_module.train
    monkeypatch.setattr(full_ft_module, "train", lambda model, *a, **k: (
        dtypes.append({p.dtype for p in model.parameters()}), real_train(model, *a, **k))[1])
    method = FullFineTuning(FullFTConfig(learning_rate=1e-3))
    method.prepare(lm)
    method.fit(context(lm, tmp_path, train_examples=2, batch_size=2))
    assert dtypes == [{torch.float32}]
    assert {parameter.dtype for parameter in lm.model.parameters()} == {torch.bfloat16}
    assert any(not torch.equal(tensor, base[name]) for name, tensor in lm.model.state_dict().items())
    method.remove()
    assert all(torch.equal(tensor, base[name]) and tensor.dtype == base[name].dtype
               for name, tensor in lm.model.state_dict().items())


def test_save_and_load_round_trip_gives_identical_logits(builtin_host, tiny_lm, tmp_path):
    method = FullFineTuning(FullFTConfig(learning_rate=1e-3))
    method.prepare(tiny_lm)
    method.fit(context(tiny_lm, tmp_path, train_examples=4))
    expected = logits(tiny_lm)
    method.save(tmp_path / "state")
    assert (tmp_path / "state" / "model.safetensors").exists()
    method.remove()
    fresh = load_model("tiny-random-llama", device="cpu")
    before = logits(fresh)
    restored = FullFineTuning()
    restored.prepare(fresh)
    restored.load(tmp_path / "state")
    assert restored.config == method.config and restored.trainable_parameters() == 107200
    assert torch.equal(logits(fresh), expected)
    restored.remove()
    assert torch.equal(logits(fresh), before)


def test_a_clutrr_run_is_recorded_with_every_parameter_trained(builtin_host, tmp_path):
    [outcome] = run_sweep(plan_sweep(["full-ft"], ["clutrr"], small_budget(), TINY), tmp_path, progress=False,
                          echo=lambda _: None, executor="inline")
    record = json.loads(outcome.path.read_text())
    assert record["status"] == "ok", record.get("error")
    assert record["trainable_parameters"]["count"] == record["trainable_parameters"]["base_parameters"] == 107200
    assert record["trainable_parameters"]["percent_of_base"] == 100.0
    assert record["folds"]["main"]["fit"]["hyperparameters"]["learning_rate"] == 1e-5


def test_bad_options_fail_before_anything_runs(builtin_host):
    with pytest.raises(UserError, match="must be > 0"):
        plan_sweep(["full-ft"], ["clutrr"], small_budget(), TINY, method_options={"full-ft": {"learning_rate": -1}})

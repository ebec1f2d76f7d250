"""RED (LoFiT's variant): a scale and a bias on every head, starting as the identity, the only
tensors that train; exact counts (2 * L * H * head_dim), exact removal, save/load, a sweep."""

from __future__ import annotations

import json

import pytest
import torch
from method_helpers import TINY, small_budget

from lofit_bench import plugins
from lofit_bench.engine.models import load_model
from lofit_bench.errors import UserError
from lofit_bench.method import FitContext, resolve_paper_defaults
from lofit_bench.methods.red import PAPER_TABLE_7, RED, REDConfig
from lofit_bench.sweep.runner import plan_sweep, run_sweep


def logits(lm) -> torch.Tensor:
    ids = lm.tokenizer("Alice is Bob's sister. Who is Alice to Bob?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def fit(method, lm, tmp_path, task="mquake", **budget):
    task_object = plugins.get_host().tasks.get(task)()
    return method.fit(FitContext(lm, task_object, task_object.folds[0], small_budget(**budget), 0, tmp_path))


@pytest.mark.parametrize("model", ["tiny-random-llama", "tiny-random-gemma"])
def test_every_head_gets_a_scale_and_a_bias_and_starts_as_identity(model):
    lm = load_model(model, device="cpu")  # gemma: head_dim 24, not hidden / heads = 16
    before = logits(lm)
    method = RED()
    method.prepare(lm)
    layout = lm.layout
    assert method.trainable_parameters() == 2 * layout.n_layers * layout.n_heads * layout.head_dim
    assert method.attachment.intervention.heads == [(layer, head) for layer in range(2) for head in range(4)]
    assert torch.equal(logits(lm), before)  # s = 1 + 0, b = 0: bit-identical
    method.remove()


def test_only_the_vectors_train_and_removal_restores_the_model(builtin_host, tiny_lm, tmp_path):
    base = {name: tensor.clone() for name, tensor in tiny_lm.model.state_dict().items()}
    before = logits(tiny_lm)
    method = RED(REDConfig(learning_rate=0.05))
    method.prepare(tiny_lm)
    trainable = sorted(name for name, parameter in tiny_lm.model.named_parameters() if parameter.requires_grad)
    assert trainable == [f"red_heads.sites.{layer}.{kind}" for layer in (0, 1) for kind in ("scale", "shift")]
    result = fit(method, tiny_lm, tmp_path, batch_size=4)
    assert result["hyperparameters"]["learning_rate"] == 0.05 and result["training"]["steps"] == 2
    vectors = method.attachment.intervention
    assert all(vector.abs().sum() > 0 for vector in vectors.vectors("scale") + vectors.vectors("shift"))
    state = tiny_lm.model.state_dict()
    assert all(torch.equal(base[name], state[name]) for name in base)
    assert not torch.equal(logits(tiny_lm), before)
    method.remove()
    assert torch.equal(logits(tiny_lm), before)
    assert not hasattr(tiny_lm.model, "red_heads")
    assert all(not module._forward_pre_hooks for module in tiny_lm.model.modules())


def test_save_and_load_round_trip_gives_identical_logits(builtin_host, tiny_lm, tmp_path):
    method = RED(REDConfig(learning_rate=0.05))
    method.prepare(tiny_lm)
    fit(method, tiny_lm, tmp_path, train_examples=4)
    expected = logits(tiny_lm)
    method.save(tmp_path / "state")
    method.remove()
    fresh = load_model("tiny-random-llama", device="cpu")
    restored = RED()
    restored.prepare(fresh)
    restored.load(tmp_path / "state")
    assert restored.config == method.config and restored.trainable_parameters() == 2 * 2 * 4 * 16
    assert torch.equal(logits(fresh), expected)


def test_a_clutrr_run_is_recorded_with_table_7_settings(builtin_host, tmp_path):
    [outcome] = run_sweep(plan_sweep(["red"], ["clutrr"], small_budget(), TINY), tmp_path, progress=False,
                          echo=lambda _: None, executor="inline")
    record = json.loads(outcome.path.read_text())
    assert record["status"] == "ok", record.get("error")
    fit_record = record["folds"]["main"]["fit"]
    assert fit_record["hyperparameters"]["learning_rate"] == 5e-3  # Table 7, Llama-2-7B, CLUTRR
    assert fit_record["training"]["objective"] == "sft"
    assert record["trainable_parameters"]["count"] == 2 * 2 * 4 * 16
    base = load_model("tiny-random-llama", device="cpu").parameter_count  # the vectors are not the base
    assert record["trainable_parameters"]["base_parameters"] == base
    assert record["trainable_parameters"]["percent_of_base"] == pytest.approx(100 * 256 / base)


def test_a_task_without_paper_values_asks_for_them():
    with pytest.raises(UserError, match=r"no learning_rate for task 'boolq' .* set red\.learning_rate"):
        resolve_paper_defaults("red", "boolq", {"learning_rate": None}, PAPER_TABLE_7, "paper Table 7")
    values, sources = resolve_paper_defaults("red", "boolq", {"learning_rate": 0.1}, PAPER_TABLE_7, "paper Table 7")
    assert values == {"learning_rate": 0.1} and sources == {"learning_rate": "config"}

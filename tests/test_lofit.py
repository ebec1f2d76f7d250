"""LoFiT on tiny random models: the two stages train only what they should, the model is
restored exactly, state round-trips, head sources and the `heads` command work, and full runs
on CLUTRR (SFT) and TruthfulQA (DPO) are recorded."""

from __future__ import annotations

import json

import pytest
import torch

from lofit_bench import plugins
from lofit_bench.budget import get_budget
from lofit_bench.cli import main
from lofit_bench.engine.interventions import HeadIntervention
from lofit_bench.engine.models import load_model
from lofit_bench.errors import UserError
from lofit_bench.method import FitContext
from lofit_bench.methods import lofit as lofit_module
from lofit_bench.methods.lofit import LoFiT, LoFiTConfig, resolve_hyperparameters
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep

TINY = ModelSettings("tiny-random-llama", device="cpu")
HEAD_DIM = 16  # tiny-random-llama: hidden 64, 4 heads, 2 layers


def small_budget(**changes):
    # The byte-level tiny tokenizer makes a CLUTRR example ~450 tokens long.
    values = {"train_examples": 4, "batch_size": 4, "eval_examples": 2, "epochs": 1, "max_length": 1024} | changes
    return get_budget("smoke").replace(**values)


def context(lm, task: str, tmp_path, budget=None, seed: int = 0) -> FitContext:
    task_object = plugins.get_host().tasks.get(task)()
    return FitContext(lm, task_object, task_object.folds[0], budget or small_budget(), seed, tmp_path)


def logits(lm) -> torch.Tensor:
    ids = lm.tokenizer("Alice is Bob's sister. Who is Alice to Bob?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


@pytest.fixture(scope="module")
def clutrr_run(builtin_host, tmp_path_factory):
    """One full LoFiT run through the runner, shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("lofit-clutrr")
    [outcome] = run_sweep(plan_sweep(["lofit"], ["clutrr"], small_budget(), TINY), out, progress=False, echo=lambda _: None)
    return out, json.loads(outcome.path.read_text())


def test_a_clutrr_run_records_both_stages_heads_and_exact_counts(clutrr_run):
    out, record = clutrr_run
    assert record["status"] == "ok", record.get("error")
    fit = record["folds"]["main"]["fit"]
    assert record["trainable_parameters"]["count"] == 1 * HEAD_DIM  # 3 % of 8 heads -> K = 1
    assert fit["trainable_parameters"] == {"head_selection": 8 * HEAD_DIM, "bias_tuning": HEAD_DIM}
    assert fit["hyperparameters"]["heads"] == 1
    assert (fit["hyperparameters"]["l1_lambda"], fit["hyperparameters"]["stage1_learning_rate"],
            fit["hyperparameters"]["stage2_learning_rate"]) == (5e-3, 5e-4, 0.1)  # Table 6, CLUTRR; stage 2: a small model
    assert fit["hyperparameters"]["weight_decay"] == 0.01
    assert fit["stages"]["head_selection"]["objective"] == fit["stages"]["bias_tuning"]["objective"] == "sft"
    assert fit["training"]["steps"] == fit["stages"]["head_selection"]["steps"] + fit["stages"]["bias_tuning"]["steps"]
    ranking = fit["heads"]["ranking"]
    assert len(ranking) == 8
    assert [entry["score"] for entry in ranking] == sorted((entry["score"] for entry in ranking), reverse=True)
    assert fit["heads"]["chosen"] == [[ranking[0]["layer"], ranking[0]["head"]]]
    assert fit["head_source"]["kind"] == "lofit"
    folder = out / record["artifacts"] / "main"
    assert {path.name for path in folder.iterdir()} >= {"heads.json", "lofit_vectors.safetensors", "method_config.json"}


def test_a_truthfulqa_run_trains_both_stages_with_dpo(builtin_host, tmp_path):
    budget = small_budget(eval_examples=1, max_length=256)
    [outcome] = run_sweep(plan_sweep(["lofit"], ["truthfulqa"], budget, TINY), tmp_path, progress=False, echo=lambda _: None)
    record = json.loads(outcome.path.read_text())
    assert record["status"] == "ok", record.get("error")
    for fold in ("fold_0", "fold_1"):
        fit = record["folds"][fold]["fit"]
        assert fit["stages"]["head_selection"]["objective"] == fit["stages"]["bias_tuning"]["objective"] == "dpo"
        assert fit["hyperparameters"]["l1_lambda"] == 5e-4
    assert record["trainable_parameters"]["count"] == HEAD_DIM


def test_only_the_intended_vectors_train_and_removal_restores_the_model(builtin_host, tiny_lm, tmp_path, monkeypatch):
    trainable_by_stage = []
    real_train = lofit_module.train

    def spy(model, *args, **kwargs):
        trainable_by_stage.append(sorted(name for name, p in model.named_parameters() if p.requires_grad))
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(lofit_module, "train", spy)
    base = {name: tensor.clone() for name, tensor in tiny_lm.model.state_dict().items()}
    before = logits(tiny_lm)
    method = LoFiT(LoFiTConfig(heads=3))
    method.prepare(tiny_lm)
    fit = method.fit(context(tiny_lm, "mquake", tmp_path))
    stage1, stage2 = trainable_by_stage
    assert stage1 == [f"lofit_heads.sites.{layer}.scale" for layer in (0, 1)]  # A on every head
    assert all(name.endswith(".shift") for name in stage2)  # v only, on the chosen heads only
    chosen = [tuple(head) for head in fit["heads"]["chosen"]]
    assert len(chosen) == 3 and method.attachment.intervention.heads == sorted(chosen)
    assert method.trainable_parameters() == 3 * HEAD_DIM
    assert fit["trainable_parameters"]["head_selection"] == 8 * HEAD_DIM
    initial = HeadIntervention(tiny_lm.layout, chosen, shift=True).init_normal_(1e-3, seed=1)
    assert not torch.equal(method.attachment.intervention.sites[str(chosen[0][0])].shift,
                           initial.sites[str(chosen[0][0])].shift)  # v moved from its init
    after = tiny_lm.model.state_dict()
    assert all(torch.equal(base[name], after[name]) for name in base)  # base weights bit-identical
    assert not torch.equal(logits(tiny_lm), before)
    method.remove()
    assert torch.equal(logits(tiny_lm), before)
    assert not hasattr(tiny_lm.model, "lofit_heads")
    assert all(not module._forward_pre_hooks for module in tiny_lm.model.modules())
    assert "forward" not in vars(tiny_lm.model)  # trl's fused-head patch is undone
    assert not tiny_lm.model.training and tiny_lm.model.config.use_cache


def test_the_l1_penalty_shrinks_the_scales(builtin_host, tiny_lm, tmp_path):
    method = LoFiT()
    method.prepare(tiny_lm)
    run = context(tiny_lm, "mquake", tmp_path, small_budget(epochs=2, batch_size=2))
    settings = {"stage1_learning_rate": 1e-4, "weight_decay": 0.0}
    total = {}
    for l1_lambda in (0.0, 10.0):
        norms, _ = method._rank_heads(run, settings | {"l1_lambda": l1_lambda}, run.training_examples())
        total[l1_lambda] = float(norms.sum())
    assert total[10.0] < 0.9 * total[0.0]
    assert not hasattr(tiny_lm.model, "lofit_heads")  # stage 1 leaves nothing behind


def test_save_and_load_round_trip_gives_identical_logits(builtin_host, tiny_lm, tmp_path):
    method = LoFiT(LoFiTConfig(heads=2, head_source="random", head_seed=7, stage2_learning_rate=0.5))
    method.prepare(tiny_lm)
    fit = method.fit(context(tiny_lm, "mquake", tmp_path))
    assert fit["stages"]["head_selection"] is None and fit["trainable_parameters"]["head_selection"] == 0
    assert fit["head_source"] == {"kind": "random", "head_seed": 7, "task": "mquake", "fold": "main", "seed": 0}
    expected = logits(tiny_lm)
    method.save(tmp_path / "state")
    method.remove()

    fresh = load_model("tiny-random-llama", device="cpu")
    restored = LoFiT()
    restored.prepare(fresh)
    restored.load(tmp_path / "state")
    assert restored.config == method.config
    assert restored.trainable_parameters() == 2 * HEAD_DIM
    assert torch.equal(logits(fresh), expected)

    gemma = LoFiT()
    gemma.prepare(load_model("tiny-random-gemma", device="cpu"))
    with pytest.raises(UserError, match="2 layers x 4 heads x head_dim 16.*head_dim 24"):
        gemma.load(tmp_path / "state")


def test_random_heads_are_seeded(builtin_host, tiny_lm, tmp_path):
    chosen = []
    for _ in range(2):
        method = LoFiT(LoFiTConfig(heads=3, head_source="random", head_seed=1))
        method.prepare(tiny_lm)
        chosen.append(method.fit(context(tiny_lm, "mquake", tmp_path))["heads"]["chosen"])
        method.remove()
    assert chosen[0] == chosen[1] and len(chosen[0]) == 3


def test_heads_from_another_run_transfer_across_tasks(clutrr_run, tiny_lm, tmp_path):
    out, record = clutrr_run
    ranking = record["folds"]["main"]["fit"]["heads"]["ranking"]
    method = LoFiT(LoFiTConfig(heads=3, head_source=f"file:{out}"))
    method.prepare(tiny_lm)
    fit = method.fit(context(tiny_lm, "mquake", tmp_path))
    assert fit["heads"]["chosen"] == [[entry["layer"], entry["head"]] for entry in ranking[:3]]
    assert fit["head_source"]["kind"] == "file" and fit["head_source"]["file_source"] == "lofit"
    assert fit["head_source"]["task"] == "mquake" and fit["head_source"]["file_task"] == "clutrr"
    assert fit["stages"]["head_selection"] is None
    method.remove()


def test_bad_options_fail_before_anything_runs(builtin_host):
    for options, message in (
        ({"head_source": "lofitt"}, "Did you mean 'lofit'"),
        ({"head_source": "file:"}, "needs a path"),
        ({"heads": 0}, "at least 1"),
        ({"heads": 1.5}, r"\(0, 1\]"),
        ({"stage2_learning_rate": -1}, "must be > 0"),
    ):
        with pytest.raises(UserError, match=message):
            plan_sweep(["lofit"], ["clutrr"], small_budget(), TINY, method_options={"lofit": options})


def test_a_task_without_paper_defaults_asks_for_a_stage2_rate_and_takes_mquakes_stage1():
    with pytest.raises(UserError, match="tune it .* or set lofit.stage2_learning_rate with"):
        resolve_hyperparameters(LoFiTConfig(), "boolq", needs_stage1=True)
    values = resolve_hyperparameters(LoFiTConfig(stage2_learning_rate=0.02), "boolq", needs_stage1=True)
    assert (values["stage1_learning_rate"], values["l1_lambda"]) == (5e-3, 1e-3)  # Table 6's MQuAKE row
    assert values["sources"]["l1_lambda"] == "Table 6's MQuAKE value (no row for this task)"
    values = resolve_hyperparameters(LoFiTConfig(stage2_learning_rate=0.02), "boolq", needs_stage1=False)
    assert values["stage2_learning_rate"] == 0.02 and values["sources"]["stage2_learning_rate"] == "config"


def test_heads_command_prints_the_ranking_and_draws_a_heatmap(clutrr_run, capsys):
    out, record = clutrr_run
    assert main(["heads", str(out), "--top", "3"]) == 0
    printed = capsys.readouterr().out
    assert "lofit on clutrr (tiny-random-llama, seed 42, fold main)" in printed
    assert "chosen (layer, head)" in printed and "rank  layer  head" in printed
    heatmap = out / record["artifacts"] / "main" / "heads_heatmap.png"
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heads_command_on_a_folder_without_lofit_runs_fails_clearly(tmp_path, capsys):
    (tmp_path / "records").mkdir()
    assert main(["heads", str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_iti_heads_as_the_head_source(builtin_host, tiny_lm, tmp_path):
    """Paper Table 2's "ITI-heads": stage 2 tunes biases on ITI's probe-selected heads."""
    method = LoFiT(LoFiTConfig(heads=2, head_source="iti", stage2_learning_rate=1e-2))
    method.prepare(tiny_lm)
    fit = method.fit(context(tiny_lm, "clutrr", tmp_path, small_budget(dev_examples=4)))
    assert fit["head_source"]["kind"] == "iti"
    assert fit["stages"]["head_selection"] is None  # no LoFiT stage 1
    ranking = method.selection.ranking
    assert len(ranking) == tiny_lm.layout.total_heads
    assert set(method.selection.chosen) == {(layer, head) for layer, head, _ in ranking[:2]}
    assert method.trainable_parameters() == 2 * tiny_lm.layout.head_dim
    method.remove()

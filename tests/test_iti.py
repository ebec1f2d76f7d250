"""ITI: probes find a planted head, directions and sigma are right, zero alpha is an exact identity,
save/load and removal are exact, and a sweep records the fit on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from lofit_bench import plugins
from lofit_bench.budget import get_budget
from lofit_bench.engine.activations import contrast_pairs
from lofit_bench.engine.heads import HEADS_FILE, HeadSelection
from lofit_bench.errors import UserError
from lofit_bench.method import FitContext
from lofit_bench.methods.iti import (
    ITI,
    ITIConfig,
    mass_mean_directions,
    probe_accuracies,
    projection_std,
)
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep
from lofit_bench.task import PreferenceExample, SFTExample

PLANTED = (1, 2)  # (layer, head)


def planted_activations(pairs: int, seed: int, strength: float = 3.0):
    """Gaussian head activations [N, 2 layers, 4 heads, 16]; only head PLANTED separates the labels."""
    generator = torch.Generator().manual_seed(seed)
    positive = torch.randn(pairs, 2, 4, 16, generator=generator)
    negative = torch.randn(pairs, 2, 4, 16, generator=generator)
    direction = torch.zeros(16)
    direction[3], direction[7] = 0.6, 0.8
    positive[:, PLANTED[0], PLANTED[1]] += strength * direction
    negative[:, PLANTED[0], PLANTED[1]] -= strength * direction
    return positive, negative, direction


def logits(lm, text: str = "Q: Who is Alice to Bob? A: his sister") -> torch.Tensor:
    with torch.no_grad():
        return lm.model(input_ids=lm.tokenizer(text, return_tensors="pt")["input_ids"]).logits


def small_budget(**changes):
    # The byte-level tiny tokenizer makes a CLUTRR example ~450 tokens long.
    values = dict(train_examples=8, dev_examples=4, eval_examples=2, trials=2, max_length=1024)
    return get_budget("smoke").replace(**(values | changes))


def fitted(lm, tmp_path, **options):
    task = plugins.get_host().tasks.get("truthfulqa")()
    method = ITI(ITIConfig(**options))
    method.prepare(lm)
    budget = small_budget(trials=1, train_examples=6, dev_examples=3)
    method.fit(FitContext(lm, task, task.folds[0], budget, seed=0, work_dir=tmp_path))
    return method


def test_probes_rank_the_planted_head_first_and_recover_its_direction():
    train_positive, train_negative, direction = planted_activations(60, seed=1)
    held_positive, held_negative, _ = planted_activations(20, seed=2)
    accuracy, _ = probe_accuracies(train_positive, train_negative, held_positive, held_negative, seed=0)
    assert accuracy[PLANTED] == 1.0
    others = accuracy.clone()
    others[PLANTED] = 0
    assert others.max() < 0.85  # noise heads stay near chance
    directions = mass_mean_directions(train_positive, train_negative)
    assert torch.dot(directions[PLANTED], direction) > 0.95
    assert torch.allclose(directions.norm(dim=-1), torch.ones(2, 4))
    sigma = projection_std(torch.cat([train_positive, train_negative]), directions)
    assert sigma[PLANTED] > 2.5  # the +-3 split along the direction dominates its spread


def test_contrast_pairs_follow_the_documented_construction():
    preference = [PreferenceExample("q", "Q: Can pigs fly? A:", "No.", "Yes.")]
    [pair] = contrast_pairs(preference, seed=0)
    assert (pair.positive, pair.negative) == ("Q: Can pigs fly? A:No.", "Q: Can pigs fly? A:Yes.")
    sft = [SFTExample(str(i), f"p{i} 's\n", answer) for i, answer in enumerate(["son", "aunt", "son", "niece"])]
    pairs = contrast_pairs(sft, seed=3)
    assert pairs == contrast_pairs(sft, seed=3)  # seeded
    for example, pair in zip(sft, pairs, strict=True):
        assert pair.positive == example.prompt + example.completion
        wrong = pair.negative.removeprefix(example.prompt)
        assert wrong in {"son", "aunt", "niece"} and wrong != example.completion
    with pytest.raises(UserError, match="same"):
        contrast_pairs(sft[:1], seed=0)


def test_zero_alpha_is_an_exact_identity_and_remove_restores(tiny_lm, tmp_path):
    before = logits(tiny_lm)
    method = fitted(tiny_lm, tmp_path, alpha=0.0)
    assert torch.equal(logits(tiny_lm), before)
    method.remove()
    method = fitted(tiny_lm, tmp_path, alpha=15.0)
    assert not torch.equal(logits(tiny_lm), before)
    assert method.trainable_parameters() == 0
    assert method.stored_values() == 1 * tiny_lm.layout.head_dim  # 3 % of 8 heads rounds up to 1
    assert not any(parameter.requires_grad for parameter in tiny_lm.model.parameters())
    method.remove()
    assert torch.equal(logits(tiny_lm), before)
    assert not hasattr(tiny_lm.model, "iti_heads")


def test_save_and_load_reproduce_the_logits(tiny_lm, tmp_path):
    before = logits(tiny_lm)
    method = fitted(tiny_lm, tmp_path, heads=2, alpha=20.0)
    steered = logits(tiny_lm)
    method.save(tmp_path / "saved")
    method.remove()
    selection = HeadSelection.load(tmp_path / "saved" / HEADS_FILE)
    assert selection.source == "iti" and len(selection.chosen) == 2
    assert selection.chosen == [(layer, head) for layer, head, _ in selection.ranking[:2]]
    assert len(selection.ranking) == tiny_lm.layout.total_heads
    restored = ITI()
    restored.prepare(tiny_lm)
    restored.load(tmp_path / "saved")
    assert restored.config.alpha == 20.0
    assert torch.equal(logits(tiny_lm), steered)
    restored.remove()
    assert torch.equal(logits(tiny_lm), before)


def test_config_errors_are_user_errors():
    with pytest.raises(UserError, match="alpha"):
        ITIConfig(alpha="strong")
    with pytest.raises(UserError, match="direction"):
        ITIConfig(direction="median")
    with pytest.raises(UserError, match="heads"):
        ITIConfig(heads=0)


def test_a_sweep_records_the_fit_on_clutrr_and_truthfulqa(builtin_host, tmp_path):
    specs = plan_sweep(["iti"], ["clutrr", "truthfulqa"], small_budget(dev_examples=2), ModelSettings("tiny-random-llama", device="cpu"))
    outcomes = run_sweep(specs, tmp_path, progress=False, echo=lambda _: None, executor="inline")
    assert [outcome.status for outcome in outcomes] == ["ok", "ok"], [outcome.error for outcome in outcomes]
    for outcome in outcomes:
        record = json.loads(outcome.path.read_text())
        assert record["trainable_parameters"]["count"] == 0
        assert record["trainable_parameters"]["stored_values"] == 16
        for fold, values in record["folds"].items():
            tuning = values["tuning"]  # the harness's tuner: ITI's default first, probes read once
            assert [trial["state"] for trial in tuning["trials"]] == ["complete", "complete"]
            assert tuning["trials"][0]["values"] == {"heads": 0.03, "alpha": 15.0}
            assert tuning["trials"][1]["reused"] == ["iti probes"]
            assert tuning["chosen"] in [trial["values"] for trial in tuning["trials"]]
            assert values["fit"]["hyperparameters"]["alpha"] == tuning["chosen"]["alpha"]
            assert (tmp_path / record["artifacts"] / fold / HEADS_FILE).exists()

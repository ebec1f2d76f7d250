"""RepE: PCA recovers a planted direction, the layer scan finds the planted layer, zero coefficients
are exact identities, the cached contrast vector equals recomputation from scratch, save/load and
removal are exact, and a sweep records the fit on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from lofit_bench import plugins
from lofit_bench.budget import get_budget
from lofit_bench.errors import UserError
from lofit_bench.method import Capabilities, FitContext
from lofit_bench.methods.repe import (
    ContrastControl,
    ReadingControl,
    RepE,
    RepEConfig,
    rank_layers,
    reading_vectors,
    separation,
)
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep

PROMPTS = ["Alice is Bob's sister. Bob is Alice 's", "Q: Can pigs fly? A:"]


def logits(lm, text: str = PROMPTS[0]) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(input_ids=lm.tokenizer(text, return_tensors="pt")["input_ids"]).logits


def planted_states(pairs: int, seed: int, layer: int = 2, strength: float = 4.0):
    """Residual states [N, 4 layers, 32]; only ``layer`` moves positives along a unit direction."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(pairs, 4, 32, generator=generator) * 3
    positive = base + torch.randn(pairs, 4, 32, generator=generator)
    negative = base + torch.randn(pairs, 4, 32, generator=generator)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(99))
    direction /= direction.norm()
    positive[:, layer] += strength * direction
    return positive, negative, direction


def test_pca_recovers_the_planted_direction_with_its_sign():
    positive, negative, direction = planted_states(80, seed=1)
    directions = reading_vectors(positive, negative, seed=0)
    assert torch.allclose(directions.norm(dim=-1), torch.ones(4))
    assert torch.dot(directions[2], direction) > 0.95  # sign: positives project higher


def test_the_layer_scan_ranks_the_planted_layer_first():
    positive, negative, _ = planted_states(80, seed=1)
    held_positive, held_negative, _ = planted_states(30, seed=2)
    accuracy, margin = separation(held_positive, held_negative, reading_vectors(positive, negative, seed=0))
    assert accuracy[2] == 1.0
    assert rank_layers(accuracy, margin)[0] == 2


def test_zero_coefficients_are_exact_identities_and_remove_restores(tiny_lm):
    before = logits(tiny_lm)
    direction = torch.randn(tiny_lm.layout.hidden_size)
    controls = {
        "reading": lambda alpha: ReadingControl(tiny_lm, 1, alpha, direction),
        "contrast": lambda alpha: ContrastControl(tiny_lm, 0, alpha, "Be right.\n", "Be wrong.\n"),
    }
    for attach in controls.values():
        control = attach(0.0)
        assert torch.equal(logits(tiny_lm), before)
        control.remove()
        control = attach(5.0)
        assert not torch.equal(logits(tiny_lm), before)
        control.remove()
        assert torch.equal(logits(tiny_lm), before)


def test_cached_instructed_copies_match_recomputing_them_from_scratch(tiny_lm):
    """During KV-cached generation, the contrast h_pos - h_neg of every step equals the one
    computed afresh from the instructed prompt plus the tokens generated so far (so the
    copies' caches, masks and positions stay in lock-step under left padding)."""
    tokenizer = tiny_lm.tokenizer
    tokenizer.padding_side = "left"
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    plain = tiny_lm.model.generate(**encoded, do_sample=False, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id)
    control = ContrastControl(tiny_lm, 0, 50.0, "Answer correctly.\n", "Answer wrongly.\n")
    seen: list[torch.Tensor] = []
    recorder = tiny_lm.model.register_forward_hook(lambda *_: seen.append(control.contrast.clone()))
    steered = tiny_lm.model.generate(**encoded, do_sample=False, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id)
    recorder.remove()
    assert not torch.equal(steered, plain)  # a strong coefficient changes the greedy tokens
    width = encoded["input_ids"].shape[1]
    assert len(seen) == steered.shape[1] - width
    for step, cached in enumerate(seen):
        prefix = steered[:, : width + step]
        mask = torch.cat([encoded["attention_mask"], torch.ones(len(PROMPTS), step, dtype=torch.long)], dim=1)
        with torch.no_grad():
            tiny_lm.model(input_ids=prefix, attention_mask=mask, use_cache=False)
        assert torch.allclose(cached, control.contrast, atol=1e-5), step
    control.remove()


def small_budget(**changes):
    values = dict(train_examples=8, dev_examples=4, eval_examples=2, trials=2, max_length=1024)
    return get_budget("smoke").replace(**(values | changes))


@pytest.mark.parametrize(("task_name", "vector"), [("truthfulqa", "reading"), ("clutrr", "contrast")])
def test_save_and_load_reproduce_the_steered_model(tiny_lm, tmp_path, task_name, vector):
    before = logits(tiny_lm)
    task = plugins.get_host().tasks.get(task_name)()
    method = RepE(RepEConfig(alpha=8.0))
    method.prepare(tiny_lm)
    record = method.fit(FitContext(tiny_lm, task, task.folds[0], small_budget(train_examples=6, dev_examples=3, trials=1), 0, tmp_path))
    assert record["vector"] == vector and record["hyperparameters"]["alpha"] == 8.0
    assert method.trainable_parameters() == 0
    assert method.stored_values() == (tiny_lm.layout.hidden_size if vector == "reading" else 0)
    steered = logits(tiny_lm)
    assert not torch.equal(steered, before)
    method.save(tmp_path / "saved")
    method.remove()
    assert torch.equal(logits(tiny_lm), before)
    restored = RepE()
    restored.prepare(tiny_lm)
    restored.load(tmp_path / "saved")
    assert torch.equal(logits(tiny_lm), steered)
    restored.remove()
    assert torch.equal(logits(tiny_lm), before)


def test_contrast_on_a_multiple_choice_task_is_a_user_error():
    with pytest.raises(UserError, match="generation"):
        RepE(RepEConfig(vector="contrast")).resolve_vector("multiple_choice")
    with pytest.raises(UserError, match="vector"):
        RepEConfig(vector="pca")


def test_a_sweep_records_the_fit_on_clutrr_and_truthfulqa(builtin_host, tmp_path):
    specs = plan_sweep(["repe"], ["clutrr", "truthfulqa"], small_budget(dev_examples=2), ModelSettings("tiny-random-llama", device="cpu"))
    outcomes = run_sweep(specs, tmp_path, progress=False, echo=lambda _: None, executor="inline")
    assert [outcome.status for outcome in outcomes] == ["ok", "ok"], [outcome.error for outcome in outcomes]
    for outcome, vector in zip(outcomes, ("contrast", "reading"), strict=True):
        record = json.loads(outcome.path.read_text())
        assert record["trainable_parameters"]["count"] == 0
        for values in record["folds"].values():
            fit = values["fit"]
            assert fit["vector"] == vector
            tuning = values["tuning"]  # the harness's tuner: top-1 layer with alpha 5 first, one scan
            assert tuning["trials"][0]["values"] == {"alpha": 5.0, "layer_rank": 0}
            assert [trial["reused"] for trial in tuning["trials"]] == [[], ["repe layer scan"]]
            assert len(fit["layer_scan"]["accuracy"]) == 2


def test_only_the_attached_contrast_vector_declares_it_watches_whole_forward(tiny_lm):
    """The Scorer keeps its cached-prefix shortcut for the reading vector (a hook inside one
    layer) and drops it for the contrast vector (a pre-hook on the whole forward)."""
    method = RepE()
    method.prepare(tiny_lm)
    assert method.capabilities == Capabilities()
    method._attach("reading", 1, 2.0, torch.ones(tiny_lm.layout.hidden_size))
    assert method.capabilities == Capabilities()
    method._attach("contrast", 0, 2.0, torch.ones(tiny_lm.layout.hidden_size))
    assert method.capabilities == Capabilities(watches_whole_forward=True, scores_continuations=False)
    method.remove()
    assert method.capabilities == Capabilities()


def test_an_undeclared_shared_opening_fails_loudly_for_the_contrast_vector(tiny_lm):
    """Scored without the method's declaration, the Scorer would encode the shared opening once:
    the contrast vector refuses a cache it did not start, and with the declaration all is well."""
    from lofit_bench.engine.scoring import Scorer

    prompts = ['Read the story. "Ann met Bob." Who met Bob?', 'Read the story. "Eve left." Who left?']
    method = RepE()
    method.prepare(tiny_lm)
    method._attach("contrast", 0, 2.0, torch.ones(tiny_lm.layout.hidden_size))
    try:
        with pytest.raises(RuntimeError, match="did not see as a prompt"):
            Scorer(tiny_lm.model, tiny_lm.tokenizer, batch_size=2).generate(prompts, max_new_tokens=2)
        declared = Scorer(tiny_lm.model, tiny_lm.tokenizer, batch_size=2, capabilities=method.capabilities)
        assert len(declared.generate(prompts, max_new_tokens=2)) == 2
    finally:
        method.remove()

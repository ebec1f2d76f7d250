"""Per-head interventions: exact identity at zero, the right head slices, clean removal, cached
decoding, save/load, and head ranking."""

from __future__ import annotations

import pytest
import torch

from lofit_bench.engine.interventions import (
    HeadIntervention,
    load_intervention,
    rank_heads,
    resolve_head_count,
    save_intervention,
    select_top_heads,
)
from lofit_bench.engine.models import load_model
from lofit_bench.errors import UserError

MODELS = ["tiny-random-llama", "tiny-random-gemma"]  # gemma: head_dim 24 != hidden 64 / 4 heads


def logits(lm, text: str = "Alice is Bob's sister. Who is Alice to Bob?") -> torch.Tensor:
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def projection_inputs(lm) -> list[torch.Tensor]:
    """What each layer's o_proj receives (after any intervention hook registered earlier)."""
    seen: list[torch.Tensor] = []
    handles = [
        lm.layout.attention_output(lm.model, layer).register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
        for layer in range(lm.layout.n_layers)
    ]
    logits(lm)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("name", MODELS)
def test_zero_vectors_leave_logits_unchanged_bit_for_bit(name):
    lm = load_model(name, device="cpu")
    before = logits(lm)
    intervention = HeadIntervention(lm.layout, scale=True, shift=True)
    with intervention.attach(lm.model, lm.layout, "steer"):
        assert torch.equal(logits(lm), before)


@pytest.mark.parametrize("name", MODELS)
def test_scale_and_shift_edit_only_their_head_slice(name):
    lm = load_model(name, device="cpu")
    dim = lm.layout.head_dim
    plain = projection_inputs(lm)
    intervention = HeadIntervention(lm.layout, [(1, 2)], scale=True, shift=True)
    site = intervention.sites["1"]
    with torch.no_grad():
        site.scale.fill_(0.5)
        site.shift.copy_(torch.arange(dim, dtype=torch.float32))
    with intervention.attach(lm.model, lm.layout, "steer"):
        edited = projection_inputs(lm)
    assert torch.equal(edited[0], plain[0])  # layer 0 untouched
    expected = plain[1].clone()
    expected[..., 2 * dim : 3 * dim] = 1.5 * plain[1][..., 2 * dim : 3 * dim] + torch.arange(dim)
    torch.testing.assert_close(edited[1], expected)
    untouched = torch.ones(lm.layout.n_heads * dim, dtype=torch.bool)
    untouched[2 * dim : 3 * dim] = False
    assert torch.equal(edited[1][..., untouched], plain[1][..., untouched])


def test_only_the_vectors_get_gradients(tiny_lm):
    intervention = HeadIntervention(tiny_lm.layout, [(0, 1), (1, 3)], shift=True).init_normal_(1e-3, seed=0)
    with intervention.attach(tiny_lm.model, tiny_lm.layout, "steer"):
        ids = tiny_lm.tokenizer("some text to score", return_tensors="pt")["input_ids"]
        tiny_lm.model(input_ids=ids, labels=ids).loss.backward()
        with_grad = {name for name, parameter in tiny_lm.model.named_parameters() if parameter.grad is not None}
    assert with_grad == {"steer.sites.0.shift", "steer.sites.1.shift"}
    assert intervention.trainable_parameters() == 2 * tiny_lm.layout.head_dim


def test_removal_restores_the_model_exactly(tiny_lm):
    before_logits = logits(tiny_lm)
    before_state = set(tiny_lm.model.state_dict())
    attachment = HeadIntervention(tiny_lm.layout, shift=True).init_normal_(0.5, seed=0).attach(
        tiny_lm.model, tiny_lm.layout, "steer"
    )
    assert "steer.sites.0.shift" in dict(tiny_lm.model.named_parameters())
    assert not torch.equal(logits(tiny_lm), before_logits)
    attachment.remove()
    assert torch.equal(logits(tiny_lm), before_logits)
    assert not hasattr(tiny_lm.model, "steer")
    assert set(tiny_lm.model.state_dict()) == before_state
    assert all(not module._forward_pre_hooks for module in tiny_lm.model.modules())


def test_attaching_twice_under_one_name_fails(tiny_lm):
    with HeadIntervention(tiny_lm.layout, shift=True).attach(tiny_lm.model, tiny_lm.layout, "steer"):
        with pytest.raises(RuntimeError, match="already has"):
            HeadIntervention(tiny_lm.layout, shift=True).attach(tiny_lm.model, tiny_lm.layout, "steer")


def test_the_intervention_applies_to_every_token_of_cached_generation(tiny_lm):
    ids = tiny_lm.tokenizer("The cat sat on", return_tensors="pt")["input_ids"]

    def greedy(use_cache: bool) -> list[int]:
        with torch.no_grad():
            output = tiny_lm.model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, use_cache=use_cache)
        return output[0, ids.shape[1] :].tolist()

    plain = greedy(use_cache=True)
    intervention = HeadIntervention(tiny_lm.layout, [(0, 0), (1, 2)], shift=True).init_normal_(2.0, seed=3)
    with intervention.attach(tiny_lm.model, tiny_lm.layout, "steer"):
        cached, uncached = greedy(use_cache=True), greedy(use_cache=False)
    assert cached == uncached
    assert cached != plain


def test_save_and_load_round_trip_gives_identical_logits(tiny_lm, tmp_path):
    intervention = HeadIntervention(tiny_lm.layout, [(0, 3), (1, 0), (1, 1)], shift=True).init_normal_(0.3, seed=1)
    with intervention.attach(tiny_lm.model, tiny_lm.layout, "steer"):
        expected = logits(tiny_lm)
    save_intervention(intervention, tmp_path / "vectors.safetensors")
    restored = load_intervention(tmp_path / "vectors.safetensors", tiny_lm.layout)
    assert restored.heads == [(0, 3), (1, 0), (1, 1)]
    with restored.attach(tiny_lm.model, tiny_lm.layout, "steer"):
        assert torch.equal(logits(tiny_lm), expected)


def test_loading_onto_another_head_geometry_fails_clearly(tiny_lm, tmp_path):
    save_intervention(HeadIntervention(tiny_lm.layout, shift=True), tmp_path / "vectors.safetensors")
    gemma = load_model("tiny-random-gemma", device="cpu")
    with pytest.raises(UserError, match="head_dim 16.*head_dim 24"):
        load_intervention(tmp_path / "vectors.safetensors", gemma.layout)


def test_top_k_selection_on_planted_scales(tiny_lm):
    intervention = HeadIntervention(tiny_lm.layout, scale=True)
    planted = {(1, 3): 5.0, (0, 2): 4.0, (1, 0): 3.0}
    with torch.no_grad():
        for (layer, head), norm in planted.items():
            intervention.sites[str(layer)].scale[head, 0] = -norm  # the sign must not matter
    scores = intervention.head_norms("scale")
    assert scores.dtype == torch.float32 and scores.shape == (2, 4)
    assert select_top_heads(scores, 2) == [(1, 3), (0, 2)]
    assert select_top_heads(scores, 3) == [(1, 3), (0, 2), (1, 0)]
    ranking = rank_heads(scores)
    assert len(ranking) == 8 and ranking[0] == (1, 3, 5.0)
    assert ranking[3:] == [(0, 0, 0.0), (0, 1, 0.0), (0, 3, 0.0), (1, 1, 0.0), (1, 2, 0.0)]  # ties: by position


def test_head_count_from_a_count_or_a_fraction():
    assert resolve_head_count(0.03, 270) == 8  # SmolLM2: 30 layers x 9 heads
    assert resolve_head_count(0.1, 270) == 27
    assert resolve_head_count(0.03, 8) == 1  # at least one head
    assert resolve_head_count(5, 270) == 5
    assert resolve_head_count(1.0, 270) == 270
    for bad in (0, 271, 0.0, 1.5, True, "8"):
        with pytest.raises(UserError):
            resolve_head_count(bad, 270)

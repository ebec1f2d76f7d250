"""bf16 computes what fp32 computes where it matters: a head edit below bf16's resolution keeps its
effect (the edit and the projection that reads it are fp32), heads chosen on a bf16 model are
the fp32 choice, buffers keep their dtype, and a sharded load gives the unsharded logits."""

from __future__ import annotations

import torch

from lofit_bench.engine.interventions import HeadIntervention, select_top_heads
from lofit_bench.engine.models import load_model

IDS = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(0))
PER_LAYER_CPU_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                     "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def projection_io(lm, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of ``layer``'s attention output projection in one forward pass of IDS."""
    seen: dict[str, torch.Tensor] = {}

    def keep(module, args, output):
        seen["input"], seen["output"] = args[0].detach(), output.detach()

    handle = lm.layout.attention_output(lm.model, layer).register_forward_hook(keep)
    try:
        with torch.no_grad():
            lm.model(IDS)
    finally:
        handle.remove()
    return seen["input"], seen["output"]


def test_stage1_scales_at_init_keep_their_fp32_effect_on_a_bf16_model() -> None:
    lm = load_model("tiny-random-llama", dtype="bf16", device="cpu")
    z, base = projection_io(lm)
    scales = HeadIntervention(lm.layout, scale=True).init_normal_(1e-3, seed=0)  # LoFiT's stage-1 init
    with scales.attach(lm.model, lm.layout, "lofit_test"):
        z_edited, edited = projection_io(lm)
    assert torch.equal(z_edited, z)  # o_proj reads the unedited bf16 input; the edit travels in fp32
    # The fp32 effect of the same edit on the same (bf16-representable) input and weights.
    weight = lm.layout.attention_output(lm.model, 0).weight.float()
    per_head = scales.sites["0"].per_head(scales.sites["0"].scale.detach())
    reference = torch.nn.functional.linear((z.float().unflatten(-1, per_head.shape) * per_head).flatten(-2), weight)
    effect = edited.float() - base.float()
    # The only roundings left are the casts of the base and the edited output: half a bf16 step each.
    half_step = (edited.float().abs() + base.float().abs()) * 2.0**-8 + 1e-6
    assert ((effect - reference).abs() <= half_step).all()
    slope = (effect * reference).sum() / (reference * reference).sum()  # 1 in expectation: rounding is unbiased
    assert 0.7 < slope < 1.3  # the edit did not vanish


def test_a_zero_edit_and_its_removal_leave_bf16_logits_bit_for_bit() -> None:
    lm = load_model("tiny-random-llama", dtype="bf16", device="cpu")
    with torch.no_grad():
        before = lm.model(IDS).logits
        intervention = HeadIntervention(lm.layout, [(0, 1), (1, 2)], scale=True, shift=True)
        with intervention.attach(lm.model, lm.layout, "lofit_test"):
            assert torch.equal(lm.model(IDS).logits, before)
            intervention.init_normal_(0.5, seed=0)
            assert not torch.equal(lm.model(IDS).logits, before)
        assert torch.equal(lm.model(IDS).logits, before)


def test_a_shift_under_bf16_autocast_is_projected_in_fp32() -> None:
    """--precision bf16-mixed: the frozen matmuls run in bf16, the edited site and its projection not."""
    lm = load_model("tiny-random-llama", dtype="fp32", device="cpu")
    shift = HeadIntervention(lm.layout, [(0, 2)], shift=True).init_normal_(1e-3, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, base = projection_io(lm)
        with shift.attach(lm.model, lm.layout, "iti_test"):
            _, edited = projection_io(lm)
    assert z.dtype == base.dtype == edited.dtype == torch.bfloat16
    weight = lm.layout.attention_output(lm.model, 0).weight
    difference = shift.sites["0"].difference(z)
    assert torch.equal(edited, torch.nn.functional.linear(z.float() + difference, weight).to(torch.bfloat16))
    unedited = torch.nn.functional.linear(z.float(), weight).to(torch.bfloat16).float()
    reference = torch.nn.functional.linear(difference, weight)
    slope = ((edited.float() - unedited) * reference).sum() / (reference * reference).sum()
    assert 0.7 < slope < 1.3  # a shift of 1e-3 survives the cast


def trained_scale_ranking(dtype: str) -> list[tuple[int, int]]:
    """LoFiT's stage 1 on a planted task: the target is the model with heads (1, 3) and (0, 1)
    scaled up; scales on every head trained with an L1 penalty; the top 2 heads by norm."""
    lm = load_model("tiny-random-llama", dtype=dtype, device="cpu")
    planted = HeadIntervention(lm.layout, [(1, 3), (0, 1)], scale=True)
    with torch.no_grad():
        for site in planted.sites.values():
            site.scale.fill_(0.5)
        with planted.attach(lm.model, lm.layout, "planted"):
            target = lm.model(IDS).logits.float().log_softmax(-1)
    scales = HeadIntervention(lm.layout, scale=True).init_normal_(1e-3, seed=0)
    with scales.attach(lm.model, lm.layout, "lofit_test"):
        optimizer = torch.optim.Adam(scales.parameters(), lr=2e-2)
        for _ in range(60):
            optimizer.zero_grad()
            log_probs = lm.model(IDS).logits.float().log_softmax(-1)
            loss = torch.nn.functional.kl_div(log_probs, target, log_target=True, reduction="batchmean")
            (loss + 1e-4 * scales.l1_norm()).backward()
            optimizer.step()
    return select_top_heads(scales.head_norms("scale"), 2)


def test_the_same_heads_are_chosen_in_bf16_and_fp32_on_a_planted_task() -> None:
    fp32 = trained_scale_ranking("fp32")
    assert sorted(fp32) == [(0, 1), (1, 3)]
    assert trained_scale_ranking("bf16") == fp32


def test_a_bf16_model_keeps_fp32_buffers_and_sharded_and_unsharded_loads_agree() -> None:
    plain = load_model("tiny-random-llama", dtype="bf16", device="cpu")
    mapped = load_model("tiny-random-llama", dtype="bf16", device="cpu", device_map=PER_LAYER_CPU_MAP)
    for lm in (plain, mapped):
        assert {parameter.dtype for parameter in lm.model.parameters()} == {torch.bfloat16}
        assert lm.model.model.rotary_emb.inv_freq.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(plain.model(IDS).logits, mapped.model(IDS).logits)
    fp32 = load_model("tiny-random-llama", dtype="fp32", device="cpu")
    assert torch.equal(fp32.model.model.rotary_emb.inv_freq, plain.model.model.rotary_emb.inv_freq)

"""A model device-mapped over two CPU "devices" (accelerate's hooks on, as on two GPUs): the SFT
loss's index and targets and the Scorer's positions sit where the tensors they index live, and
the results equal the unsharded model's."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from lofit_bench.engine.models import load_model
from lofit_bench.engine.scoring import Scorer
from lofit_bench.engine.training import labelled_positions_loss

PER_LAYER_CPU_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                     "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
INPUTS = {
    "input_ids": torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]),
    "labels": torch.tensor([[-100, -100, -100, 8, 9, 10], [-100, -100, 13, 14, -100, -100]]),
}


def test_the_sft_loss_indexes_with_a_portable_index_and_scores_where_the_logits_are() -> None:
    """The LM head on another device (meta stands for it): the kept positions come as a CPU index
    (valid for hidden states on any device) and the targets follow the logits."""
    seen = {}

    def head_on_another_device(input_ids, attention_mask, logits_to_keep, use_cache):
        seen["index_device"] = logits_to_keep.device
        return SimpleNamespace(logits=torch.zeros(2, len(logits_to_keep), 300, device="meta"))

    loss = labelled_positions_loss(head_on_another_device, INPUTS)
    assert seen["index_device"].type == "cpu" and loss.device.type == "meta"


def test_a_device_mapped_model_gives_the_unsharded_loss_and_scores() -> None:
    plain = load_model("tiny-random-llama", device="cpu")
    mapped = load_model("tiny-random-llama", device="cpu", device_map=PER_LAYER_CPU_MAP)
    assert hasattr(mapped.model.model.layers[0], "_hf_hook")
    assert torch.equal(labelled_positions_loss(mapped.model, INPUTS), labelled_positions_loss(plain.model, INPUTS))
    requests = [("A shared context that is long enough to cache: " * 2, answer) for answer in (" yes", " no", " maybe so")]
    requests += [("Short", " one"), ("Other", " two words")]
    for reuse in (True, False):
        scores = [Scorer(lm.model, lm.tokenizer, reuse_context_cache=reuse).loglikelihoods(requests) for lm in (plain, mapped)]
        assert scores[0] == scores[1]

"""LoReFT: pyreft's position rule, exact counts (2 * r * d + r per intervention), R stays
orthonormal, only the interventions train and only at the prompt's first and last tokens
(training, scoring and KV-cached generation alike), exact removal, save/load, a sweep."""

from __future__ import annotations

import json

import pytest
import torch
from method_helpers import TINY, small_budget

from lofit_bench import plugins
from lofit_bench.engine.models import load_model
from lofit_bench.engine.scoring import Scorer, cache_argument
from lofit_bench.errors import UserError
from lofit_bench.method import Capabilities, FitContext
from lofit_bench.methods.loreft import LoReFT, LoReFTConfig, LoReFTEdits, edited_positions
from lofit_bench.prompt_positions import PromptSpans, declare_prompt
from lofit_bench.sweep.runner import plan_sweep, run_sweep

PROMPT = "Alice is Bob's sister. Who is Alice to Bob?"


def logits(lm, text: str = PROMPT) -> torch.Tensor:
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad(), declare_prompt(lm.model, PromptSpans.right_padded([ids.shape[1]])):
        return lm.model(input_ids=ids).logits


def context(lm, tmp_path, task="mquake", **budget) -> FitContext:
    task_object = plugins.get_host().tasks.get(task)()
    return FitContext(lm, task_object, task_object.folds[0], small_budget(**budget), 0, tmp_path)


def attached(lm, layers=(0, 1), rank=8, first=3, last=3, tied=False, seed=0) -> LoReFT:
    """A LoReFT with freshly initialised (not identity) interventions, without training."""
    method = LoReFT()
    method.prepare(lm)
    method._attach(LoReFTEdits(lm.layout, list(layers), rank, first, last, tied, 0.0, seed))
    return method


@pytest.mark.parametrize(
    ("length", "first", "last", "prefix", "suffix"),
    [(10, 3, 3, [0, 1, 2], [7, 8, 9]), (5, 3, 3, [0, 1], [3, 4]), (4, 3, 3, [0, 1], [2, 3]),
     (1, 1, 1, [], []), (10, 1, 0, [0], []), (7, 0, 2, [], [5, 6])],
)
def test_positions_follow_pyreft(length, first, last, prefix, suffix):
    assert [list(group) for group in edited_positions(length, first, last)] == [prefix, suffix]


def test_prompt_spans_come_from_the_completion_start_or_the_real_tokens():
    completion = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 0, 0]])  # row 2: completion truncated away
    attention = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    assert PromptSpans.before_first(completion, attention) == PromptSpans((0, 0), (2, 3))
    assert PromptSpans.left_padded(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])) == PromptSpans((2, 0), (2, 4))


@pytest.mark.parametrize(
    ("layers", "rank", "first", "last", "tied", "interventions"),
    [((0, 1), 8, 3, 3, False, 4), ((0, 1), 8, 3, 3, True, 2), ((0, 1), 4, 1, 0, False, 2), ((1,), 4, 1, 1, False, 2)],
)
def test_counts_are_two_r_d_plus_r_per_intervention(tiny_lm, layers, rank, first, last, tied, interventions):
    method = attached(tiny_lm, layers, rank, first, last, tied)
    assert method.edits.interventions == interventions
    assert method.trainable_parameters() == interventions * (2 * rank * 64 + rank)
    method.remove()


def test_training_edits_prompt_positions_only_and_removal_restores(builtin_host, tiny_lm, tmp_path, monkeypatch):
    declared = []
    real_set = LoReFTEdits.set_prompt
    monkeypatch.setattr(LoReFTEdits, "set_prompt", lambda self, spans: (declared.append(spans), real_set(self, spans))[1])
    base = {name: tensor.clone() for name, tensor in tiny_lm.model.state_dict().items()}
    with torch.no_grad():
        before = tiny_lm.model(input_ids=tiny_lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]).logits
    method = LoReFT(LoReFTConfig(learning_rate=0.01))
    method.prepare(tiny_lm)
    run = context(tiny_lm, tmp_path, batch_size=4)
    fit = method.fit(run)
    assert fit["hyperparameters"]["positions"] == "f3+l3" and fit["hyperparameters"]["rank"] == 8  # Table 8, MQuAKE
    prompt_lengths = sorted(len(tiny_lm.tokenizer(example.prompt)["input_ids"]) for example in run.training_examples())
    spans = [spans for spans in declared if spans is not None]
    assert sorted(length for spans_ in spans for length in spans_.lengths) == prompt_lengths  # one declaration per batch
    assert all(set(spans_.starts) == {0} and not spans_.reference for spans_ in spans)
    trainable = [name for name, parameter in tiny_lm.model.named_parameters() if parameter.requires_grad]
    assert trainable and all(name.startswith("loreft.sites.") for name in trainable)
    state = tiny_lm.model.state_dict()
    assert all(torch.equal(base[name], state[name]) for name in base)
    for layer in method.edits.sites.values():
        for intervention in layer.values():
            basis = intervention.rotation.weight
            assert torch.allclose(basis.T @ basis, torch.eye(8), atol=1e-5)  # R keeps orthonormal rows
    method.remove()
    with torch.no_grad():
        after = tiny_lm.model(input_ids=tiny_lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]).logits
    assert torch.equal(after, before)  # no declaration needed: nothing is attached any more
    assert not hasattr(tiny_lm.model, "loreft")
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in tiny_lm.model.modules())


def test_a_forward_without_a_declared_prompt_fails_loudly(tiny_lm):
    attached(tiny_lm)
    with pytest.raises(RuntimeError, match="did not say where its prompt is"):
        tiny_lm.model(input_ids=torch.tensor([[5, 6, 7]]))


def test_only_the_declared_positions_change(tiny_lm):
    ids = tiny_lm.tokenizer(PROMPT + " His sister.", return_tensors="pt")["input_ids"]
    prompt = len(tiny_lm.tokenizer(PROMPT)["input_ids"])
    attached(tiny_lm, layers=(0,))
    outputs = []  # layer 0's output, read after the edit hook
    tiny_lm.layout.decoder_layers(tiny_lm.model)[0].register_forward_hook(
        lambda module, args, output: outputs.append(output[0] if isinstance(output, tuple) else output))
    spans = PromptSpans.right_padded([prompt])
    with torch.no_grad():
        for declared in (spans.as_reference(), spans):  # the reference pass is the base model
            with declare_prompt(tiny_lm.model, declared):
                tiny_lm.model(input_ids=ids)
    changed = (outputs[0] != outputs[1]).any(dim=-1)[0].nonzero().squeeze(1).tolist()
    assert changed == [0, 1, 2, prompt - 3, prompt - 2, prompt - 1]


def test_scoring_and_cached_generation_edit_the_prompt_only(tiny_lm):
    method = attached(tiny_lm)
    model, tokenizer = tiny_lm.model, tiny_lm.tokenizer
    scorer = Scorer(model, tokenizer, batch_size=4)
    context_text, continuation = "Q: Who is Alice to Bob?\nA:", " his sister"
    [score] = scorer.loglikelihoods([(context_text, continuation)])
    context_ids, continuation_ids = scorer.encode_pair(context_text, continuation)
    with torch.no_grad():  # context edited in its own call, continuation on the KV cache, unedited
        with declare_prompt(model, PromptSpans.right_padded([len(context_ids)])):
            first = model(input_ids=torch.tensor([context_ids]), use_cache=True)
        rest = model(input_ids=torch.tensor([continuation_ids]), use_cache=True,
                     **{cache_argument(model): first.past_key_values})
    log_probs = torch.log_softmax(torch.cat([first.logits[:, -1:], rest.logits[:, :-1]], dim=1).float(), dim=-1)
    assert score == pytest.approx(float(log_probs[0, torch.arange(len(continuation_ids)), continuation_ids].sum()), abs=1e-4)

    prompts = ["Who is Alice?", "Q: Who is Alice to Bob, her brother?"]  # left padding differs per row
    generations = scorer.generate(prompts, max_new_tokens=5)
    for prompt, generation in zip(prompts, generations, strict=True):
        ids = tokenizer(prompt)["input_ids"]
        sequence = list(ids)
        with torch.no_grad():
            for _ in range(5):  # greedy by full recomputation: the prompt edited, new tokens not
                with declare_prompt(model, PromptSpans.right_padded([len(ids)])):
                    sequence.append(int(model(input_ids=torch.tensor([sequence])).logits[0, -1].argmax()))
        assert tokenizer.decode(sequence[len(ids):], skip_special_tokens=True) == generation.new_text
    method.remove()


def test_save_and_load_round_trip_gives_identical_logits(builtin_host, tiny_lm, tmp_path):
    method = LoReFT(LoReFTConfig(learning_rate=0.01, tied=True, layers=[1]))
    method.prepare(tiny_lm)
    method.fit(context(tiny_lm, tmp_path, train_examples=4))
    expected = logits(tiny_lm)
    method.save(tmp_path / "state")
    method.remove()
    fresh = load_model("tiny-random-llama", device="cpu")
    restored = LoReFT()
    restored.prepare(fresh)
    restored.load(tmp_path / "state")
    assert restored.config == method.config and restored.trainable_parameters() == 2 * 8 * 64 + 8
    assert torch.equal(logits(fresh), expected)


def test_dpo_declares_the_reference_pass_and_a_clutrr_sweep_is_recorded(builtin_host, tiny_lm, tmp_path, monkeypatch):
    references = []
    real_set = LoReFTEdits.set_prompt
    monkeypatch.setattr(LoReFTEdits, "set_prompt", lambda self, spans: (
        references.append(spans.reference) if spans is not None else None, real_set(self, spans))[1])
    method = LoReFT()
    method.prepare(tiny_lm)
    fit = method.fit(context(tiny_lm, tmp_path, task="truthfulqa", train_examples=4, batch_size=4, max_length=256))
    assert fit["hyperparameters"]["positions"] == "f1+l1" and fit["hyperparameters"]["rank"] == 4  # Table 8, TQA
    assert references == [True, False]  # trl's precomputed reference (base model), then one training step
    method.remove()

    [outcome] = run_sweep(plan_sweep(["loreft"], ["clutrr"], small_budget(), TINY), tmp_path / "sweep",
                          progress=False, echo=lambda _: None, executor="inline")
    record = json.loads(outcome.path.read_text())
    assert record["status"] == "ok", record.get("error")
    assert record["trainable_parameters"]["count"] == 2 * 2 * (2 * 8 * 64 + 8)
    assert record["folds"]["main"]["fit"]["hyperparameters"]["learning_rate"] == 9e-4


def test_bad_options_fail_before_anything_runs(builtin_host):
    for options, message in (
        ({"first_positions": 0, "last_positions": 0}, "cannot both be 0"),
        ({"layers": [-1]}, r"layers \(each item\) must be >= 0"),
        ({"rank": 0}, "rank must be >= 1"),
        ({"weight_decay": 0.01}, "unknown option"),  # fixed at 0: decay would zero R
    ):
        with pytest.raises(UserError, match=message):
            plan_sweep(["loreft"], ["clutrr"], small_budget(), TINY, method_options={"loreft": options})


def test_loreft_declares_prompt_positions_and_an_undeclared_scorer_fails_loudly(tiny_lm):
    method = attached(tiny_lm)
    assert method.capabilities == Capabilities(needs_prompt_positions=True)
    try:
        with pytest.raises(RuntimeError, match="do not declare needs_prompt_positions"):
            Scorer(tiny_lm.model, tiny_lm.tokenizer, capabilities=Capabilities()).loglikelihoods([("Q:", " A")])
        declared = Scorer(tiny_lm.model, tiny_lm.tokenizer, capabilities=method.capabilities)
        assert declared.loglikelihoods([("Q: who?", " A")]) == Scorer(tiny_lm.model, tiny_lm.tokenizer).loglikelihoods(
            [("Q: who?", " A")]
        )
    finally:
        method.remove()

"""The LM head's cost: Gemma-3-270M (262,144-token vocabulary) next to SmolLM2-135M (49,152),
measured in the same run.

For each model: training tokens/s (one LoFiT-style SFT step on 8 CLUTRR examples, the loss on
completion positions only, as the trainer runs it), scoring tokens/s (TruthfulQA MC, 8
questions) and generation tokens/s (16 CLUTRR prompts, 16 new tokens), each model timed
alternately with the other; and the LM head's share of a no-grad forward over the CLUTRR
batch, ``1 - t(logits at the last position) / t(logits at every position)``, which is what
the harness saves by running the head only where logits are read (the SFT loss, MC scoring's
context pass and shared prefix, generation's prefill through transformers).

Run with ``tox -e bench -- benchmarks/test_lm_head_cost.py -s`` (needs ``lofit-bench[gemma]``).
"""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.timing import clutrr_sft_batch, interleaved_ratio, report
from lofit_bench.engine.interventions import HeadIntervention
from lofit_bench.engine.scoring import Scorer
from lofit_bench.tasks.clutrr import Clutrr
from lofit_bench.tasks.truthfulqa import TruthfulQA, scoring_context

BATCH = 8
QUESTIONS = 8
PROMPTS = 16


@pytest.fixture(scope="module")
def gemma():
    from lofit_bench.engine.models import load_model
    from lofit_bench.errors import UserError

    try:
        return load_model("gemma3-270m")
    except UserError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def models(bundled, gemma):
    return {"smollm2-135m": bundled, "gemma3-270m": gemma}


def _training_step(lm):
    """A step of a LoFiT bias on one head in every third layer: (step function, tokens per
    step, the attachment to remove afterwards: the bundled model is shared by every benchmark)."""
    trainer, batch = clutrr_sft_batch(lm, BATCH)
    heads = [(layer, 0) for layer in range(0, lm.layout.n_layers, 3)]
    intervention = HeadIntervention(lm.layout, heads, shift=True).init_normal_(1e-3, seed=0)
    attachment = intervention.attach(lm.model, lm.layout, "benchmark_lm_head")
    parameters = list(intervention.parameters())

    def step():
        loss = trainer.compute_loss(lm.model, dict(batch))
        loss.backward()
        for parameter in parameters:
            parameter.grad = None

    return step, int(batch["attention_mask"].sum()), attachment


def _tokens_per_second(call, tokens: int | None = None, scorer: Scorer | None = None) -> float:
    """Tokens per second of ``call()``: ``tokens`` of them, or as many as ``scorer`` counted."""
    before = scorer.tokens_processed if scorer else 0
    started = time.perf_counter()
    call()
    seconds = time.perf_counter() - started
    return (scorer.tokens_processed - before if scorer else tokens) / seconds


def test_lm_head_share_of_a_forward(benchmark, models):
    """With logits at every position the head is most of Gemma's forward; at one position it is not."""
    shares = {}
    for name, lm in models.items():
        _, batch = clutrr_sft_batch(lm, BATCH)

        def forward(keep: int, lm=lm, batch=batch):
            with torch.no_grad():
                lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)

        result = interleaved_ratio(lambda forward=forward: forward(1), lambda forward=forward: forward(0), rounds=3)
        shares[name] = round(1 - result["ratio"], 3)
        report(benchmark, f"{name}: forward with logits at the last position / at every position "
               f"(LM head share {shares[name]:.0%}, batch {list(batch['input_ids'].shape)})", result, "-")
    benchmark.extra_info["lm_head_share"] = shares
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_tokens_per_second_next_to_smollm2(benchmark, models):
    """Training, scoring and generation tokens/s of both models, timed alternately."""
    task = TruthfulQA()
    requests = []
    for question in task.questions("fold_0", "test")[:QUESTIONS]:
        requests += [(scoring_context(question.question), " " + answer) for answer in question.true_answers + question.false_answers]
    prompts = [story.prompt for story in Clutrr().items("main", "test")[:PROMPTS]]
    rates: dict[str, dict[str, list[float]]] = {name: {"train": [], "score": [], "generate": []} for name in models}
    work, attachments = {}, []
    for name, lm in models.items():
        step, tokens, attachment = _training_step(lm)
        attachments.append(attachment)
        work[name] = (step, tokens, Scorer(lm.model, lm.tokenizer, batch_size=16))
        step()  # warm-up
    try:
        for _ in range(2):
            for name, (step, tokens, scorer) in work.items():  # alternate the models
                rates[name]["train"].append(_tokens_per_second(step, tokens=tokens))
                rates[name]["score"].append(_tokens_per_second(lambda scorer=scorer: scorer.loglikelihoods(requests), scorer=scorer))
                rates[name]["generate"].append(_tokens_per_second(lambda scorer=scorer: scorer.generate(prompts, max_new_tokens=16), scorer=scorer))
    finally:
        for attachment in attachments:
            attachment.remove()
    best = {name: {kind: round(max(values), 1) for kind, values in kinds.items()} for name, kinds in rates.items()}
    ratios = {kind: round(best["gemma3-270m"][kind] / best["smollm2-135m"][kind], 3) for kind in ("train", "score", "generate")}
    benchmark.extra_info.update({"tokens_per_s": best, "gemma_over_smollm2": ratios, "threads": torch.get_num_threads()})
    print(f"\ntokens/s (best of 2, {torch.get_num_threads()} threads): {best}; Gemma / SmolLM2: {ratios}")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)

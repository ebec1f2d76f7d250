"""Goals 3 and 4 of the performance issue: our TruthfulQA MC scoring and our greedy generation
against lm-eval's HFLM on the same requests (scores identical to 1e-4)."""

from __future__ import annotations

import pytest

from benchmarks.timing import interleaved_ratio, report
from lofit_bench.engine.scoring import Scorer

QUESTIONS = 8
PROMPTS = 48


@pytest.fixture(scope="module")
def hflm(bundled):
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=bundled.model, tokenizer=bundled.tokenizer, batch_size=16, max_length=2048)


def _instances(request_type, arguments):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=request_type, doc={}, arguments=item, idx=index) for index, item in enumerate(arguments)]


def test_truthfulqa_scoring_vs_lm_eval(benchmark, bundled, hflm):
    from lofit_bench.tasks.truthfulqa import TruthfulQA, scoring_context

    task = TruthfulQA()
    requests = []
    for question in task.questions("fold_0", "test")[:QUESTIONS]:
        context = scoring_context(question.question)
        requests += [(context, " " + answer) for answer in question.true_answers + question.false_answers]
    scorer = Scorer(bundled.model, bundled.tokenizer, batch_size=16)
    ours = scorer.loglikelihoods(requests)
    theirs = [value for value, _ in hflm.loglikelihood(_instances("loglikelihood", requests), disable_tqdm=True)]
    worst = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(ours, theirs, strict=True))
    assert worst < 1e-4, f"scores differ from lm-eval's by {worst:.2e} (relative)"

    def lm_eval_scoring():
        hflm.loglikelihood(_instances("loglikelihood", requests), disable_tqdm=True)

    result = interleaved_ratio(lm_eval_scoring, lambda: scorer.loglikelihoods(requests), rounds=3)
    benchmark.pedantic(scorer.loglikelihoods, args=(requests,), rounds=2, iterations=1)
    report(benchmark, f"lm-eval HFLM / ours, TruthfulQA MC ({QUESTIONS} questions, {len(requests)} answers)",
           result | {"max_relative_difference": worst}, ">= 5")


def test_generation_vs_lm_eval(benchmark, bundled, hflm):
    from lofit_bench.tasks.clutrr import Clutrr

    prompts = [story.prompt for story in Clutrr().stories("main", "test")[:PROMPTS]]
    scorer = Scorer(bundled.model, bundled.tokenizer, batch_size=16)
    generation_arguments = {"until": [bundled.tokenizer.eos_token], "max_gen_toks": 16, "do_sample": False}
    requests = _instances("generate_until", [(prompt, dict(generation_arguments)) for prompt in prompts])

    def ours():
        return scorer.generate(prompts, max_new_tokens=16)

    def theirs():
        return hflm.generate_until(requests, disable_tqdm=True)

    generations = ours()
    texts = theirs()
    same = sum(generation.new_text == text for generation, text in zip(generations, texts, strict=True))
    assert same == len(prompts), f"{len(prompts) - same} of {len(prompts)} generations differ from lm-eval's"
    new_tokens = sum(generation.new_tokens for generation in generations)
    result = interleaved_ratio(theirs, ours, rounds=3)
    result["our_tokens_per_s"] = round(new_tokens / result["baseline_s"], 1)
    result["lm_eval_tokens_per_s"] = round(new_tokens / result["subject_s"], 1)
    benchmark.pedantic(ours, rounds=2, iterations=1)
    report(benchmark, f"lm-eval generate_until / ours, CLUTRR greedy ({PROMPTS} prompts, 16 tokens, identical texts)",
           result, ">= 1 (ours at least as fast)")

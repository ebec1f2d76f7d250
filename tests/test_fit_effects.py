"""Beyond accuracy: side effects on held-out text, retention on other tasks, MQuAKE locality."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tasks_helpers import FakeScorer

from lofit_bench.budget import get_budget
from lofit_bench.engine.interventions import HeadIntervention
from lofit_bench.engine.locality import answers, locality
from lofit_bench.engine.side_effects import base_distribution, heldout_texts, measure_side_effects
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep
from lofit_bench.tasks.mquake import Mquake

TINY = ModelSettings("tiny-random-llama", device="cpu")

pytestmark = pytest.mark.usefixtures("builtin_plugins_only")


def test_the_held_out_text_is_real_prose_shipped_with_the_package():
    texts = heldout_texts(100)
    assert len(texts) == 53 and all(len(text) >= 300 for text in texts)
    assert texts[0].startswith("These equivalences assume that")
    assert heldout_texts(2) == texts[:2]


def test_an_identity_intervention_changes_nothing(tiny_lm):
    base = base_distribution(tiny_lm.model, tiny_lm.tokenizer, heldout_texts(3), batch_size=2)
    zeros = HeadIntervention(tiny_lm.layout, [(0, 1), (1, 2)], scale=True, shift=True)  # x * (1 + 0) + 0
    with zeros.attach(tiny_lm.model, tiny_lm.layout, "identity"):
        effects = measure_side_effects(base, tiny_lm.model)
    assert effects.kl_from_base == 0.0 and effects.cross_entropy_change == 0.0
    assert effects.texts == 3 and effects.tokens == int(base.attention_mask.sum()) == 3 * 64  # byte tokenizer: 64 each
    assert effects.cross_entropy_base == effects.cross_entropy_fitted > 0


def test_a_planted_logit_shift_gives_its_known_kl_and_cross_entropy_change(tiny_lm):
    """Adding c to token j's logit turns p into q = p * exp(c [v = j]) / (1 - p_j + p_j e^c), so
    KL(p || q) = log(1 - p_j + p_j e^c) - c p_j at every position."""
    base = base_distribution(tiny_lm.model, tiny_lm.tokenizer, heldout_texts(2), batch_size=4)
    shift, token = 3.0, 101

    def plant(module, inputs, output):
        output = output.clone()
        output[..., token] += shift
        return output

    handle = tiny_lm.model.lm_head.register_forward_hook(plant)
    try:
        effects = measure_side_effects(base, tiny_lm.model)
    finally:
        handle.remove()
    p_j = base.log_probs[..., token].exp().double()
    expected_kl = (torch.log(1 - p_j + p_j * math.exp(shift)) - shift * p_j).mean()
    assert effects.kl_from_base == pytest.approx(float(expected_kl), rel=1e-5)
    normaliser = torch.log(1 - p_j + p_j * math.exp(shift))[:, :-1]
    targets = base.input_ids[:, 1:]
    expected_change = (normaliser - shift * (targets == token)).mean()  # every position predicts a real token here
    assert effects.cross_entropy_change == pytest.approx(float(expected_change), rel=1e-5)
    assert effects.kl_from_base > 0


def test_locality_counts_the_facts_whose_answer_stayed_the_base_models():
    facts = ["Q: Who is Emily Blunt married to? A:", "Q: What is the capital of France? A:", "Q: Who wrote Hamlet? A:"]
    base = answers(FakeScorer(reply=lambda prompt: {"France": " Paris.", "Hamlet": " Shakespeare"}.get(prompt.split()[-2].rstrip("?"), " John Krasinski")), facts)
    fitted = answers(FakeScorer(reply=lambda prompt: " paris\nQ: more" if "France" in prompt else " Sweden"), facts)
    assert base == ["john krasinski", "paris", "shakespeare"] and fitted == ["sweden", "paris", "sweden"]
    result = locality(base, fitted)
    assert (result.facts, result.unchanged, result.share_unchanged) == (3, 1, 1 / 3)
    assert locality(base, base).share_unchanged == 1.0


def test_mquake_locality_facts_are_the_distinct_single_hops_of_the_test_cases_scored():
    task = Mquake()
    facts = task.locality_facts("main", limit=2)
    cases = task.cases("main", "test")[:2]
    questions = list(dict.fromkeys(question for case in cases for question, _ in case.single_hops))
    assert [prompt for _, prompt in facts] == [f"Q: {question} A:" for question in questions]
    assert facts[0] == ("case-139-hop-0", "Q: Who is Emily Blunt married to? A:")
    train = {question for case in task.cases("main", "train") for question in [case.question]}
    assert not train & set(questions)


def smoke_sweep(methods, out, **changes):
    budget = get_budget("smoke").replace(
        **({"tune": False, "train_examples": 4, "eval_examples": 3, "side_effect_texts": 2} | changes)
    )
    outcomes = run_sweep(plan_sweep(methods, ["mquake"], budget, TINY), out, progress=False, echo=lambda *_: None, executor="inline")
    records = {outcome.spec.method: json.loads(outcome.path.read_text()) for outcome in outcomes}
    for record in records.values():
        assert record["status"] == "ok", record.get("error")
    return records


def test_runs_record_side_effects_retention_and_locality_per_fold(tmp_path):
    """Zero-shot changes nothing; retention on another task starts from the same base score for
    every method; the task a run trains on is not scored again as "retention"."""
    records = smoke_sweep(["zero-shot", "lofit"], tmp_path, also_eval=("clutrr", "mquake"))
    zero, lofit = records["zero-shot"]["folds"]["main"], records["lofit"]["folds"]["main"]
    assert zero["side_effects"]["kl_from_base"] == 0.0 and zero["side_effects"]["cross_entropy_change"] == 0.0
    assert zero["locality"]["share_unchanged"] == 1.0 and zero["locality"]["facts"] >= 3
    assert set(zero["retention"]) == set(lofit["retention"]) == {"clutrr"}  # mquake is the fitted task
    assert zero["retention"]["clutrr"]["change"] == 0.0
    kept = lofit["retention"]["clutrr"]
    assert kept["examples"] == 3
    assert kept["base_metrics"] == zero["retention"]["clutrr"]["base_metrics"] == zero["retention"]["clutrr"]["fitted_metrics"]
    assert kept["metric"] == "exact_match" and kept["change"] == kept["fitted"] - kept["base"]
    assert lofit["side_effects"]["kl_from_base"] > 0 and lofit["side_effects"]["texts"] == 2
    assert records["lofit"]["task"]["secondary_metrics"] == ["efficacy", "new_answer_log_prob"]
    assert set(lofit["metrics"]) == {"exact_match", "exact_match_lenient", "efficacy", "new_answer_log_prob"}
    assert records["lofit"]["timings"]["fit_effects"] > 0
    speed = lofit["inference_speed"]
    assert speed["served_as"] == "merged" and speed["prompts"] == 2 and speed["new_tokens"] == 16
    assert min(speed["base_tokens_per_s"], speed["as_run_tokens_per_s"], speed["served_tokens_per_s"]) > 0
    assert zero["inference_speed"]["served_as"] == "as run"

    from lofit_bench.report.build import render_json, render_markdown
    from lofit_bench.report.write import build_report

    report = build_report(tmp_path)
    markdown = render_markdown(report)
    assert "## Beyond accuracy: side effects, locality, inference speed" in markdown
    assert "## Retention: other tasks after the fit" in markdown
    from lofit_bench.report.side_effects import effects_rows, retention_table

    headers, table = retention_table(effects_rows(report.records))
    assert headers == ["model", "fitted on", "method", "clutrr"]
    assert ["tiny-random-llama", "mquake", "zero-shot", f"{100 * zero['retention']['clutrr']['base']:.1f} (+0.0)"] in table
    assert "Pareto front of accuracy vs KL from base, mquake on tiny-random-llama: " in markdown
    beyond = render_json(report)["beyond_accuracy"]
    zero_row = next(row for row in beyond["rows"] if row["method"] == "zero-shot")
    assert zero_row["kl_from_base"] == 0.0 and zero_row["locality"] == 1.0 and zero_row["retention"]["clutrr"][1] == 0.0
    points = beyond["accuracy_vs_kl"][0]["points"]
    assert {point["method"] for point in points} == {"zero-shot", "lofit"}
    assert "Accuracy vs KL from the base model" in (tmp_path / "report.html").read_text()


def test_side_effects_are_off_with_zero_texts_and_an_unknown_retention_task_is_a_user_error(tmp_path):
    from lofit_bench.errors import UserError

    records = smoke_sweep(["zero-shot"], tmp_path, side_effect_texts=0)
    fold = records["zero-shot"]["folds"]["main"]
    assert "side_effects" not in fold and fold["retention"] == {}
    with pytest.raises(UserError, match="truthfulq"):
        plan_sweep(["zero-shot"], ["mquake"], get_budget("smoke").replace(also_eval=("truthfulq",)), TINY)


def logits_of(lm, text="The quick brown fox jumps over the lazy dog."):
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


@pytest.mark.parametrize("kinds", [{"shift": True}, {"scale": True, "shift": True}])
def test_merged_and_hooked_head_edits_give_the_same_logits_and_unmerging_restores_the_model(tiny_lm, kinds):
    plain = logits_of(tiny_lm)
    weights = {name: tensor.clone() for name, tensor in tiny_lm.model.state_dict().items()}
    edits = HeadIntervention(tiny_lm.layout, [(0, 1), (1, 0), (1, 3)], **kinds).init_normal_(0.5, seed=0)
    with edits.attach(tiny_lm.model, tiny_lm.layout, "lofit_like") as attachment:
        hooked = logits_of(tiny_lm)
        with attachment.merged(tiny_lm.layout):
            merged = logits_of(tiny_lm)
            assert tiny_lm.layout.attention_output(tiny_lm.model, 0).bias is not None  # the shift lives in a bias now
        assert torch.equal(logits_of(tiny_lm), hooked)  # hooks back, weights back
    assert not torch.allclose(hooked, plain, atol=1e-3)
    assert torch.allclose(merged, hooked, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits_of(tiny_lm), plain)
    assert all(torch.equal(tensor, weights[name]) for name, tensor in tiny_lm.model.state_dict().items())
    assert tiny_lm.layout.attention_output(tiny_lm.model, 0).bias is None


def test_merged_lora_gives_the_logits_of_the_adapter_as_run(tiny_lm):
    from lofit_bench.methods.lora import LoRA

    method = LoRA.from_options({})
    method.prepare(tiny_lm)
    with torch.no_grad():
        for name, parameter in method.evaluation_model().named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    as_run = logits_of(tiny_lm)
    with method.merged() as merged:
        served = logits_of(tiny_lm)
    assert merged and torch.allclose(served, as_run, atol=1e-5, rtol=1e-5)
    assert torch.allclose(logits_of(tiny_lm), as_run, atol=1e-6)
    method.remove()


def test_the_pareto_front_keeps_methods_no_other_beats_with_less_change():
    from lofit_bench.report.side_effects import EffectsRow, accuracy_vs_kl, pareto_front

    assert pareto_front([(0.0, 0.1), (0.5, 0.6), (0.4, 0.7), (0.0, 0.1), (0.9, 0.7)]) == [0, 2, 3]
    rows = [
        EffectsRow("m", "mquake", name, 1, "exact_match", accuracy, kl_from_base=kl)
        for name, accuracy, kl in [("zero-shot", 0.0, 0.0), ("lofit", 0.6, 0.02), ("full-ft", 0.55, 0.9)]
    ]
    points = accuracy_vs_kl(rows)[("m", "mquake")]
    assert [(point["method"], point["pareto"]) for point in points] == [("zero-shot", True), ("lofit", True), ("full-ft", False)]


@pytest.mark.skipif(__import__("sys").version.split()[0] != "3.11.7", reason="the passages were cut from CPython 3.11.7's topics")
def test_the_held_out_text_is_what_the_documented_rule_cuts_from_pydoc_data():
    import pydoc_data.topics
    import re

    passages = []
    for name in sorted(pydoc_data.topics.topics):
        count = 0
        for block in re.split(r"\n\s*\n", pydoc_data.topics.topics[name]):
            lines = block.split("\n")
            if any(line.startswith(" ") for line in lines) or any(mark in block for mark in "*="):
                continue
            text = " ".join(line.strip() for line in lines).strip()
            if 300 <= len(text) <= 1200 and text.endswith("."):
                passages.append(text)
                count += 1
                if count == 2:
                    break
    assert heldout_texts(1000) == passages

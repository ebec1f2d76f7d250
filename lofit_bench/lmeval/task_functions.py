"""Scoring functions of the lm-eval tasks that `lofit-bench export-lm-eval` writes.

This file is copied verbatim next to the exported YAML files as ``utils.py``; the YAMLs name
its functions as ``!function utils.<name>``. Each function turns lm-eval's raw responses for
one document into the harness's metrics with the harness's own rules (imported from
:mod:`lofit_bench.metrics`), so lofit-bench must be importable wherever lm-eval runs them.

Generation tasks rebuild the harness's "whole decoded sequence" as prompt + generated text:
the two are equal for tokenizers whose decoding is concatenative (byte-level BPE, as
SmolLM2, GPT-2, Llama-3 and Qwen use); a SentencePiece tokenizer that drops the leading
space of a separately decoded continuation can make MQuAKE's strict (unstripped) parse
differ.
"""

from __future__ import annotations

from lofit_bench.metrics import (
    matches_any_lenient,
    matches_any_strict,
    parse_clutrr_answer,
    parse_mquake_answer_strict,
    truthfulqa_mc1,
    truthfulqa_mc2,
)


def _log_likelihoods(results) -> list[float]:
    """lm-eval hands a multiple-choice document one (log-likelihood, is-greedy) per choice."""
    return [float(result[0]) for result in results]


def process_truthfulqa_mc1(doc: dict, results) -> dict[str, float]:
    """Choices are [best answer, *incorrect answers]: the best must beat every incorrect one."""
    scores = _log_likelihoods(results)
    return {"mc1": truthfulqa_mc1(scores[0], scores[1:])}


def process_truthfulqa_mc2(doc: dict, results) -> dict[str, float]:
    """Choices are [*true answers, *false answers]; ``n_true`` says where the false ones start."""
    scores = _log_likelihoods(results)
    true_count = int(doc["n_true"])
    return {"mc2": truthfulqa_mc2(scores[:true_count], scores[true_count:])}


def process_clutrr(doc: dict, results) -> dict[str, float]:
    prediction = parse_clutrr_answer(doc["prompt"] + results[0])
    return {"exact_match": float(prediction == doc["gold"].lower())}


def process_mquake(doc: dict, results) -> dict[str, float]:
    prediction = parse_mquake_answer_strict(doc["prompt"] + results[0])
    return {
        "exact_match": float(matches_any_strict(prediction, doc["golds"])),
        "exact_match_lenient": float(matches_any_lenient(prediction, doc["golds"])),
    }

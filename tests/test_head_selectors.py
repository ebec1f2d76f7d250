"""Paper Table 2's other head selectors, on planted data: probe-layers picks every head of the
layer whose concatenated heads separate the pairs; bias-based ranks heads by the norm of a
stage-1 bias. And Appendix G's Jaccard overlap on planted head sets."""

from __future__ import annotations

import pytest
import torch
from report_helpers import fake_record, write

from lofit_bench import plugins
from lofit_bench.budget import get_budget
from lofit_bench.cli import main
from lofit_bench.engine.training import TrainResult
from lofit_bench.method import FitContext
from lofit_bench.methods import lofit as lofit_module
from lofit_bench.methods.iti import heads_of_best_layers, layer_probe_accuracies
from lofit_bench.methods.lofit import LoFiT, LoFiTConfig
from lofit_bench.report.build import render_markdown
from lofit_bench.report.head_overlap import jaccard, mean_overlap, overlap_matrix
from lofit_bench.report.write import build_report


def planted_pairs(n: int, generator: torch.Generator, layers: int = 3, heads: int = 2, dim: int = 4):
    """Positive/negative head activations [n, layers, heads, dim]: pure noise, except that
    layer 1 carries the label as +-2 on a direction spread over both of its heads."""
    positive = torch.randn(n, layers, heads, dim, generator=generator)
    negative = torch.randn(n, layers, heads, dim, generator=generator)
    signal = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]) * 2 / 2 ** 0.5
    positive[:, 1] += signal
    negative[:, 1] -= signal
    return positive, negative


def test_probe_layers_choose_every_head_of_the_layer_that_probes_best():
    generator = torch.Generator().manual_seed(0)
    train_positive, train_negative = planted_pairs(60, generator)
    held_positive, held_negative = planted_pairs(40, generator)
    accuracy = layer_probe_accuracies(train_positive, train_negative, held_positive, held_negative, seed=0)
    assert accuracy.shape == (3,)
    assert float(accuracy[1]) == 1.0 and float(accuracy.max()) == float(accuracy[1]) and float(accuracy[[0, 2]].max()) < 0.8
    ranking, layers = heads_of_best_layers(accuracy, n_heads=2, k=1)
    assert layers == [1]  # K = 1 rounds up to the whole layer: both heads
    assert [(layer, head) for layer, head, _ in ranking[:2]] == [(1, 0), (1, 1)]
    second_best = 0 if accuracy[0] >= accuracy[2] else 2
    assert heads_of_best_layers(accuracy, n_heads=2, k=3)[1] == sorted([1, second_best])


def test_heads_of_best_layers_break_ties_by_the_lower_layer():
    ranking, layers = heads_of_best_layers(torch.tensor([0.5, 0.9, 0.9]), n_heads=3, k=3)
    assert layers == [1] and ranking[0] == (1, 0, pytest.approx(0.9)) and ranking[3][0] == 2


def test_bias_based_selection_ranks_heads_by_the_norm_of_a_stage1_bias(builtin_host, tiny_lm, tmp_path, monkeypatch):
    """Stage 1 of the bias-based selector trains a bias v on every head (no scale); the K heads of
    largest ||v||_2 are tuned in stage 2. A fake trainer plants the stage-1 biases."""
    planted = {(1, 2): 5.0, (0, 3): 4.0, (1, 0): 3.0}  # every other head: 0.1
    calls = []

    def fake_train(model, tokenizer, examples, objective, budget, optimizer, seed, work_dir, **_):
        intervention = model.lofit_heads
        calls.append((work_dir.name, [name for name, _ in intervention.named_parameters()]))
        if work_dir.name == "head_selection":
            with torch.no_grad():
                for layer, site in intervention.sites.items():
                    assert site.scale is None and site.shift is not None
                    for row, head in enumerate(site.heads.tolist()):
                        site.shift[row] = torch.full((site.head_dim,), planted.get((int(layer), head), 0.1)) / site.head_dim ** 0.5
        return TrainResult(objective=objective, examples=len(examples), epochs=1, steps=1, seconds=0.0, tokens=0)

    monkeypatch.setattr(lofit_module, "train", fake_train)
    method = LoFiT(LoFiTConfig(heads=2, head_source="bias-based", stage2_learning_rate=1e-2))
    method.prepare(tiny_lm)
    task = plugins.get_host().tasks.get("clutrr")()
    budget = get_budget("smoke").replace(train_examples=4)
    fit = method.fit(FitContext(tiny_lm, task, task.folds[0], budget, 0, tmp_path))
    assert fit["heads"]["chosen"] == [[1, 2], [0, 3]]  # the two largest planted norms, best first
    assert [(entry["layer"], entry["head"]) for entry in fit["heads"]["ranking"][:3]] == [(1, 2), (0, 3), (1, 0)]
    assert fit["heads"]["ranking"][0]["score"] == pytest.approx(5.0)
    assert method.selection.source == "bias-based" and "bias v" in method.selection.score
    assert [name for name, _ in calls] == ["head_selection", "bias_tuning"]
    assert fit["hyperparameters"]["l1_lambda"] == 5e-3  # stage 1's settings: Table 6's CLUTRR row
    assert method.trainable_parameters() == 2 * tiny_lm.layout.head_dim
    method.remove()


def test_probe_layers_as_lofit_head_source_tunes_whole_layers(builtin_host, tiny_lm, tmp_path):
    method = LoFiT(LoFiTConfig(heads=1, head_source="probe-layers", stage2_learning_rate=1e-2))
    method.prepare(tiny_lm)
    task = plugins.get_host().tasks.get("clutrr")()
    budget = get_budget("smoke").replace(train_examples=8, dev_examples=4, max_length=1024, batch_size=4)
    fit = method.fit(FitContext(tiny_lm, task, task.folds[0], budget, 0, tmp_path))
    [layer] = fit["head_source"]["layers"]
    assert fit["heads"]["chosen"] == [[layer, head] for head in range(tiny_lm.layout.n_heads)]
    assert fit["stages"]["head_selection"] is None
    method.remove()


def test_jaccard_on_planted_head_sets():
    assert jaccard({(0, 1), (1, 2)}, {(0, 1), (1, 3)}) == pytest.approx(1 / 3)
    assert jaccard({(0, 1)}, {(0, 1)}) == 1.0 and jaccard({(0, 1)}, {(2, 2)}) == 0.0
    a, b, c = frozenset({(0, 0), (0, 1), (1, 1)}), frozenset({(0, 0), (0, 1), (1, 2)}), frozenset({(2, 0), (2, 1), (2, 2)})
    entries = {"lofit on clutrr": [(42, "main", a), (43, "main", b)], "lofit on mquake": [(42, "main", c), (43, "main", a)]}
    names, matrix = overlap_matrix(entries)
    assert names == ["lofit on clutrr", "lofit on mquake"]
    assert matrix[0][0] == pytest.approx(0.5)  # a vs b: 2 shared of 4
    assert matrix[1][1] == pytest.approx(0.0)  # c vs a
    assert matrix[0][1] == pytest.approx((0 + 1 + 0 + 0.5) / 4)  # every pair across the tasks
    assert mean_overlap([(42, "fold_0", a), (42, "fold_1", b)]) is None  # one seed: no pair across seeds


def _with_heads(record: dict, chosen: list[list[int]], task: str = "clutrr") -> dict:
    record["folds"]["main"]["fit"] = {"heads": {"chosen": chosen}}
    return record


def test_head_overlap_is_in_the_report_and_the_heads_command(tmp_path, capsys):
    write(tmp_path, [
        _with_heads(fake_record("lofit", 42, 0.5), [[0, 0], [0, 1], [1, 1]]),
        _with_heads(fake_record("lofit", 43, 0.6), [[0, 0], [0, 1], [1, 2]]),
        _with_heads(fake_record("lofit", 42, 0.2, task="mquake"), [[2, 0], [2, 1], [2, 2]]),
    ])
    markdown = render_markdown(build_report(tmp_path))
    assert "## Head overlap (Jaccard, paper Appendix G)" in markdown
    assert "| lofit on clutrr | 0.50              | 0.00              |" in markdown  # two seeds share 2 of 4 heads
    assert "| lofit on mquake | 0.00              | -                 |" in markdown  # one seed: no pair
    assert main(["heads", str(tmp_path)]) == 0  # no heads.json files, but the records' head sets
    output = capsys.readouterr().out
    assert "mean Jaccard similarity of chosen head sets" in output and "lofit on clutrr  0.50" in output

"""Goal 1 and 2 of the performance issue: a LoFiT stage-2 step against a no-grad forward, and
against the same step with the bias built into the model (no hooks)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.timing import clutrr_sft_batch, interleaved_ratio, report
from lofit_bench.engine.interventions import HeadIntervention

BATCH = 8
HEADS = [(layer, head) for layer, head in [(3, 1), (7, 4), (11, 0), (14, 8), (18, 2), (21, 5), (25, 3), (28, 6)]]


@pytest.fixture(scope="module")
def clutrr_batch(bundled):
    """One collated SFT batch of 8 CLUTRR training examples, as the trainer builds it."""
    return clutrr_sft_batch(bundled, BATCH)


def _step(trainer, model, batch, parameters):
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    for parameter in parameters:
        parameter.grad = None


def test_lofit_step_vs_no_grad_forward(benchmark, bundled, clutrr_batch):
    trainer, batch = clutrr_batch
    model, layout = bundled.model, bundled.layout
    intervention = HeadIntervention(layout, HEADS, shift=True).init_normal_(1e-3, seed=0)
    attachment = intervention.attach(model, layout, "benchmark_lofit")
    parameters = list(intervention.parameters())
    try:
        def forward():
            with torch.no_grad():
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

        result = interleaved_ratio(lambda: _step(trainer, model, batch, parameters), forward)
        benchmark.pedantic(_step, args=(trainer, model, batch, parameters), rounds=2, iterations=1)
    finally:
        attachment.remove()
    report(benchmark, "LoFiT stage-2 step / no-grad forward", result | {"batch": list(batch["input_ids"].shape)}, "<= 1.8")


def test_hook_overhead_vs_built_in_bias(benchmark, bundled, clutrr_batch):
    trainer, batch = clutrr_batch
    model, layout = bundled.model, bundled.layout
    layers = sorted({layer for layer, _ in HEADS})
    intervention = HeadIntervention(layout, HEADS, shift=True).init_normal_(1e-3, seed=0)
    hooked_parameters = list(intervention.parameters())

    def hooked():
        with intervention.attach(model, layout, "benchmark_hooks"):
            _step(trainer, model, batch, hooked_parameters)

    # The same edit with no hook: a trainable bias on o_proj of the same layers (o_proj(z + v)
    # = W z + W v, i.e. a bias W v on the projection's output).
    projections = [layout.attention_output(model, layer) for layer in layers]
    biases = [nn.Parameter(torch.zeros(projection.out_features)) for projection in projections]

    def built_in():
        for projection, bias in zip(projections, biases, strict=True):
            projection.bias = bias
        try:
            _step(trainer, model, batch, biases)
        finally:
            for projection in projections:
                projection.bias = None

    result = interleaved_ratio(hooked, built_in)
    benchmark.pedantic(hooked, rounds=2, iterations=1)
    report(benchmark, "hooked LoFiT step / built-in bias step", result, "<= 1.05")

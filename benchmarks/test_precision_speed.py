"""--precision bf16-mixed against fp32 on the bundled model, same batch (issue 29), and the cost
of computing a head edit and its projection in fp32 on a bf16 model (issue 34). Ratios only:
subject and baseline timed alternately in one run. On a CPU without AMX-BF16/AVX512-BF16 the
mixed ratios are expected above 1 (the harness warns there)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.test_training_speed import HEADS, _step
from benchmarks.timing import clutrr_sft_batch, interleaved_ratio, report
from lofit_bench.engine.interventions import HeadIntervention
from lofit_bench.engine.models import load_model
from lofit_bench.engine.precision import computing_in, cpu_has_native_bf16

BATCH = 8


@pytest.fixture(scope="module")
def clutrr_batch(bundled):
    return clutrr_sft_batch(bundled, BATCH)


def test_bf16_mixed_training_step_vs_fp32(benchmark, bundled, clutrr_batch):
    trainer, batch = clutrr_batch
    model, layout = bundled.model, bundled.layout
    intervention = HeadIntervention(layout, HEADS, shift=True).init_normal_(1e-3, seed=0)
    parameters = list(intervention.parameters())
    with intervention.attach(model, layout, "benchmark_precision"):
        def mixed():
            with computing_in("bf16-mixed", "cpu"):
                _step(trainer, model, batch, parameters)

        result = interleaved_ratio(mixed, lambda: _step(trainer, model, batch, parameters))
        benchmark.pedantic(mixed, rounds=2, iterations=1)
    report(benchmark, "LoFiT step bf16-mixed / fp32", result | {"native_bf16": cpu_has_native_bf16()}, "< 1 with bf16 units")


def test_bf16_mixed_forward_vs_fp32(benchmark, bundled, clutrr_batch):
    _, batch = clutrr_batch
    model = bundled.model

    def forward():
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def mixed():
        with computing_in("bf16-mixed", "cpu"):
            forward()

    result = interleaved_ratio(mixed, forward)
    benchmark.pedantic(mixed, rounds=2, iterations=1)
    report(benchmark, "no-grad forward bf16-mixed / fp32", result | {"native_bf16": cpu_has_native_bf16()}, "< 1 with bf16 units")


def test_fp32_edit_on_a_bf16_model_vs_no_edit(benchmark, clutrr_batch):
    """What computing LoFiT's 8 edited sites and their projections in fp32 costs a bf16 forward."""
    _, batch = clutrr_batch
    lm = load_model("smollm2-135m", dtype="bf16")
    intervention = HeadIntervention(lm.layout, HEADS, shift=True).init_normal_(1e-3, seed=0)

    def forward():
        with torch.no_grad():
            lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def edited():
        with intervention.attach(lm.model, lm.layout, "benchmark_fp32_edit"):
            forward()

    result = interleaved_ratio(edited, forward)
    benchmark.pedantic(edited, rounds=2, iterations=1)
    report(benchmark, "bf16 forward with 8 fp32-edited sites / without", result, "<= 1.15")

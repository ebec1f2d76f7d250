"""The model is checked after every remove(): a leaky method fails its run, named, with no score."""

from __future__ import annotations

import pytest
import torch
from plugin_helpers import install_entry_point_plugin
from torch import nn

from lofit_bench import plugins
from lofit_bench.budget import get_budget
from lofit_bench.engine.model_integrity import (
    ModelGuard,
    ModelNotRestored,
    ModelStructure,
    tensor_checksums,
)
from lofit_bench.records.store import read_record
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep

TINY = ModelSettings("tiny-random-llama", device="cpu")

LEAKY_PLUGIN = '''
"""A method whose remove() leaves the model changed, in the way its config names."""
from dataclasses import dataclass, field

import torch
from torch import nn

from lofit_bench import hookimpl
from lofit_bench.method import Method, MethodConfig
from lofit_bench.search_space import LogUniform


@dataclass
class LeakyConfig(MethodConfig):
    leak: str = field(default="none", metadata={"help": "what remove() forgets", "choices": ["none", "hook", "merge", "parameter"]})
    scale: float = field(default=1e-3, metadata={"help": "the edit's size", "tune": LogUniform(1e-4, 1e-2)})


class Leaky(Method):
    name = "test-leaky"
    config_class = LeakyConfig

    def prepare(self, lm):
        self.lm = lm
        self.site = lm.layout.attention_output(lm.model, 0)
        self.handle = self.site.register_forward_pre_hook(lambda _, args: (args[0] * (1 + self.config.scale), *args[1:]))
        if self.config.leak == "parameter":
            lm.model.register_parameter("leaked_scale", nn.Parameter(torch.ones(1), requires_grad=False))

    def trainable_parameters(self):
        return 0

    def remove(self):
        if self.config.leak != "hook":
            self.handle.remove()
        if self.config.leak == "merge":  # "un-merging" forgotten: the scale stays in the weight
            with torch.no_grad():
                self.site.weight.mul_(1 + self.config.scale)
        self.lm = None


@hookimpl
def register_methods(register):
    register(Leaky)
'''


@pytest.fixture
def leaky_plugin(tmp_path, monkeypatch):
    """The leaky method, installed through an entry point so that child processes find it."""
    install_entry_point_plugin(tmp_path, monkeypatch, "leaky_plugin", LEAKY_PLUGIN, "leaky-plugin")
    yield
    plugins.reset_host()


def run_leaky(out_dir, leak: str, executor: str, trials: int = 1):
    budget = get_budget("smoke").replace(eval_examples=2, dev_examples=2, trials=trials, tune=trials > 1)
    [spec] = plan_sweep(["test-leaky"], ["mquake"], budget, TINY, [0], {"test-leaky": {"leak": leak}})
    [outcome] = run_sweep([spec], out_dir, progress=False, echo=lambda *_: None, executor=executor)
    record, problem = read_record(outcome.path)
    assert record is not None, problem
    return record


# -- the checksum and the structure ---------------------------------------------------------------
def test_a_checksum_is_the_sum_of_the_bits():
    sums = tensor_checksums({"one": torch.tensor([1.0]), "two": torch.tensor([1.0, 2.0]), "flag": torch.tensor(True)})
    # float32 1.0 is 0x3F800000, 2.0 is 0x40000000; a bool is one byte
    assert sums == {"one": 0x3F800000, "two": 0x3F800000 + 0x40000000, "flag": 1}


def test_a_checksum_sees_a_change_of_one_bit_in_bfloat16():
    weight = torch.randn(64, 64).to(torch.bfloat16)
    changed = weight.clone()
    changed.view(torch.int16)[3, 5] ^= 1  # the lowest mantissa bit of one value
    assert not torch.equal(weight, changed)
    assert tensor_checksums({"w": weight}) != tensor_checksums({"w": changed})


def test_checksums_and_exact_values_find_the_same_differences(tiny_lm):
    exact, summed = ModelStructure.capture(tiny_lm.model), ModelStructure.capture(tiny_lm.model, exact=False)
    site = tiny_lm.layout.attention_output(tiny_lm.model, 1)
    with torch.no_grad():
        site.weight.mul_(1.001)
    try:
        after_exact = ModelStructure.capture(tiny_lm.model)
        after_summed = ModelStructure.capture(tiny_lm.model, exact=False)
        expected = ["tensor 'model.layers.1.self_attn.o_proj.weight' differs from the base model's "
                    "(torch.float32, (64, 64))"]
        assert exact.differences(after_exact) == expected
        assert summed.differences(after_summed) == expected
    finally:
        with torch.no_grad():
            site.weight.div_(1.001)


def test_the_guard_names_the_method_the_module_and_the_change(tiny_lm):
    guard = ModelGuard(tiny_lm.model)
    guard.verify("clean", "after the run")  # nothing changed: no error
    handle = tiny_lm.layout.attention_output(tiny_lm.model, 0).register_forward_hook(lambda *_: None)
    tiny_lm.model.add_module("extra", nn.Linear(2, 2))
    try:
        with pytest.raises(ModelNotRestored) as raised:
            guard.verify("leaky", "after tuning trial 2")
    finally:
        handle.remove()
        del tiny_lm.model.extra
    message = str(raised.value)
    assert message.startswith("method 'leaky' did not restore the model in remove() after tuning trial 2: ")
    assert "submodule 'extra' was added" in message
    assert "hooks on 'model.layers.0.self_attn.o_proj': {'_forward_hooks': 1} instead of {}" in message
    # then extra.weight added, extra.bias and extra.weight with requires_grad=True
    assert "tensor 'extra.bias' was added; and 3 more. No score is recorded" in message
    assert "\n" not in message
    guard.verify("clean", "after the run")  # restored again


# -- runs -----------------------------------------------------------------------------------------
LEAKS = {
    "hook": "hooks on 'model.layers.0.self_attn.o_proj': {'_forward_pre_hooks': 1} instead of {}",
    "merge": "tensor 'model.layers.0.self_attn.o_proj.weight' differs from the base model's",
    "parameter": "tensor 'leaked_scale' was added",
}


@pytest.mark.parametrize(
    ("leak", "executor"), [("hook", "inline"), ("merge", "inline"), ("parameter", "inline"), ("merge", "process")]
)
def test_a_leaky_method_fails_its_run_with_no_score(leaky_plugin, tmp_path, leak, executor):
    record = run_leaky(tmp_path, leak, executor)
    assert record.status == "failed"
    assert record.error.type == "ModelNotRestored"
    assert record.error.message.startswith("method 'test-leaky' did not restore the model in remove() after the run: ")
    assert LEAKS[leak] in record.error.message
    assert not record.metrics
    assert all(not fold.metrics for fold in record.folds.values())


def test_a_leak_between_tuning_trials_fails_the_run_after_the_first_trial(leaky_plugin, tmp_path):
    record = run_leaky(tmp_path, "hook", "inline", trials=3)
    assert record.status == "failed"
    assert record.error.message.startswith("method 'test-leaky' did not restore the model in remove() after tuning trial 1: ")
    assert LEAKS["hook"] in record.error.message
    assert not record.metrics


def test_a_clean_method_pays_the_check_and_scores(leaky_plugin, tmp_path):
    record = run_leaky(tmp_path, "none", "inline", trials=2)
    assert record.status == "ok", record.error
    assert record.metrics
    assert 0 < record.timings.model_check < record.timings.total_s

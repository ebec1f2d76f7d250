"""Untuned values for any task: trial 0 is always a defined point, and trials=1 is never a random draw."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from lofit_bench import hookimpl, plugins
from lofit_bench.budget import get_budget
from lofit_bench.method import Method, MethodConfig
from lofit_bench.records.store import read_record
from lofit_bench.search_space import Choice, IntRange, LogUniform, Uniform
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep
from lofit_bench.sweep.tuning import TuningPlan, untuned_fill
from lofit_bench.tasks.mquake import Mquake
from lofit_bench.tasks.truthfulqa import TruthfulQA

TINY = ModelSettings("tiny-random-llama", device="cpu")


class PluginSFT(Mquake):
    """A task the paper has no row for (MQuAKE's data under another name)."""

    name = "plugin-sft"

    @classmethod
    def default_data_dir(cls):
        return Mquake.default_data_dir()


class PluginDeclaring(PluginSFT):
    name = "plugin-declaring"
    method_values = {"lora": {"learning_rate": 3e-4}, "red": {"learning_rate": 2e-3}}


class PluginDPO(TruthfulQA):
    name = "plugin-dpo"

    @classmethod
    def default_data_dir(cls):
        return TruthfulQA.default_data_dir()


class Tasks:
    @hookimpl
    def register_tasks(self, register):
        register(PluginSFT)
        register(PluginDeclaring)


@pytest.fixture
def plugin_tasks(monkeypatch):
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "")
    plugins.reset_host()
    plugins.get_host().register(Tasks(), "plugin-tasks")
    yield
    plugins.reset_host()


def trained_builtins() -> list[type[Method]]:
    host = plugins.PluginHost().load(entry_points=False)
    return [host.methods.get(name) for name in host.methods.names() if host.methods.get(name).uses_training_data]


@pytest.mark.parametrize("task_class", [PluginSFT, PluginDPO], ids=["sft", "dpo"])
def test_every_trained_builtin_starts_a_plugin_task_from_declared_values(task_class):
    task = task_class.__new__(task_class)  # class attributes only: no data read
    for method_class in trained_builtins():
        plan = TuningPlan.for_run(method_class, {}, task)
        assert plan.space, method_class.name
        assert "the middle of its search space" not in plan.start_sources.values(), (method_class.name, plan.start_sources)
        # the untuned run: every field the method would otherwise need from a paper row is filled
        filled, sources = untuned_fill(method_class, {}, task)
        assert set(filled) == set(sources)


def test_the_sources_say_where_each_value_comes_from():
    sft, declaring, dpo = (cls.__new__(cls) for cls in (PluginSFT, PluginDeclaring, PluginDPO))
    from lofit_bench.methods.lofit import LoFiT
    from lofit_bench.methods.lora import LoRA

    assert TuningPlan.for_run(LoRA, {}, sft).start == {"learning_rate": 1e-3}
    assert TuningPlan.for_run(LoRA, {}, dpo).start == {"learning_rate": 1e-4}
    plan = TuningPlan.for_run(LoRA, {}, declaring)
    assert plan.start == {"learning_rate": 3e-4}
    assert plan.start_sources == {"learning_rate": "declared by task plugin-declaring"}
    lofit = TuningPlan.for_run(LoFiT, {}, sft)
    assert lofit.start == {"stage2_learning_rate": 1e-2}
    assert lofit.filled == {"l1_lambda": 1e-3, "stage1_learning_rate": 5e-3}  # given to every trial
    assert lofit.start_sources["l1_lambda"].startswith("paper Table 6's values for its task of the same objective")
    # a paper task keeps the paper's row, resolved (and its source recorded) by the method itself
    truthfulqa = TruthfulQA.__new__(TruthfulQA)
    assert TuningPlan.for_run(LoFiT, {}, truthfulqa).filled == {}
    assert untuned_fill(LoRA, {}, truthfulqa) == ({}, {})


@dataclass
class Unspoken(MethodConfig):
    rate: float | None = field(default=None, metadata={"help": "h", "tune": LogUniform(1e-4, 1e-2)})
    share: float | None = field(default=None, metadata={"help": "h", "tune": Uniform(0.2, 0.6)})
    rank: int | None = field(default=None, metadata={"help": "h", "tune": IntRange(1, 8, step=2)})
    mode: str | None = field(default=None, metadata={"help": "h", "tune": Choice("a", "b")})


def test_a_field_nothing_gives_a_value_starts_in_the_middle_of_its_space():
    class Silent(Method):
        name = "silent"
        config_class = Unspoken

    plan = TuningPlan.for_run(Silent, {}, PluginSFT.__new__(PluginSFT))
    assert plan.start == {"rate": pytest.approx(1e-3), "share": pytest.approx(0.4), "rank": 3, "mode": "a"}
    assert set(plan.start_sources.values()) == {"the middle of its search space"}


def test_one_trial_of_lora_on_a_plugin_task_runs_the_declared_value(plugin_tasks, tmp_path):
    budget = get_budget("smoke").replace(train_examples=4, eval_examples=2, dev_examples=2, epochs=1, trials=1)
    assert budget.tune
    specs = plan_sweep(["lora"], ["plugin-declaring"], budget, TINY, [0])
    [outcome] = run_sweep(specs, tmp_path, progress=False, echo=lambda *_: None, executor="inline")
    record, _ = read_record(outcome.path)
    assert record.status == "ok", record.error
    tuning = record.folds["main"].tuning
    assert tuning["start"] == {"learning_rate": 3e-4}
    assert [row["values"] for row in tuning["trials"]] == [{"learning_rate": 3e-4}]
    assert record.method.config["learning_rate"] == 3e-4
    json.dumps(tuning)  # recorded as JSON


def test_an_untuned_red_run_on_a_plugin_task_uses_the_generic_value(plugin_tasks, tmp_path):
    budget = get_budget("smoke").replace(train_examples=4, eval_examples=2, epochs=1, tune=False)
    specs = plan_sweep(["red"], ["plugin-sft"], budget, TINY, [0])
    [outcome] = run_sweep(specs, tmp_path, progress=False, echo=lambda *_: None, executor="inline")
    record, _ = read_record(outcome.path)
    assert record.status == "ok", record.error
    fit = record.folds["main"].tuning
    assert fit["filled"] == {"learning_rate": 1e-3}
    assert fit["sources"]["learning_rate"].startswith("paper Table 7's value for its task of the same objective")
    assert record.method.config["learning_rate"] == 1e-3

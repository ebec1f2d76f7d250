"""Runs and sweeps: complete records, failures recorded without losing finished ones, resume."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from lofit_bench import hookimpl, plugins
from lofit_bench.budget import get_budget
from lofit_bench.cli import main
from lofit_bench.engine.training import OptimizerSettings, train
from lofit_bench.method import FitContext, Method, MethodConfig
from lofit_bench.records.store import write_json_atomic
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep

TINY = ModelSettings("tiny-random-llama", device="cpu")


@dataclass
class HeadBiasConfig(MethodConfig):
    learning_rate: float = field(default=1e-2, metadata={"help": "AdamW learning rate"})
    fail_on_task: str = field(default="", metadata={"help": "raise in fit on this task (tests)"})


class HeadBias(Method):
    """A minimal trained method: one bias vector added to layer 0's attention heads."""

    name = "test-head-bias"
    config_class = HeadBiasConfig

    def prepare(self, lm):
        self.lm = lm
        self.module = nn.Module()
        self.module.bias = nn.Parameter(torch.zeros(lm.layout.n_heads * lm.layout.head_dim))
        lm.model.add_module("test_head_bias", self.module)
        projection = lm.layout.attention_output(lm.model, 0)
        self.handle = projection.register_forward_pre_hook(lambda _, args: (args[0] + self.module.bias, *args[1:]))

    def fit(self, context: FitContext):
        if context.task.name == self.config.fail_on_task:
            raise RuntimeError("planted failure")
        with context.phase("training"):
            result = train(
                self.lm.model, self.lm.tokenizer, context.training_examples(), context.task.objective,
                context.budget, OptimizerSettings(self.config.learning_rate), context.seed, context.work_dir,
            )
        return {"training": result.to_dict()}

    def trainable_parameters(self):
        return self.module.bias.numel()

    def remove(self):
        self.handle.remove()
        del self.lm.model.test_head_bias
        self.lm = None


class TestPlugin:
    @hookimpl
    def register_methods(self, register):
        register(HeadBias)


@pytest.fixture(autouse=True)
def host_with_test_method(monkeypatch):
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "")
    plugins.reset_host()
    plugins.get_host().register(TestPlugin(), "test-plugin")
    yield
    plugins.reset_host()


def small_budget():
    # The byte-level tiny tokenizer makes a CLUTRR example ~450 tokens long.
    return get_budget("smoke").replace(train_examples=8, eval_examples=2, epochs=1, max_length=1024)


def test_record_holds_everything_a_report_needs(tmp_path):
    specs = plan_sweep(["test-head-bias"], ["clutrr"], small_budget(), TINY)
    [outcome] = run_sweep(specs, tmp_path, progress=False, echo=lambda _: None, executor="inline")
    assert outcome.status == "ok"
    record = json.loads(outcome.path.read_text())
    assert record["status"] == "ok"
    assert record["key"] == specs[0].key
    assert record["method"]["config"] == {"learning_rate": 0.01, "fail_on_task": ""}
    assert record["method"]["plugin"] == "test-plugin"
    assert record["model"]["fingerprint"] and record["model"]["parameters"] == 107_200  # tiny-random-llama (test_models)
    assert record["budget"] == small_budget().to_dict()
    fold = record["folds"]["main"]
    assert fold["split_sizes"] == {"train": 300, "dev": 450, "test": 450}
    assert len(fold["train_ids"]) == 8 and len(fold["eval_ids"]) == 2
    assert fold["fit"]["training"]["steps"] == 1
    assert record["trainable_parameters"]["count"] == 64
    assert record["trainable_parameters"]["percent_of_base"] == pytest.approx(100 * 64 / 107_200)
    assert record["memory"]["kind"] == "cpu_peak_rss_delta"
    timings = record["timings"]
    assert set(timings) >= {"load_model", "fit", "evaluate", "total_s", "fit_phases"}
    assert set(timings["fit_phases"]) == {"training", "other"}
    assert timings["fit_phases"]["training"] >= fold["fit"]["training"]["seconds"] - 1e-3
    assert sum(timings["fit_phases"].values()) == pytest.approx(timings["fit"], abs=0.01)
    assert record["environment"]["torch_threads"] == torch.get_num_threads()
    assert record["throughput"]["train_tokens"] == fold["fit"]["training"]["tokens"] > 0  # the final fit's, not a trial's
    assert record["throughput"]["eval_tokens"] == fold["eval_tokens"] > 0
    assert record["environment"]["versions"]["torch"]
    assert (tmp_path / record["artifacts"] / "main" / "method_config.json").exists()


def test_a_failed_run_is_recorded_and_finished_records_survive(tmp_path):
    specs = plan_sweep(
        ["test-head-bias"], ["clutrr", "mquake"], small_budget(), TINY,
        method_options={"test-head-bias": {"fail_on_task": "mquake"}},
    )
    outcomes = run_sweep(specs, tmp_path, progress=False, echo=lambda _: None, executor="inline")
    assert [outcome.status for outcome in outcomes] == ["ok", "failed"]
    ok, failed = (json.loads(outcome.path.read_text()) for outcome in outcomes)
    assert ok["status"] == "ok"
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "RuntimeError" and failed["error"]["message"] == "planted failure"
    assert "Traceback" in failed["error"]["traceback"]


def test_cli_exits_1_when_a_run_failed_but_reports_the_rest(tmp_path, capsys):
    code = main([
        "run", "--methods", "test-head-bias", "--tasks", "clutrr,mquake", "--model", "tiny-random-llama",
        "--budget", "smoke", "--budget-set", "eval_examples=2", "--budget-set", "train_examples=8", "--budget-set", "max_length=1024",
        "--method-set", "test-head-bias.fail_on_task=\"mquake\"", "--out", str(tmp_path), "--executor", "inline",
    ])
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED: RuntimeError: planted failure" in captured.out
    assert "## clutrr" in captured.out and "## Failed runs" in captured.out
    # --quiet: nothing on stdout, the failure still said on stderr
    code = main([
        "run", "--methods", "test-head-bias", "--tasks", "clutrr,mquake", "--model", "tiny-random-llama",
        "--budget", "smoke", "--budget-set", "eval_examples=2", "--budget-set", "train_examples=8", "--budget-set", "max_length=1024",
        "--method-set", "test-head-bias.fail_on_task=\"mquake\"", "--out", str(tmp_path), "--quiet", "--executor", "inline",
    ])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "FAILED: RuntimeError: planted failure" in captured.err and "1 of 2 run(s) failed" in captured.err


def test_resume_skips_finished_runs_and_force_reruns(tmp_path):
    specs = plan_sweep(["zero-shot", "test-head-bias"], ["clutrr"], small_budget(), TINY)
    first = run_sweep(specs, tmp_path, progress=False, echo=lambda _: None, executor="inline")
    assert [outcome.status for outcome in first] == ["ok", "ok"]
    stamp = first[0].path.stat().st_mtime_ns
    again = run_sweep(specs, tmp_path, progress=False, echo=lambda _: None, executor="inline")
    assert [outcome.status for outcome in again] == ["skipped", "skipped"]
    assert first[0].path.stat().st_mtime_ns == stamp
    forced = run_sweep(specs[:1], tmp_path, force=True, progress=False, echo=lambda _: None, executor="inline")
    assert forced[0].status == "ok"
    assert len(list((tmp_path / "records").glob("*.json"))) == 2


def test_every_run_of_a_sweep_shares_one_budget():
    specs = plan_sweep(["zero-shot", "test-head-bias"], ["clutrr", "mquake"], small_budget(), TINY, seeds=[1, 2])
    assert len(specs) == 8
    assert len({spec.budget for spec in specs}) == 1
    assert len({spec.key for spec in specs}) == 8


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "record.json"
    write_json_atomic(path, {"status": "ok"})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"status": object()})
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert [item.name for item in tmp_path.iterdir()] == ["record.json"]


def test_zero_shot_leaves_the_model_untouched(tiny_lm):
    from lofit_bench.methods.zero_shot import ZeroShot

    before = {name: tensor.clone() for name, tensor in tiny_lm.model.state_dict().items()}
    method = ZeroShot()
    method.prepare(tiny_lm)
    assert method.trainable_parameters() == 0
    method.remove()
    after = tiny_lm.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_the_key_covers_everything_that_changes_a_result(tmp_path):
    budget = get_budget("smoke")

    def key(model=TINY, options=None, run_budget=budget):
        return plan_sweep(["zero-shot", "lofit"], ["clutrr"], run_budget, model, method_options=options)[1].key

    base = key()
    assert key() == base  # stable
    assert key(model=ModelSettings("tiny-random-llama", dtype="bf16", device="cpu")) != base
    assert key(model=ModelSettings("tiny-random-qwen2", device="cpu")) != base
    assert key(run_budget=budget.replace(max_length=1024)) != base
    assert key(options={"lofit": {"heads": 3}}) != base
    # The resolved config is hashed, not the user's spelling: an option set to its default is the same run.
    assert key(options={"lofit": {"heads": 0.03}}) == base
    identity = plan_sweep(["lofit"], ["clutrr"], budget, TINY)[0].identity
    assert identity["method_plugin"].startswith("lofit-bench==") and identity["model"]["device"] == "cpu"
    assert identity["method_config"]["heads"] == 0.03 and identity["model_fingerprint"]


def test_a_local_model_folder_is_fingerprinted_by_its_content(tmp_path):
    from lofit_bench.sweep.runner import model_source_fingerprint

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"a" * 100)
    before = model_source_fingerprint(ModelSettings(str(tmp_path)))
    (tmp_path / "model.safetensors").write_bytes(b"b" * 100)
    assert model_source_fingerprint(ModelSettings(str(tmp_path))) != before


def test_changing_the_dtype_reruns_instead_of_reusing_records(tmp_path):
    budget = get_budget("smoke").replace(eval_examples=1)
    fp32 = plan_sweep(["zero-shot"], ["mquake"], budget, TINY)
    assert [outcome.status for outcome in run_sweep(fp32, tmp_path, executor="inline", echo=lambda *_: None)] == ["ok"]
    assert [outcome.status for outcome in run_sweep(fp32, tmp_path, executor="inline", echo=lambda *_: None)] == ["skipped"]
    bf16 = plan_sweep(["zero-shot"], ["mquake"], budget, ModelSettings("tiny-random-llama", dtype="bf16", device="cpu"))
    outcomes = run_sweep(bf16, tmp_path, executor="inline", echo=lambda *_: None)
    assert [outcome.status for outcome in outcomes] == ["ok"]
    record = json.loads(outcomes[0].path.read_text())
    assert record["model"]["dtype"] == "bf16" and record["identity"]["model"]["dtype"] == "bf16"
    assert len(list((tmp_path / "records").glob("*.json"))) == 2

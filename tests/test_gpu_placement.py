"""GPUs without a GPU: which GPU each run gets, what each run's process sees, that the CLI
process never initialises CUDA, that the Trainer cannot wrap in DataParallel, and that a
device-mapped model's interventions follow their layer's device."""

from __future__ import annotations

import contextlib
import functools
import json
import os

import pytest
import torch
from plugin_helpers import install_entry_point_plugin
from torch import nn

from lofit_bench import plugins
from lofit_bench.budget import get_budget
from lofit_bench.cli import main
from lofit_bench.engine.interventions import HeadIntervention
from lofit_bench.engine.models import check_model, load_model, module_device
from lofit_bench.engine.training import never_data_parallel
from lofit_bench.errors import UserError
from lofit_bench.measure import MIB, MemoryMeter
from lofit_bench.records.run_folder import RunFolder
from lofit_bench.sweep.executors import GpuPool, execute, gpus_wanted, visible_gpus
from lofit_bench.sweep.runner import ModelSettings, RunSpec, plan_sweep

PROBE_PLUGIN = '''
"""A method that reports what its process sees: CUDA_VISIBLE_DEVICES, and whether the other
runs of its barrier were running at the same time."""
import os
import time
from pathlib import Path

from lofit_bench import hookimpl
from lofit_bench.method import Method


class Probe(Method):
    name = "test-probe"
    uses_training_data = False

    def prepare(self, lm):
        self.lm = lm

    def fit(self, context):
        return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "met": self.meet_the_others()}

    def meet_the_others(self):
        """A barrier: arrive (a file), then wait until every run of the barrier has arrived. Only
        runs that execute at the same time all meet; run one after another, the first one waits
        in vain and gives up (so the test fails on what it checks, not on a clock)."""
        barrier = os.environ.get("LOFIT_TEST_BARRIER")
        if not barrier:
            return None
        folder, expected = barrier.rsplit(":", 1)
        Path(folder, str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(Path(folder).iterdir())) < int(expected):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def trainable_parameters(self):
        return 0

    def remove(self):
        self.lm = None


class Crash(Probe):
    name = "test-crash"

    def fit(self, context):
        os.kill(os.getpid(), 9)


@hookimpl
def register_methods(register):
    register(Probe)
    register(Crash)
'''


@pytest.fixture
def probe_plugin(tmp_path, monkeypatch):
    """The probe methods, discoverable through the entry-point group by child processes too."""
    site = install_entry_point_plugin(tmp_path, monkeypatch, "probe_plugin", PROBE_PLUGIN, "probe-plugin")
    yield site
    plugins.reset_host()


def budget():
    return get_budget("smoke").replace(eval_examples=1)


# -- the pool: which GPU each run gets ----------------------------------------------------------
def test_pool_hands_out_free_gpus_lowest_first_and_never_one_twice() -> None:
    pool = GpuPool(["0", "1", "2"])
    assert pool.acquire(1) == ["0"]
    assert pool.acquire(2) == ["1", "2"]
    assert pool.acquire(1) is None  # all busy: the next run waits, it is not stacked on a busy GPU
    pool.release(["1", "2"])
    assert pool.acquire(1) == ["1"]  # whichever is free, not the submission index's GPU
    pool.release(["0"])
    assert pool.acquire(2) == ["0", "2"]
    with pytest.raises(RuntimeError, match="not taken"):
        pool.release(["1", "1"])
    with pytest.raises(RuntimeError, match="not taken"):
        GpuPool(["0"]).release(["0"])


def test_a_run_takes_gpus_per_run_only_when_it_may_use_a_gpu() -> None:
    spec = plan_sweep(["zero-shot"], ["clutrr"], budget(), ModelSettings("tiny-random-llama"))[0]
    assert gpus_wanted(spec, 4) == 1
    assert gpus_wanted(spec, 0) == 0  # a CPU machine
    sharded = plan_sweep(["zero-shot"], ["clutrr"], budget(), ModelSettings("tiny-random-llama", gpus_per_run=2))[0]
    assert gpus_wanted(sharded, 4) == 2
    with pytest.raises(UserError, match="asks for 2 GPUs"):
        gpus_wanted(sharded, 1)
    for device in ("cpu", "cuda:1"):  # (a spec built directly: planning checks that the device exists)
        pinned = RunSpec("zero-shot", "clutrr", 42, budget(), ModelSettings("tiny-random-llama", device=device))
        assert gpus_wanted(pinned, 4) == 0


def test_visible_gpus_come_from_the_variable_without_initialising_cuda() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3,-1,4"}) == ["3"]  # CUDA stops at an invalid entry
    visible_gpus({})
    assert not torch.cuda.is_initialized()


# -- what each run's process sees ------------------------------------------------------------------
def test_concurrent_runs_each_see_only_their_own_gpu_and_a_cpu_run_none(tmp_path, probe_plugin, monkeypatch) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("LOFIT_TEST_BARRIER", f"{barrier}:3")  # all three runs must be running at once
    specs = plan_sweep(["test-probe"], ["clutrr"], budget(), ModelSettings("tiny-random-llama"), seeds=[1, 2])
    specs += plan_sweep(["test-probe"], ["clutrr"], budget(), ModelSettings("tiny-random-llama", device="cpu"), seeds=[3])
    results = {spec.seed: record for spec, record in execute(specs, RunFolder(tmp_path), "process", jobs=3, progress=False, gpus=["0", "1"])}
    assert [results[seed].status for seed in (1, 2, 3)] == ["ok", "ok", "ok"]
    fits = {seed: next(iter(record.folds.values())).fit for seed, record in results.items()}
    assert sorted([fits[1]["visible"], fits[2]["visible"]]) == ["0", "1"]  # one GPU each, never the other's
    assert fits[3]["visible"] == ""  # a CPU run sees no GPU at all
    assert [fits[seed]["met"] for seed in (1, 2, 3)] == [True, True, True]  # they ran at the same time
    assert all(results[seed].placement.cuda_visible_devices == fits[seed]["visible"] for seed in fits)


def test_a_crashed_run_frees_its_gpu_and_runs_queue_for_a_busy_one(tmp_path, probe_plugin) -> None:
    specs = plan_sweep(["test-crash", "test-probe"], ["clutrr"], budget(), ModelSettings("tiny-random-llama"))
    results = {spec.method: record for spec, record in execute(specs, RunFolder(tmp_path), "process", jobs=2, progress=False, gpus=["7"])}
    assert results["test-crash"].error.type == "WorkerCrashed"
    assert results["test-crash"].placement.cuda_visible_devices == "7"
    # jobs=2 but one GPU: the probe waited for the crashed run's GPU, then got it.
    assert results["test-probe"].status == "ok"
    assert next(iter(results["test-probe"].folds.values())).fit["visible"] == "7"


def test_the_cli_process_never_initialises_cuda_nor_loads_a_model(tmp_path, builtin_host, monkeypatch, capsys) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the CLI process touched CUDA or loaded a model")

    monkeypatch.setattr(torch.cuda, "_lazy_init", refuse)
    monkeypatch.setattr(torch.cuda, "init", refuse)
    monkeypatch.setattr("lofit_bench.engine.models.load_model", refuse)
    monkeypatch.setattr("lofit_bench.sweep.worker.load_model", refuse)  # an inline run would use this one
    code = main([
        "run", "--methods", "zero-shot", "--tasks", "clutrr", "--model-args", "pretrained=tiny-random-llama,dtype=fp32",
        "--budget", "smoke", "--budget-set", "eval_examples=1", "--out", str(tmp_path / "out"), "--quiet",
    ])
    assert code == 0, capsys.readouterr().err
    assert not torch.cuda.is_initialized()
    [record_path] = (tmp_path / "out" / "records").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["pid"] != os.getpid() and record["model"]["dtype"] == "fp32"


# -- the model check before a sweep --------------------------------------------------------------
def test_check_model_reads_the_config_only(tmp_path) -> None:
    assert check_model("tiny-random-llama") == "llama"
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match="unsupported architecture 'gpt2'"):
        check_model(str(folder))
    with pytest.raises(UserError, match="unknown model"):
        check_model("tiny-random-lama")
    with pytest.raises(UserError, match="applies to hub ids"):
        check_model(str(folder), revision="main")
    assert not torch.cuda.is_initialized()


# -- the Trainer never wraps the model in DataParallel ------------------------------------------
def test_never_data_parallel_counts_one_gpu_on_a_fake() -> None:
    class FakeArguments:
        def __init__(self, gpus: int) -> None:
            self._n_gpu = gpus

        @property
        def n_gpu(self) -> int:
            return self._n_gpu

    for gpus, expected in ((4, 1), (1, 1), (0, 0)):
        arguments = FakeArguments(gpus)
        never_data_parallel(arguments)
        assert arguments.n_gpu == expected


def test_the_trainer_does_not_wrap_when_it_counts_two_gpus(tiny_lm, tmp_path, monkeypatch) -> None:
    from transformers import TrainingArguments

    from lofit_bench.engine.training import OptimizerSettings, build_trainer
    from lofit_bench.task import SFTExample

    original = TrainingArguments.__dict__["_setup_devices"].func

    def two_gpus(self):  # what TrainingArguments finds in a process that sees two GPUs
        device = original(self)
        self._n_gpu = 2
        return device

    patched = functools.cached_property(two_gpus)
    patched.__set_name__(TrainingArguments, "_setup_devices")
    monkeypatch.setattr(TrainingArguments, "_setup_devices", patched)
    examples = [SFTExample(str(i), f"Q: {i}?\nA:", f" {i}") for i in range(2)]
    trainer = build_trainer(tiny_lm.model, tiny_lm.tokenizer, examples, "sft", get_budget("smoke"),
                             OptimizerSettings(1e-3), 0, tmp_path, None, None, False)
    assert trainer.args.n_gpu == 1
    assert not isinstance(trainer._wrap_model(trainer.model), nn.DataParallel)


# -- device-mapped models: interventions follow their layer -------------------------------------
PER_LAYER_CPU_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                     "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def test_each_layers_vectors_go_to_that_layers_device(tiny_lm) -> None:
    """A second device simulated with meta: layer 1 lives there, so its vectors must too."""
    from methods.loreft import LoReFTEdits

    layout = tiny_lm.layout
    tiny_lm.model.model.layers[1].to("meta")
    intervention = HeadIntervention(layout, [(0, 1), (1, 2)], scale=True, shift=True)
    attachment = intervention.attach(tiny_lm.model, layout, "lofit_test")
    assert intervention.sites["0"].shift.device.type == "cpu"
    assert intervention.sites["1"].shift.device.type == "meta"
    assert intervention.sites["1"].shift.dtype == torch.float32  # still fp32 wherever it is
    attachment.remove()
    edits = LoReFTEdits(layout, [0, 1], rank=2, first=1, last=1, tied=False, dropout=0.0, seed=0)
    edits.attach(tiny_lm.model, layout)
    assert all(parameter.device.type == "cpu" for parameter in edits.sites["0"].parameters())
    assert all(parameter.device.type == "meta" for parameter in edits.sites["1"].parameters())
    assert module_device(tiny_lm.model.model.layers[1]).type == "meta"
    edits.detach(tiny_lm.model)


def test_a_device_mapped_model_edits_trains_and_removes_exactly(tmp_path) -> None:
    from lofit_bench.engine.training import OptimizerSettings, train
    from lofit_bench.task import SFTExample

    plain = load_model("tiny-random-llama", device="cpu")
    mapped = load_model("tiny-random-llama", device="cpu", device_map=PER_LAYER_CPU_MAP)
    assert mapped.describe()["device_map"] == PER_LAYER_CPU_MAP and mapped.devices == ["cpu"]
    assert hasattr(mapped.model.model.layers[0], "_hf_hook")  # accelerate's hooks are on
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before = mapped.model(ids).logits
    assert torch.equal(before, plain.model(ids).logits)
    heads = [(0, 0), (1, 3)]
    results = []
    for lm in (plain, mapped):
        intervention = HeadIntervention(lm.layout, heads, shift=True).init_normal_(0.5, seed=3)
        attachment = intervention.attach(lm.model, lm.layout, "lofit_test")
        results.append(lm.model(ids).logits)
        attachment.remove()
    assert torch.equal(results[0], results[1]) and not torch.equal(results[1], before)
    assert torch.equal(mapped.model(ids).logits, before)  # removal restores the logits exactly
    scales = HeadIntervention(mapped.layout, heads, scale=True).init_normal_(1e-3, seed=1)
    with scales.attach(mapped.model, mapped.layout, "lofit_test"):
        for parameter in scales.parameters():
            parameter.requires_grad_(True)
        start = [parameter.detach().clone() for parameter in scales.parameters()]
        examples = [SFTExample(str(i), f"Q: {i}?\nA:", f" {i}") for i in range(4)]
        train(mapped.model, mapped.tokenizer, examples, "sft", get_budget("smoke").replace(batch_size=4),
              OptimizerSettings(1e-2), 0, tmp_path, extra_loss=lambda: 1e-3 * scales.l1_norm("scale"))
        assert all(not torch.equal(a, b) for a, b in zip(start, scales.parameters(), strict=True))
    assert torch.equal(mapped.model(ids).logits, before)


# -- gradient checkpointing and accumulation keep the gradients --------------------------------
def one_step_gradients(lm, tmp_path, **budget_changes) -> list[torch.Tensor]:
    """The gradient of every vector of a RED-style (scale and shift on every head) intervention
    in the first optimizer step, summed over the step's micro-batches."""
    from lofit_bench.engine.training import OptimizerSettings, train
    from lofit_bench.task import SFTExample

    intervention = HeadIntervention(lm.layout, scale=True, shift=True).init_normal_(1e-2, seed=0)
    examples = [SFTExample(str(i), f"Q: what is {i} + {i}?\nA:", f" {2 * i}") for i in range(4)]
    budget = get_budget("smoke").replace(batch_size=4, **budget_changes)
    with intervention.attach(lm.model, lm.layout, "red_test"):
        parameters = list(intervention.parameters())
        sums = [torch.zeros_like(parameter) for parameter in parameters]
        for parameter, total in zip(parameters, sums, strict=True):
            parameter.requires_grad_(True)
            parameter.register_hook(functools.partial(lambda total, grad: total.add_(grad), total))
        result = train(lm.model, lm.tokenizer, examples, "sft", budget, OptimizerSettings(1e-3, weight_decay=0.0), 0, tmp_path)
    assert result.steps == 1
    return sums


def test_gradient_checkpointing_gives_the_hooks_the_same_gradients(tmp_path) -> None:
    plain = one_step_gradients(load_model("tiny-random-llama", device="cpu"), tmp_path / "a")
    lm = load_model("tiny-random-llama", device="cpu")
    ids = torch.tensor([[5, 6, 7, 8]])
    before = lm.model(ids).logits
    checkpointed = one_step_gradients(lm, tmp_path / "b", gradient_checkpointing=True)
    assert all(grad.abs().sum() > 0 for grad in plain)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # and the model is left as found: no checkpointing, no input-grad hook, same logits
    assert not any(getattr(module, "gradient_checkpointing", False) for module in lm.model.modules())
    assert getattr(lm.model, "_require_grads_hook", None) is None
    assert not lm.model.get_input_embeddings()._forward_hooks
    assert torch.equal(lm.model(ids).logits, before)


def test_gradient_accumulation_keeps_the_effective_batch(tmp_path) -> None:
    whole = one_step_gradients(load_model("tiny-random-llama", device="cpu"), tmp_path / "a")
    accumulated = one_step_gradients(load_model("tiny-random-llama", device="cpu"), tmp_path / "b", gradient_accumulation_steps=2)
    for a, b in zip(whole, accumulated, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_accumulation_must_divide_the_batch() -> None:
    with pytest.raises(UserError, match="batch_size 8 is the effective batch"):
        get_budget("smoke").replace(gradient_accumulation_steps=3)
    assert get_budget("smoke").replace(gradient_accumulation_steps=4).micro_batch_size == 2
    recorded = get_budget("paper").to_dict()
    assert recorded["gradient_accumulation_steps"] == 1 and recorded["gradient_checkpointing"] is False


# -- memory: the run's own devices, each and summed ---------------------------------------------
class FakeCuda:
    """torch.cuda's counters for two devices; every call must name its device."""

    def __init__(self) -> None:
        self.allocated = {0: 100 * MIB, 1: 50 * MIB}
        self.peaks = {0: 400 * MIB, 1: 250 * MIB}
        self.reserved = {0: 512 * MIB, 1: 300 * MIB}
        self.current: int | None = None
        self.emptied: list[int] = []

    @contextlib.contextmanager
    def device(self, device):
        self.current = self._index(device)
        try:
            yield
        finally:
            self.current = None

    def empty_cache(self) -> None:
        assert self.current is not None, "empty_cache outside `with cuda.device(...)` empties the wrong GPU"
        self.emptied.append(self.current)

    def _index(self, device) -> int:
        assert isinstance(device, torch.device) and device.type == "cuda", f"counter read without a device: {device!r}"
        return device.index

    def synchronize(self, device) -> None:
        self._index(device)

    def reset_peak_memory_stats(self, device) -> None:
        self._index(device)

    def memory_allocated(self, device) -> int:
        return self.allocated[self._index(device)]

    def max_memory_allocated(self, device) -> int:
        return self.peaks[self._index(device)]

    def max_memory_reserved(self, device) -> int:
        return self.reserved[self._index(device)]


def test_cuda_memory_is_read_per_device_and_summed() -> None:
    cuda = FakeCuda()
    meter = MemoryMeter("cuda:0", devices=["cuda:0", "cuda:1"], cuda=cuda)
    with meter.phase("fit"):
        pass
    assert cuda.emptied == [0, 1]  # each phase starts with every device's cache emptied
    record = meter.to_dict()
    assert record["peak_aggregation"].startswith("sum of per-device peaks")
    single = MemoryMeter("cuda:0", devices=["cuda:0"], cuda=FakeCuda())
    with single.phase("fit"):
        pass
    assert "peak_aggregation" not in single.to_dict()
    assert record["kind"] == "cuda_peak_allocated"
    assert record["per_device"]["cuda:0"]["peak_allocated_mib"] == 300.0
    assert record["per_device"]["cuda:1"]["peak_allocated_mib"] == 200.0
    assert record["peak_mib"] == 500.0 and record["per_phase_mib"] == {"fit": 500.0}
    assert record["peak_reserved_mib"] == 812.0 and record["per_phase_reserved_mib"] == {"fit": 812.0}
    assert record["devices"] == ["cuda:0", "cuda:1"]


# -- model options ---------------------------------------------------------------------------------
def test_model_args_are_typed_and_checked() -> None:
    values = ModelSettings.from_args("pretrained=org/name,revision=2024,trust_remote_code=true,gpus_per_run=2,attn_implementation=sdpa")
    settings = ModelSettings(**values)
    assert (settings.name, settings.revision, settings.trust_remote_code, settings.gpus_per_run) == ("org/name", "2024", True, 2)
    assert settings.effective_device_map == "auto" and ModelSettings().effective_device_map is None
    with pytest.raises(UserError, match="Did you mean 'revision'"):
        ModelSettings.from_args("revison=main")
    with pytest.raises(UserError, match="whole number"):
        ModelSettings.from_args("gpus_per_run=two")
    with pytest.raises(UserError, match="gpus_per_run"):
        ModelSettings(gpus_per_run=0)
    with pytest.raises(UserError, match="unknown dtype"):
        ModelSettings(dtype="bf17")


def test_model_args_on_the_command_line_and_in_sweep_files(tmp_path, builtin_host, capsys) -> None:
    common = ["run", "--methods", "zero-shot", "--tasks", "clutrr", "--budget", "smoke", "--out", str(tmp_path / "o")]
    assert main([*common, "--model", "tiny-random-llama", "--model-args", "pretrained=tiny-random-qwen2"]) == 2
    assert "give it once" in capsys.readouterr().err
    assert main([*common, "--model-args", "pretrained=tiny-random-llama,revison=main"]) == 2
    assert "Did you mean 'revision'" in capsys.readouterr().err
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('methods = ["zero-shot"]\ntasks = ["clutrr"]\n[model_args]\npretrained = "tiny-random-llama"\nrevision = "main"\n')
    assert main(["run", "--config", str(sweep), "--out", str(tmp_path / "o")]) == 2
    assert "applies to hub ids" in capsys.readouterr().err


def test_the_real_training_arguments_count_gpus_in_the_private_field_never_data_parallel_sets(tmp_path) -> None:
    """``never_data_parallel`` writes transformers' private ``_n_gpu`` (there is no public switch);
    this fails loudly if ``TrainingArguments.n_gpu`` stops reading it."""
    from transformers import TrainingArguments

    arguments = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert arguments.n_gpu == 0  # devices set up: a CPU run
    arguments._n_gpu = 2  # what the Trainer would count on a machine with two GPUs
    assert arguments.n_gpu == 2
    never_data_parallel(arguments)
    assert arguments.n_gpu == 1

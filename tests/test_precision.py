"""--precision: resolved per device, part of the run identity only when it changes the result,
recorded and reported; bf16-mixed keeps trained tensors fp32; sharded runs' records read back;
each fold's model is released before the next one loads."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch

from lofit_bench.budget import get_budget
from lofit_bench.engine.precision import computing_in, resolve_precision, weights_dtype
from lofit_bench.errors import UserError
from lofit_bench.records.record import parse_record
from lofit_bench.records.run_folder import RunFolder
from lofit_bench.records.store import load_records
from lofit_bench.report.model import build_report_model
from lofit_bench.sweep import worker as run_one
from lofit_bench.sweep.identity import run_identity
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep


def budget(**changes):
    values = {"train_examples": 4, "batch_size": 4, "eval_examples": 2, "epochs": 1, "max_length": 1024} | changes
    return get_budget("smoke").replace(**values)


def test_precision_resolves_per_device_and_refuses_what_cannot_mix() -> None:
    assert resolve_precision("auto", "cuda") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda", "bf16") == "fp32"  # --dtype bf16: pure bf16, nothing to mix
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert weights_dtype("bf16-mixed", "auto") == "fp32" and weights_dtype("fp32", "auto") == "auto"
    with pytest.raises(UserError, match="drop --dtype bf16"):
        resolve_precision("bf16-mixed", "cuda", "bf16")
    with pytest.raises(UserError, match="unknown precision"):
        ModelSettings(precision="fp8")


def test_precision_is_part_of_the_identity_only_when_it_is_not_fp32(builtin_host) -> None:
    def identity(**settings):
        spec = plan_sweep(["zero-shot"], ["clutrr"], budget(), ModelSettings("tiny-random-llama", **settings))[0]
        return spec.key, run_identity(spec)["model"]

    default_key, default_model = identity(device="cpu")
    assert "precision" not in default_model  # keys of runs from before --precision stay valid
    assert identity(device="cpu", precision="fp32")[0] == default_key
    mixed_key, mixed_model = identity(device="cpu", precision="bf16-mixed")
    assert mixed_model["precision"] == "bf16-mixed" and mixed_key != default_key


def test_bf16_mixed_autocasts_the_frozen_matmuls_only_inside_the_block(tiny_lm) -> None:
    ids = torch.tensor([[5, 6, 7, 8]])
    with computing_in("bf16-mixed", "cpu"):
        assert tiny_lm.model(ids).logits.dtype == torch.bfloat16
    assert tiny_lm.model(ids).logits.dtype == torch.float32
    with computing_in("fp32", "cpu"):
        assert tiny_lm.model(ids).logits.dtype == torch.float32


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_bf16_mixed_lofit_run_trains_fp32_vectors_and_is_recorded_and_reported(builtin_host, tmp_path) -> None:
    settings = ModelSettings("tiny-random-llama", device="cpu", precision="bf16-mixed")
    [outcome] = run_sweep(plan_sweep(["lofit"], ["clutrr"], budget(), settings), tmp_path, progress=False, echo=lambda _: None)
    record = parse_record(json.loads(outcome.path.read_text()))
    assert record.status == "ok", record.error
    assert (record.model.precision, record.model.dtype) == ("bf16-mixed", "fp32")
    assert record.identity["model"]["precision"] == "bf16-mixed"
    assert (record.environment.gpus, record.environment.gpu_driver, record.environment.cuda) == (None, None, None)
    from safetensors.torch import load_file

    [state] = (tmp_path / record.artifacts).rglob("*.safetensors")
    assert {tensor.dtype for name, tensor in load_file(state).items() if not name.endswith("heads")} == {torch.float32}
    header = [line.text for line in build_report_model(tmp_path).header]
    assert "precision: bf16-mixed (fp32 weights, bf16 autocast)" in header


def test_a_device_mapped_run_writes_a_valid_record_that_reports(builtin_host, tmp_path) -> None:
    settings = ModelSettings("tiny-random-llama", device="cpu", device_map="auto")
    [outcome] = run_sweep(plan_sweep(["zero-shot"], ["clutrr"], budget(), settings), tmp_path, progress=False, echo=lambda _: None)
    record = parse_record(json.loads(outcome.path.read_text()))  # strict: the map is typed as the schema says
    assert record.status == "ok", record.error
    assert isinstance(record.model.device_map, dict) and set(record.model.device_map.values()) == {"cpu"}
    assert [loaded.key for loaded in load_records(tmp_path)] == [record.key]
    assert len(build_report_model(tmp_path).finished) == 1
    jsonschema = pytest.importorskip("jsonschema")
    from lofit_bench.records.record import SCHEMA_FILE

    jsonschema.validate(json.loads(outcome.path.read_text()), json.loads(SCHEMA_FILE.read_text()))


def test_each_fold_releases_its_model_before_the_next_loads(builtin_host, tmp_path, monkeypatch) -> None:
    loaded: list[weakref.ref] = []
    alive_at_load: list[bool] = []
    real_load = run_one.load_model

    def watching_load(*args, **kwargs):
        gc.collect()
        alive_at_load.append(any(reference() is not None for reference in loaded))
        lm = real_load(*args, **kwargs)
        loaded.append(weakref.ref(lm.model))
        return lm

    monkeypatch.setattr(run_one, "load_model", watching_load)
    spec = plan_sweep(["zero-shot"], ["truthfulqa"], budget(), ModelSettings("tiny-random-llama", device="cpu"))[0]
    record = run_one.execute_run(spec, RunFolder(tmp_path), progress=False)
    assert record.status == "ok", record.error
    assert alive_at_load == [False, False]  # truthfulqa's two folds: the first model was gone

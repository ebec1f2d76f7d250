"""Shared frozen-model work: computed once per sweep, keyed by content, the same values as a
run computes alone, safe when processes race for one entry."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest
import torch
from method_helpers import TINY, small_budget

from lofit_bench.records.run_folder import RunFolder
from lofit_bench.shared_work import SharedWork
from lofit_bench.sweep.runner import plan_sweep, run_sweep

SHARED_FOLDER = RunFolder.SHARED


def store(tmp_path, owner="run-a", **scope):
    return SharedWork(root=tmp_path / SHARED_FOLDER, scope={"model": "m", "fold": "main"} | scope, owner=owner)


def counting(calls, value=1.0):
    def compute():
        calls.append(1)
        return {"x": torch.full((2, 3), value)}, {"note": "computed"}

    return compute


def test_an_entry_is_computed_once_and_read_back_by_another_run(tmp_path):
    calls = []
    first, second = store(tmp_path, "run-a"), store(tmp_path, "run-b")
    tensors, meta = first.fetch("activations", {"texts": "abc"}, counting(calls))
    again, again_meta = second.fetch("activations", {"texts": "abc"}, counting(calls, value=2.0))
    assert len(calls) == 1
    assert torch.equal(again["x"], torch.ones(2, 3)) and again_meta == meta == {"note": "computed"}
    assert [(use.kind, use.reused, use.created_by) for use in first.uses] == [("activations", False, "run-a")]
    assert [(use.kind, use.reused, use.created_by) for use in second.uses] == [("activations", True, "run-a")]
    assert second.uses[0].key == first.uses[0].key


def test_the_key_is_the_content_fields_and_scope(tmp_path):
    calls = []
    store(tmp_path).fetch("activations", {"texts": "abc"}, counting(calls))
    store(tmp_path).fetch("activations", {"texts": "abd"}, counting(calls))  # other texts
    store(tmp_path, fold="other").fetch("activations", {"texts": "abc"}, counting(calls))  # other fold
    store(tmp_path, model="n").fetch("activations", {"texts": "abc"}, counting(calls))  # other model
    store(tmp_path).fetch("iti-probes", {"texts": "abc"}, counting(calls))  # other kind
    assert len(calls) == 5


def test_a_disabled_store_always_computes_and_records_nothing(tmp_path):
    calls = []
    disabled = SharedWork()
    disabled.fetch("activations", {}, counting(calls))
    disabled.fetch("activations", {}, counting(calls))
    assert len(calls) == 2 and disabled.uses == [] and not (tmp_path / SHARED_FOLDER).exists()


def test_a_failed_computation_leaves_no_entry_and_the_next_run_computes(tmp_path):
    def crash():
        raise RuntimeError("killed mid-way")

    with pytest.raises(RuntimeError):
        store(tmp_path).fetch("lofit-stage1", {"seed": 1}, crash)
    folder = tmp_path / SHARED_FOLDER / "lofit-stage1"
    assert [path.name for path in folder.iterdir() if not path.name.endswith(".lock")] == []
    calls = []
    store(tmp_path).fetch("lofit-stage1", {"seed": 1}, counting(calls))
    assert len(calls) == 1


def test_racing_writers_compute_one_entry_once(tmp_path):
    """Two workers ask for one entry at once: the second waits on the first's lock and reads
    its entry (flock locks separate opens, so threads stand in for processes here)."""
    calls, results = [], []

    def slow():
        calls.append(1)
        time.sleep(0.3)
        return {"x": torch.arange(4.0)}, {}

    def worker(name):
        results.append(store(tmp_path, name).fetch("activations", {"texts": "same"}, slow)[0]["x"])

    threads = [threading.Thread(target=worker, args=(f"run-{index}",)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and all(torch.equal(result, torch.arange(4.0)) for result in results)


def _records(outcomes):
    assert [outcome.status for outcome in outcomes] == ["ok"] * len(outcomes), [outcome.error for outcome in outcomes]
    return [json.loads(outcome.path.read_text()) for outcome in outcomes]


def _uses(record):
    return [(use["kind"], use["reused"]) for use in record["folds"]["main"]["shared_work"]]


def test_iti_repe_and_lofit_on_iti_heads_read_the_frozen_model_once(builtin_host, tmp_path):
    budget = small_budget(dev_examples=4, tune=False)
    specs = plan_sweep(["iti", "repe", "lofit"], ["clutrr"], budget, TINY,
                       method_options={"lofit": {"head_source": "iti", "stage2_learning_rate": 0.01}})
    iti, repe, lofit = _records(run_sweep(specs, tmp_path / "shared", progress=False, echo=lambda _: None, executor="inline"))
    assert _uses(iti) == [("activations", False), ("activations", False), ("iti-probes", False)]  # inner work first
    assert _uses(repe) == [("activations", True), ("activations", True)]
    assert _uses(lofit) == [("iti-probes", True)]
    assert lofit["folds"]["main"]["shared_work"][0]["created_by"] == iti["folds"]["main"]["shared_work"][2]["created_by"]

    alone = [dataclasses.replace(spec, share_work=False) for spec in specs]
    fresh = _records(run_sweep(alone, tmp_path / "alone", progress=False, echo=lambda _: None, executor="inline"))
    assert all(record["folds"]["main"]["shared_work"] == [] for record in fresh)
    for shared_record, fresh_record in zip([iti, repe, lofit], fresh, strict=True):
        assert shared_record["key"] == fresh_record["key"]  # sharing is not part of a run's identity
        assert shared_record["metrics"] == fresh_record["metrics"]
        assert shared_record["folds"]["main"]["per_example"] == fresh_record["folds"]["main"]["per_example"]
    assert iti["folds"]["main"]["fit"]["heads"] == fresh[0]["folds"]["main"]["fit"]["heads"]
    assert repe["folds"]["main"]["fit"]["layer_scan"] == fresh[1]["folds"]["main"]["fit"]["layer_scan"]
    assert lofit["folds"]["main"]["fit"]["heads"] == fresh[2]["folds"]["main"]["fit"]["heads"]


def test_a_k_sweep_of_three_lofit_configs_trains_stage_1_once(builtin_host, tmp_path, monkeypatch):
    from lofit_bench.methods.lofit import LoFiT

    stage1_runs = []
    original = LoFiT._rank_heads

    def counted(self, *args, **kwargs):
        stage1_runs.append(self.config.heads)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LoFiT, "_rank_heads", counted)
    budget = small_budget(tune=False)
    specs = [spec for heads in (2, 3, 4)
             for spec in plan_sweep(["lofit"], ["clutrr"], budget, TINY, method_options={"lofit": {"heads": heads}})]
    records = _records(run_sweep(specs, tmp_path / "sweep", progress=False, echo=lambda _: None, executor="inline"))
    assert stage1_runs == [2]
    assert [_uses(record) for record in records] == [[("lofit-stage1", False)], [("lofit-stage1", True)], [("lofit-stage1", True)]]
    paid = [record["folds"]["main"]["fit"]["stages"]["head_selection"]["steps"] for record in records]
    assert paid[0] > 0 and paid[1:] == [0, 0]  # a reused stage 1 is not paid again

    fresh = _records(run_sweep([dataclasses.replace(specs[1], share_work=False)], tmp_path / "fresh",
                               progress=False, echo=lambda _: None, executor="inline"))[0]
    assert stage1_runs == [2, 3]
    rankings = [record["folds"]["main"]["fit"]["heads"]["ranking"] for record in [*records, fresh]]
    assert all(ranking == rankings[-1] for ranking in rankings)
    assert records[1]["folds"]["main"]["fit"]["heads"]["chosen"] == fresh["folds"]["main"]["fit"]["heads"]["chosen"]
    assert records[1]["metrics"] == fresh["metrics"]
    assert [len(record["folds"]["main"]["fit"]["heads"]["chosen"]) for record in records] == [2, 3, 4]


# -- --tune-per fold: seeds that do not re-tune ------------------------------------------------------
def _tuning(record):
    return record["folds"]["main"]["tuning"]


def test_tune_per_fold_tunes_the_first_seed_once_and_other_seeds_train_with_its_values(builtin_host, tmp_path, monkeypatch):
    from lofit_bench.sweep.tuning import Tuner

    tunings = []
    original = Tuner.tune

    def counted(self, lm, template):
        tunings.append((self.seed, template.seed))
        return original(self, lm, template)

    monkeypatch.setattr(Tuner, "tune", counted)
    budget = small_budget(dev_examples=4, trials=2)
    specs = plan_sweep(["iti"], ["clutrr"], budget, TINY, seeds=[42, 43, 44])
    assert [spec.tuning_seed for spec in specs] == [42, 42, 42]
    first, second, third = _records(run_sweep(specs, tmp_path / "fold", progress=False, echo=lambda _: None, executor="inline"))
    assert tunings == [(42, 42)]
    assert _tuning(first)["trials_run"] == 2 and _tuning(first)["tune_per"] == "fold"
    for record in (second, third):
        tuning = _tuning(record)
        assert tuning["reused"] and tuning["tuned_on_seed"] == 42 and tuning["trials_run"] == 0
        assert tuning["chosen"] == _tuning(first)["chosen"]
        assert tuning["tuned_by"] == first["folds"]["main"]["shared_work"][-1]["created_by"]
        assert record["folds"]["main"]["fit"]["hyperparameters"]["alpha"] == tuning["chosen"]["alpha"]
        assert record["identity"]["tuned_on_seed"] == 42
        assert ("tuned-values", True) in _uses(record)
    assert "tuned_on_seed" not in first["identity"]

    per_seed = plan_sweep(["iti"], ["clutrr"], budget, TINY, seeds=[42, 43], tune_per="seed")
    assert [spec.tuning_seed for spec in per_seed] == [None, None]
    assert per_seed[0].key == specs[0].key and per_seed[1].key != specs[1].key


def test_the_values_do_not_depend_on_which_seed_runs_first(builtin_host, tmp_path):
    """Under --jobs N a later seed may reach the tuning first: it then tunes as the first seed
    would, and the first seed's run trains once with those values: the same result."""
    budget = small_budget(dev_examples=4, trials=2)
    specs = plan_sweep(["iti"], ["clutrr"], budget, TINY, seeds=[42, 43])
    later, first = _records(run_sweep(specs[::-1], tmp_path / "reversed", progress=False, echo=lambda _: None, executor="inline"))
    assert _tuning(first)["reused"] and _tuning(first)["tuned_on_seed"] == 42
    assert _tuning(first)["tuned_by"] == later["folds"]["main"]["shared_work"][-1]["created_by"]
    alone = _records(run_sweep(plan_sweep(["iti"], ["clutrr"], budget, TINY, seeds=[42]), tmp_path / "alone",
                               progress=False, echo=lambda _: None, executor="inline"))[0]
    assert _tuning(first)["chosen"] == _tuning(later)["chosen"] == _tuning(alone)["chosen"]
    assert first["metrics"] == alone["metrics"]
    assert first["folds"]["main"]["per_example"] == alone["folds"]["main"]["per_example"]


def test_without_shared_work_the_seeds_still_share_one_tuning(builtin_host, tmp_path, monkeypatch):
    from lofit_bench.sweep.tuning import Tuner

    tunings = []
    original = Tuner.tune
    monkeypatch.setattr(Tuner, "tune", lambda self, lm, template: tunings.append(self.seed) or original(self, lm, template))
    specs = plan_sweep(["iti"], ["clutrr"], small_budget(dev_examples=4, trials=2), TINY, seeds=[42, 43], share_work=False)
    first, second = _records(run_sweep(specs, tmp_path, progress=False, echo=lambda _: None, executor="inline"))
    assert tunings == [42]
    assert _uses(first) == [("tuned-values", False)] and _uses(second) == [("tuned-values", True)]
    assert _tuning(second)["chosen"] == _tuning(first)["chosen"]


def test_the_command_line_passes_tune_per_and_no_shared_work_to_the_plan(builtin_host, tmp_path, monkeypatch):
    from lofit_bench.cli import main
    from lofit_bench.sweep import runner

    planned = []
    monkeypatch.setattr(runner, "run_sweep", lambda specs, *args, **kwargs: planned.extend(specs) or [])
    base = ["run", "--methods", "iti", "--tasks", "clutrr", "--model", "tiny-random-llama", "--device", "cpu",
            "--budget", "smoke", "--seeds", "1,2", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert [(spec.tuning_seed, spec.share_work) for spec in planned] == [(1, True), (1, True)]  # the default: fold
    planned.clear()
    assert main([*base, "--tune-per", "seed", "--no-shared-work", "--out", str(tmp_path / "b")]) == 0
    assert [(spec.tuning_seed, spec.share_work) for spec in planned] == [(None, False), (None, False)]
    planned.clear()
    config = tmp_path / "sweep.toml"
    config.write_text('tune_per = "seed"\n')
    assert main([*base, "--config", str(config), "--out", str(tmp_path / "c")]) == 0
    assert [spec.tuning_seed for spec in planned] == [None, None]


def test_a_damaged_entry_is_computed_again(tmp_path):
    calls = []
    first = store(tmp_path)
    first.fetch("activations", {"texts": "abc"}, counting(calls))
    entry = tmp_path / SHARED_FOLDER / "activations" / first.uses[0].key
    (entry / "tensors.safetensors").unlink()
    again = store(tmp_path, "run-b")
    tensors, _ = again.fetch("activations", {"texts": "abc"}, counting(calls, value=1.0))
    assert len(calls) == 2 and not again.uses[0].reused and torch.equal(tensors["x"], torch.ones(2, 3))
    assert (entry / "tensors.safetensors").exists()


def test_parallel_runs_in_their_own_processes_train_one_stage_1(builtin_host, tmp_path):
    """--jobs 2, two K values at once: one process trains stage 1, the other waits on its lock and reads it."""
    specs = [spec for heads in (2, 3) for spec in
             plan_sweep(["lofit"], ["clutrr"], small_budget(tune=False), TINY, method_options={"lofit": {"heads": heads}})]
    records = _records(run_sweep(specs, tmp_path, progress=False, echo=lambda _: None, executor="process", jobs=2))
    uses = [use for record in records for use in record["folds"]["main"]["shared_work"]]
    assert sorted(use["reused"] for use in uses) == [False, True]
    assert len({use["key"] for use in uses}) == 1
    rankings = [record["folds"]["main"]["fit"]["heads"]["ranking"] for record in records]
    assert rankings[0] == rankings[1]
    assert [path.name for path in (tmp_path / SHARED_FOLDER / "lofit-stage1").iterdir() if path.is_dir()] == [uses[0]["key"]]

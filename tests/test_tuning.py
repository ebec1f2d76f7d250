"""The harness's tuner: the same seeded search, on dev only, for every method (tiny models)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lofit_bench import plugins
from lofit_bench.budget import get_budget
from lofit_bench.errors import Diverged, UserError
from lofit_bench.method import MethodConfig
from lofit_bench.methods.lora import LoRA
from lofit_bench.search_space import (
    Choice,
    IntRange,
    LogUniform,
    Uniform,
    contains,
    declared_space,
    range_edge,
)
from lofit_bench.sweep import tuning
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep
from lofit_bench.task import EvalResult

TINY = ModelSettings("tiny-random-llama", device="cpu")
EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "lofit-bench-bitfit"

pytestmark = pytest.mark.usefixtures("builtin_plugins_only")


def budget(**changes):
    values = dict(train_examples=8, dev_examples=4, eval_examples=2, trials=3, epochs=2, prune_examples=None)
    return get_budget("smoke").replace(**(values | changes))


def sweep(methods, tasks, out: Path, the_budget=None, options=None, **run_options):
    specs = plan_sweep(methods, tasks, the_budget or budget(), TINY, method_options=options)
    return run_sweep(specs, out, progress=False, echo=lambda *_: None, executor="inline", **run_options)


def tuning_record(outcome, fold="main") -> dict:
    record = json.loads(outcome.path.read_text())
    assert record["status"] == "ok", record.get("error")
    return record["folds"][fold]["tuning"]


def planted_dev_scores(monkeypatch, scores):
    """Replace the tuner's dev scores by ``scores`` (one per dev evaluation, in order), keeping
    the real evaluation (so the split it reads is still the dev split)."""
    real = tuning.evaluate
    queue = list(scores)

    def evaluate(method, task, fold, limit, batch_size, progress):
        result = real(method, task, fold, limit, batch_size, progress)
        value = queue.pop(0)
        return EvalResult({name: value for name in result.metrics}, result.example_ids, result.per_example)

    monkeypatch.setattr(tuning, "evaluate", evaluate)
    return queue


# -- search spaces --------------------------------------------------------------------------------
def test_spaces_are_read_from_field_metadata_and_check_their_values():
    assert declared_space(LoRA.config_class) == {"learning_rate": LogUniform(1e-5, 5e-2)}
    assert contains(LogUniform(1e-3, 1.0), 1e-2) and not contains(LogUniform(1e-3, 1.0), 2.0)
    assert contains(IntRange(0, 2), 2) and not contains(IntRange(0, 2), 1.5) and not contains(IntRange(0, 2), True)
    assert contains(Choice(0.01, 0.03), 0.03) and not contains(Choice(0.01, 0.03), 0.05)
    assert contains(Uniform(0, 1), 0.5)
    with pytest.raises(ValueError):
        LogUniform(0.0, 1.0)

    @dataclass
    class Broken(MethodConfig):
        rate: float = field(default=1.0, metadata={"tune": [0.1, 1.0]})

    with pytest.raises(UserError, match="LogUniform, Uniform, IntRange, Choice"):
        declared_space(Broken)


def test_every_trained_builtin_method_declares_what_it_tunes():
    host = plugins.get_host()
    spaces = {name: set(host.methods.get(name).search_space(set())) for name in host.methods}
    assert spaces == {
        "zero-shot": set(),
        "lofit": {"stage2_learning_rate"},
        "iti": {"alpha", "heads"},
        "repe": {"alpha", "layer_rank"},
        "lora": {"learning_rate"},
        "full-ft": {"learning_rate"},
        "red": {"learning_rate"},
        "loreft": {"learning_rate"},
    }
    assert "layer_rank" not in host.methods.get("repe").search_space({"layer"})  # a fixed layer makes it moot


# -- the tuner ------------------------------------------------------------------------------------
def test_the_same_sampler_seed_gives_the_same_trials(tmp_path):
    first = tuning_record(sweep(["lora"], ["mquake"], tmp_path / "a")[0])
    second = tuning_record(sweep(["lora"], ["mquake"], tmp_path / "b")[0])
    assert [trial["values"] for trial in first["trials"]] == [trial["values"] for trial in second["trials"]]
    assert first["trials"][0]["values"] == {"learning_rate": 1e-3}  # the paper's Table 7 value comes first
    assert len({trial["values"]["learning_rate"] for trial in first["trials"]}) == 3
    assert all(1e-5 <= trial["values"]["learning_rate"] <= 5e-2 for trial in first["trials"])
    other_seed = sweep(["lora"], ["mquake"], tmp_path / "c", budget(seeds=(7,)))[0]
    assert [t["values"] for t in tuning_record(other_seed)["trials"]][1:] != [t["values"] for t in first["trials"]][1:]


def test_a_value_the_user_sets_is_fixed_not_tuned(tmp_path):
    iti, lora = sweep(["iti", "lora"], ["mquake"], tmp_path, options={"iti": {"heads": 2}, "lora": {"learning_rate": 5e-4}})
    iti_tuning = tuning_record(iti)
    assert all(set(trial["values"]) == {"alpha"} for trial in iti_tuning["trials"])
    assert iti_tuning["fixed"] == {"heads": 2} and iti_tuning["sources"]["heads"] == "config (--method-set)"
    lora_tuning = tuning_record(lora)
    assert lora_tuning["trials_run"] == 0 and "nothing to tune" in lora_tuning["note"]
    record = json.loads(lora.path.read_text())
    assert record["folds"]["main"]["fit"]["hyperparameters"]["learning_rate"] == 5e-4


def test_the_test_split_is_scored_once_after_every_trial(tmp_path, monkeypatch):
    task_class = plugins.get_host().tasks.get("mquake")
    splits = []
    real = task_class.evaluate

    def counting(self, scorer, fold, split="test", limit=None):
        splits.append(split)
        return real(self, scorer, fold, split, limit)

    monkeypatch.setattr(task_class, "evaluate", counting)
    [outcome] = sweep(["lofit"], ["mquake"], tmp_path, budget(prune_examples=2, trials=3))
    trials = tuning_record(outcome)["trials"]
    assert splits[-1] == "test" and splits.count("test") == 1
    assert set(splits[:-1]) == {"dev"} and len(splits[:-1]) == 3 + 3  # a pruning score after epoch 1 + the dev score
    assert [trial["reused"] for trial in trials] == [[], ["lofit stage 1"], ["lofit stage 1"]]


def test_a_hopeless_trial_is_pruned_and_the_best_state_is_what_is_evaluated(tmp_path, monkeypatch):
    # trial 0: 0.9 after epoch 1, 0.9 at the end; trials 1 and 2: 0.1 after epoch 1 -> pruned
    planted_dev_scores(monkeypatch, [0.9, 0.9, 0.1, 0.1])
    [outcome] = sweep(["lora"], ["mquake"], tmp_path, budget(prune_examples=2))
    record = tuning_record(outcome)
    assert [trial["state"] for trial in record["trials"]] == ["complete", "pruned", "pruned"]
    assert record["trials_pruned"] == 2 and record["chosen_trial"] == 0 and record["chosen"] == {"learning_rate": 1e-3}
    assert record["trials"][1]["intermediate"] == {"1": 0.1}
    run = json.loads(outcome.path.read_text())
    assert run["method"]["config"]["learning_rate"] == 1e-3  # trial 0's state was loaded back
    assert run["trainable_parameters"]["count"] == 2 * (8 * 64 + 64 * 8 + 8 * 64 + 32 * 8)  # rank-8 LoRA on q (64->64) and v (64->32) of 2 layers
    assert not (tmp_path / "tuning" / outcome.path.stem).exists()  # the kept state is cleared once used


def test_a_later_trial_that_scores_best_on_dev_is_chosen_and_its_state_evaluated(tmp_path, monkeypatch):
    # trial 0 (the untuned values): 0.2 then 0.2; trial 1: 0.6 then 0.8; trial 2: 0.1 -> pruned.
    # A tuner that always kept trial 0 (the default) fails here.
    planted_dev_scores(monkeypatch, [0.2, 0.2, 0.6, 0.8, 0.1])
    [outcome] = sweep(["lora"], ["mquake"], tmp_path, budget(prune_examples=2))
    record = tuning_record(outcome)
    assert [trial["state"] for trial in record["trials"]] == ["complete", "complete", "pruned"]
    assert record["chosen_trial"] == 1
    sampled = record["trials"][1]["values"]["learning_rate"]
    assert sampled != 1e-3 and record["chosen"] == {"learning_rate": sampled}
    edge = range_edge(LogUniform(1e-5, 5e-2), sampled)
    assert record["range_edges"] == ({"learning_rate": edge} if edge else {})  # recorded for the report to flag
    run = json.loads(outcome.path.read_text())
    assert run["method"]["config"]["learning_rate"] == sampled  # trial 1's state was loaded back and tested


def test_ties_go_to_the_earliest_trial_and_other_metrics_break_them(tmp_path, monkeypatch):
    planted_dev_scores(monkeypatch, [0.5, 0.5, 0.5])
    assert tuning_record(sweep(["lora"], ["mquake"], tmp_path / "a")[0])["chosen_trial"] == 0

    class Trial:
        def __init__(self, number, dev):
            self.number, self.user_attrs = number, {"dev": dev}
            self.state = tuning_trial_state("COMPLETE")

    trials = [Trial(0, {"em": 0.5, "lenient": 0.1}), Trial(1, {"em": 0.5, "lenient": 0.3}), Trial(2, {"em": 0.4, "lenient": 0.9})]
    assert tuning.choose(trials, ("em", "lenient"), "em").number == 1


def test_all_trials_tied_on_every_dev_metric_is_recorded_and_reported_as_no_signal(tmp_path, monkeypatch):
    from lofit_bench.records.store import load_records
    from lofit_bench.report.model import tuning_label

    planted_dev_scores(monkeypatch, [0.0, 0.0, 0.0])  # every metric, secondary ones included, ties at 0
    [outcome] = sweep(["lora"], ["mquake"], tmp_path)
    record = tuning_record(outcome)
    assert record["signal"] == "no signal on dev" and record["chosen_trial"] == 0
    assert record["sources"]["learning_rate"] == "no signal on dev: the first trial's values kept"
    [run] = load_records(tmp_path)
    assert tuning_label([run]) == "3 trials (0 pruned, no signal on dev: all tied, first kept)"


def test_the_teacher_forced_metrics_break_ties_after_the_task_metrics(tmp_path, monkeypatch):
    from lofit_bench.tasks.mquake import Mquake

    planted_dev_scores(monkeypatch, [0.0, 0.0, 0.0])
    scores = iter([0.2, 0.7, 0.4])
    real = tuning.evaluate

    def evaluate(method, task, fold, limit, batch_size, progress):
        result = real(method, task, fold, limit, batch_size, progress)
        result.metrics["efficacy"] = next(scores)  # exact match ties at 0; efficacy differs
        return result

    monkeypatch.setattr(tuning, "evaluate", evaluate)
    assert Mquake.secondary_metrics == ("efficacy", "new_answer_log_prob")
    record = tuning_record(sweep(["lora"], ["mquake"], tmp_path)[0])
    assert record["chosen_trial"] == 1 and record["signal"] == "dev"
    assert tuning.dev_signal([{"state": "complete", "dev": {"em": 0.0}}], ("em",)) == tuning.ONE_TRIAL


def tuning_trial_state(name):
    import optuna

    return getattr(optuna.trial.TrialState, name)


def test_a_diverged_trial_fails_alone_and_a_run_whose_trials_all_fail_is_failed(tmp_path, monkeypatch):
    from lofit_bench.methods import lora as lora_module

    real_train = lora_module.train
    calls = []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Diverged("training diverged: loss is NaN at step 1")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(lora_module, "train", train)
    record = tuning_record(sweep(["lora"], ["mquake"], tmp_path / "a")[0])
    assert [trial["state"] for trial in record["trials"]] == ["complete", "failed", "complete"]
    assert "Diverged" in record["trials"][1]["error"] and record["trials_failed"] == 1

    def always(*args, **kwargs):
        raise Diverged("training diverged: loss is NaN at step 1")

    monkeypatch.setattr(lora_module, "train", always)
    [outcome] = sweep(["lora"], ["mquake"], tmp_path / "b")
    failed = json.loads(outcome.path.read_text())
    assert outcome.status == "failed" and failed["error"]["type"] == "Diverged" and "metrics" not in failed


def test_a_killed_tuning_run_resumes_its_finished_trials(tmp_path, monkeypatch):
    from lofit_bench.methods import lora as lora_module

    real_train = lora_module.train
    calls = []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the process were killed mid-trial: no record of it
        return real_train(*args, **kwargs)

    monkeypatch.setattr(lora_module, "train", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        sweep(["lora"], ["mquake"], tmp_path)
    assert len(calls) == 3
    assert list((tmp_path / "tuning").glob("*.sqlite3"))
    calls.clear()
    monkeypatch.setattr(lora_module, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    [outcome] = sweep(["lora"], ["mquake"], tmp_path)
    record = tuning_record(outcome)
    assert len(calls) == 1  # only the interrupted trial runs again
    assert record["trials_resumed"] == 2 and record["trials_run"] == 3
    uninterrupted = tuning_record(sweep(["lora"], ["mquake"], tmp_path / "fresh")[0])
    assert [t["values"] for t in record["trials"]][:2] == [t["values"] for t in uninterrupted["trials"]][:2]


def test_tuning_off_runs_the_paper_values_without_dev_trials(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "evaluate", lambda *a, **k: pytest.fail("no dev evaluation when tuning is off"))
    [outcome] = sweep(["lofit"], ["mquake"], tmp_path, budget(tune=False))
    record = json.loads(outcome.path.read_text())
    assert record["folds"]["main"]["tuning"]["mode"] == "off"
    # Stage 1 keeps Table 6's values; stage 2 takes LoFiT's rate for a model under 1B parameters
    hyperparameters = record["folds"]["main"]["fit"]["hyperparameters"]
    assert (hyperparameters["stage1_learning_rate"], hyperparameters["stage2_learning_rate"]) == (5e-3, 0.1)
    assert record["folds"]["main"]["tuning"]["sources"] == {
        "stage2_learning_rate": "lofit-bench's default for models under 1B parameters (README, LoFiT defaults)"}
    assert record["budget"]["tune"] is False


# -- plugins --------------------------------------------------------------------------------------
@pytest.fixture
def example_plugin(tmp_path, monkeypatch):
    """The example plugin (BitFit and the local-qa task) installed beside the built-ins."""
    site = tmp_path / "site"
    info = site / "lofit_bench_bitfit-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lofit-bench-bitfit\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[lofit_bench]\nbitfit = lofit_bench_bitfit\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "bitfit")
    plugins.reset_host()
    yield
    plugins.reset_host()


def test_every_trained_method_runs_tuned_on_a_task_without_paper_values(example_plugin, tmp_path):
    methods = ["lofit", "lora", "full-ft", "red", "loreft", "iti", "repe", "bitfit"]
    outcomes = sweep(methods, ["local-qa"], tmp_path / "tuned", budget(trials=2, epochs=1, eval_examples=2))
    for outcome in outcomes:
        record = tuning_record(outcome)
        assert record["trials_run"] == 2, outcome.spec.method
        if outcome.spec.method == "bitfit":  # the plugin's own space: its default first, then sampled in it
            assert record["space"] == {"learning_rate": "log-uniform [0.0001, 0.1]"}
            assert record["trials"][0]["values"] == {"learning_rate": 1e-3}
            assert 1e-4 <= record["trials"][1]["values"]["learning_rate"] <= 1e-1
    # untuned on a task with no paper row: LoRA's generic value (Table 7's rate for the paper's SFT task)
    [untuned] = sweep(["lora"], ["local-qa"], tmp_path / "untuned", budget(tune=False))
    record = json.loads(untuned.path.read_text())
    assert untuned.status == "ok" and record["method"]["config"]["learning_rate"] == 1e-3


# -- the report -----------------------------------------------------------------------------------
def test_the_report_shows_tuning_per_row_carries_the_trials_and_flags_a_mix(tmp_path):
    from lofit_bench.report.build import render_markdown
    from lofit_bench.report.write import build_report

    sweep(["lora", "zero-shot"], ["mquake"], tmp_path)
    sweep(["iti"], ["mquake"], tmp_path, budget(tune=False))
    report = build_report(tmp_path)
    rows = {row.method: row for row in report.summary}
    assert rows["lora"].tuning == "3 trials (0 pruned)" and rows["lora"].chosen.startswith("learning_rate=")
    assert rows["iti"].tuning == "off" and rows["iti"].chosen == "-"
    assert rows["zero-shot"].tuning == "nothing to tune"
    assert any("tune = " in line.text for line in report.header if line.warning)  # a folder mixing both is flagged
    results = json.loads((tmp_path / "results.json").read_text())
    [lora_trials] = [entry for entry in results["trials"] if entry["method"] == "lora"]
    assert len(lora_trials["trials"]) == 3
    assert rows["lora"].chosen == f"learning_rate={lora_trials['chosen']['learning_rate']:.3g}"
    assert "| tuning " in render_markdown(report) and "chosen values" in render_markdown(report)

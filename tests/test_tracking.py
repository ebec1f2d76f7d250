"""`run --report-to`: each record sent to MLflow, TensorBoard and W&B, offline, read back with
the trackers' own readers."""

from __future__ import annotations

import json

import pytest
from report_helpers import fake_record, write

from lofit_bench.cli import main
from lofit_bench.records.store import read_record
from lofit_bench.sweep.tracking import SENDERS, TrackingWarning, track_record, tracked_runs


def planted(tmp_path):
    """A record with two trials (one pruned after epoch 1) and three training losses."""
    record = fake_record("lora", 7, 0.4)
    record["method"]["config"] = {"learning_rate": 0.002, "rank": 8}
    record["folds"]["main"] |= {
        "metrics": {"exact_match": 0.4},
        "fit": {"training": {"losses": [3.0, 2.0, 1.5]}},
        "tuning": {"mode": "on", "metric": "exact_match", "chosen": {"learning_rate": 0.002}, "trials": [
            {"number": 0, "state": "complete", "values": {"learning_rate": 0.002}, "dev": {"exact_match": 0.5},
             "intermediate": {"1": 0.25}, "final_loss": 1.5},
            {"number": 1, "state": "pruned", "values": {"learning_rate": 0.1}, "dev": None, "intermediate": {"1": 0.125}},
        ]},
    }
    write(tmp_path, [record])
    path = tmp_path / "records" / "0.json"
    return read_record(path)[0], path


def test_one_tracked_run_per_trial_and_fold_from_the_record(tmp_path):
    record, path = planted(tmp_path)
    runs = tracked_runs(record, path)
    assert [run.name for run in runs] == ["0/main/trial-0", "0/main/trial-1", "0/main"]
    first, pruned, final = runs
    assert first.params["tuned.learning_rate"] == "0.002" and pruned.params["tuned.learning_rate"] == "0.1"
    assert final.params["chosen.learning_rate"] == "0.002" and final.params["config.rank"] == "8"
    assert final.params["budget.name"] == "smoke" and final.params["seed"] == "7" and final.params["trial"] == "final"
    assert first.metrics == [("dev_intermediate/exact_match", 0.25, 1), ("dev/exact_match", 0.5, 0), ("train/final_loss", 1.5, 0)]
    assert pruned.metrics == [("dev_intermediate/exact_match", 0.125, 1)] and pruned.status == "pruned"
    assert final.metrics == [("train/loss", 3.0, 0), ("train/loss", 2.0, 1), ("train/loss", 1.5, 2), ("test/exact_match", 0.4, 0)]
    assert {run.group for run in runs} == {"0"} and all(run.record_file == path for run in runs)


def test_a_failing_tracker_costs_a_warning_not_the_record(tmp_path, monkeypatch):
    record, path = planted(tmp_path)

    def broken(runs, out_dir):
        raise ConnectionError("no server")

    monkeypatch.setitem(SENDERS, "mlflow", broken)
    with pytest.warns(TrackingWarning, match="--report-to mlflow: could not send 0 .ConnectionError: no server.; the record is saved"):
        track_record(record, path, tmp_path, ["mlflow"])


def test_an_unknown_tracker_is_one_line(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--methods", "zero-shot", "--tasks", "clutrr", "--report-to", "mlflow,neptune"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "--report-to: unknown tracker neptune: expected one or more of mlflow, tensorboard, wandb" in error
    assert error.count("\n") == 1


def test_a_tiny_model_run_fills_an_mlflow_file_store_and_a_tensorboard_log(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install 'lofit-bench[mlflow]'")
    pytest.importorskip("tensorboard", reason="pip install 'lofit-bench[tensorboard]'")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "sweep"
    code = main(["run", "--methods", "lora", "--tasks", "clutrr", "--model", "tiny-random-llama", "--budget", "smoke",
                 "--budget-set", "eval_examples=3", "--budget-set", "trials=2", "--tune", "on", "--executor", "inline",
                 "--out", str(out), "--report-to", "mlflow,tensorboard", "--quiet"])
    assert code == 0
    (record_file,) = (out / "records").glob("*.json")
    record = json.loads(record_file.read_text())
    stem, tuning = record_file.stem, record["folds"]["main"]["tuning"]
    losses = record["folds"]["main"]["fit"]["training"]["losses"]

    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("lofit-bench sweep")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {f"{stem}/main", f"{stem}/main/trial-0", f"{stem}/main/trial-1"}
    final = runs[f"{stem}/main"]
    assert final.data.params["budget.trials"] == "2" and final.data.params["method"] == "lora"
    assert final.data.params["chosen.learning_rate"] == json.dumps(tuning["chosen"]["learning_rate"])
    assert final.data.params["config.rank"] == json.dumps(record["method"]["config"]["rank"])
    history = client.get_metric_history(final.info.run_id, "train/loss")
    assert [metric.step for metric in history] == list(range(len(losses)))
    assert [metric.value for metric in history] == pytest.approx(losses)
    assert final.data.metrics["test/exact_match"] == pytest.approx(record["metrics"]["exact_match"])
    trial = runs[f"{stem}/main/trial-0"]
    assert trial.data.metrics["dev/exact_match"] == pytest.approx(tuning["trials"][0]["dev"]["exact_match"])
    assert [artifact.path for artifact in client.list_artifacts(final.info.run_id)] == [record_file.name]

    events = EventAccumulator(str(out / "tensorboard" / stem / "main"))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [event.step for event in scalars] == list(range(len(losses)))
    assert [event.value for event in scalars] == pytest.approx(losses, rel=1e-6)  # stored as float32
    params = events.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "budget.trials = 2" in params and "chosen.learning_rate = " in params
    assert (out / "tensorboard" / stem / "main" / record_file.name).read_bytes() == record_file.read_bytes()
    trial_events = EventAccumulator(str(out / "tensorboard" / stem / "main" / "trial-1"))
    trial_events.Reload()
    assert [event.value for event in trial_events.Scalars("dev/exact_match")] == pytest.approx(
        [tuning["trials"][1]["dev"]["exact_match"]])


def test_wandb_runs_offline_with_the_record(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install 'lofit-bench[wandb]'")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    record, path = planted(tmp_path)
    SENDERS["wandb"](tracked_runs(record, path), tmp_path / "out")
    folders = sorted((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(folders) == 3  # two trials and the final fit, none sent anywhere
    assert all((folder / "files" / "0.json").read_bytes() == path.read_bytes() for folder in folders)

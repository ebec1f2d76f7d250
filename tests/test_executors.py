"""Executors and sweeps: crash isolation in child processes, kill -9 and resume, sweep files, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from plugin_helpers import install_entry_point_plugin

from lofit_bench import plugins
from lofit_bench.budget import get_budget
from lofit_bench.cli import main
from lofit_bench.sweep.executors import threads_per_job
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep

TINY = ModelSettings("tiny-random-llama", device="cpu")

PLUGIN_SOURCE = '''
"""Test methods that crash their process or stall, installed through an entry point."""
import os
import time

from lofit_bench import hookimpl
from lofit_bench.method import Method


class Crash(Method):
    name = "test-crash"
    uses_training_data = False

    def prepare(self, lm):
        self.lm = lm

    def fit(self, context):
        os.kill(os.getpid(), 9)  # what the OOM killer or a native crash looks like

    def trainable_parameters(self):
        return 0

    def remove(self):
        self.lm = None


class Stall(Crash):
    name = "test-stall"

    def fit(self, context):
        if os.environ.get("LOFIT_TEST_STALL_PIDFILE"):
            with open(os.environ["LOFIT_TEST_STALL_PIDFILE"], "w") as handle:
                handle.write(str(os.getpid()))
        if os.environ.get("LOFIT_TEST_STALL"):
            time.sleep(120)
        return {}


@hookimpl
def register_methods(register):
    register(Crash)
    register(Stall)
'''


@pytest.fixture
def installed_test_plugin(tmp_path, monkeypatch):
    """A plugin discoverable through the `lofit_bench` entry-point group, also by child processes."""
    site = install_entry_point_plugin(tmp_path, monkeypatch, "crashing_plugin", PLUGIN_SOURCE, "crashing-plugin")
    yield site
    plugins.reset_host()


def tiny_budget():
    return get_budget("smoke").replace(eval_examples=2)


def test_a_killed_run_process_is_a_failed_record_and_the_other_runs_go_on(tmp_path, installed_test_plugin):
    specs = plan_sweep(["test-crash", "zero-shot"], ["clutrr"], tiny_budget(), TINY)
    outcomes = run_sweep(specs, tmp_path / "out", progress=False, echo=lambda _: None, executor="process", jobs=2)
    assert [outcome.status for outcome in outcomes] == ["failed", "ok"]
    crashed = json.loads(outcomes[0].path.read_text())
    assert crashed["error"]["type"] == "WorkerCrashed"
    assert crashed["method"]["name"] == "test-crash" and crashed["key"] == specs[0].key
    finished = json.loads(outcomes[1].path.read_text())
    assert finished["status"] == "ok"
    assert finished["pid"] != os.getpid()  # it really ran in a child process


def test_kill_9_mid_sweep_then_resume_without_duplicates_or_losses(tmp_path, installed_test_plugin):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "lofit_bench", "run", "--methods", "zero-shot,test-stall", "--tasks", "clutrr",
        "--model", "tiny-random-llama", "--device", "cpu", "--budget", "smoke", "--budget-set", "eval_examples=2",
        "--out", str(out), "--executor", "inline",
    ]
    environment = dict(os.environ, LOFIT_TEST_STALL="1")
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / "records"
    deadline = time.monotonic() + 120
    while not (records.is_dir() and list(records.glob("zero-shot--*.json"))):
        assert process.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline, "the first run never finished"
        time.sleep(0.5)
    time.sleep(1.0)  # now inside test-stall's fit
    process.send_signal(signal.SIGKILL)
    process.wait()
    [first] = list(records.glob("*.json"))
    stamp = first.stat().st_mtime_ns

    result = subprocess.run(command, capture_output=True, text=True)  # no stall this time
    assert result.returncode == 0, result.stderr
    assert "already done, skipped" in result.stdout
    files = sorted(records.glob("*.json"))
    assert len(files) == 2
    assert first.stat().st_mtime_ns == stamp
    assert all(json.loads(path.read_text())["status"] == "ok" for path in files)
    assert not [path for path in records.iterdir() if path.name.startswith(".")]


def test_sweep_file_with_models_seeds_and_budget_overrides(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "")
    plugins.reset_host()
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(textwrap.dedent(f"""
        methods = ["zero-shot"]
        tasks = ["clutrr", "mquake"]
        models = ["tiny-random-llama"]
        budget = "smoke"
        seeds = [1, 2]
        out = "{tmp_path / 'out'}"
        executor = "inline"
        device = "cpu"

        [budget_overrides]
        eval_examples = 2
    """))
    code = main(["run", "--config", str(sweep)])
    plugins.reset_host()
    assert code == 0
    records = [json.loads(path.read_text()) for path in (tmp_path / "out" / "records").glob("*.json")]
    assert sorted((record["task"]["name"], record["seed"]) for record in records) == [
        ("clutrr", 1), ("clutrr", 2), ("mquake", 1), ("mquake", 2)
    ]
    assert {record["budget"]["eval_examples"] for record in records} == {2}
    assert "± " in capsys.readouterr().out  # two seeds aggregate as mean ± std


@pytest.mark.parametrize(
    ("content", "message"),
    [("methods = 3", "must be a list of names"), ("colour = 'red'", "unknown keys"), ("methods = [", "malformed")],
)
def test_bad_sweep_files_are_user_errors(tmp_path, capsys, content, message):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(content)
    assert main(["run", "--config", str(sweep)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_ray_executor_gives_the_same_records_as_sequential(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "")
    plugins.reset_host()
    specs = plan_sweep(["zero-shot"], ["clutrr", "mquake"], tiny_budget(), TINY)
    sequential = run_sweep(specs, tmp_path / "sequential", progress=False, echo=lambda _: None, executor="inline")
    on_ray = run_sweep(specs, tmp_path / "ray", progress=False, echo=lambda _: None, executor="ray", jobs=2)
    for left, right in zip(sequential, on_ray, strict=True):
        a, b = (json.loads(Path(outcome.path).read_text()) for outcome in (left, right))
        assert a["status"] == b["status"] == "ok"
        assert a["key"] == b["key"]
        assert a["metrics"] == b["metrics"]
        assert a["folds"]["main"]["per_example"] == b["folds"]["main"]["per_example"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its init) counts as gone.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process state from /proc")
def test_a_run_process_stops_when_its_sweep_is_killed(tmp_path, installed_test_plugin):
    pidfile = tmp_path / "child.pid"
    command = [
        sys.executable, "-m", "lofit_bench", "run", "--methods", "test-stall", "--tasks", "clutrr",
        "--model", "tiny-random-llama", "--device", "cpu", "--budget", "smoke", "--budget-set", "eval_examples=2",
        "--out", str(tmp_path / "out"), "--quiet",
    ]
    environment = dict(os.environ, LOFIT_TEST_STALL="1", LOFIT_TEST_STALL_PIDFILE=str(pidfile))
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (pidfile.exists() and pidfile.read_text()):
        assert process.poll() is None, "the sweep ended before its run started"
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)
    child = int(pidfile.read_text())
    assert child != process.pid
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the run's process outlived its killed sweep")


@pytest.mark.parametrize(
    ("jobs", "cpus", "environ", "expected"),
    [(1, 16, {}, None), (2, 16, {}, 8), (3, 2, {}, 1), (2, 16, {"OMP_NUM_THREADS": "4"}, None)],
)
def test_threads_per_job_shares_the_cores_unless_the_user_chose(jobs, cpus, environ, expected):
    assert threads_per_job(jobs, cpus, environ) == expected


def test_parallel_cpu_runs_each_get_a_share_of_the_cores(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    specs = plan_sweep(["zero-shot"], ["clutrr", "mquake"], tiny_budget(), TINY)
    outcomes = run_sweep(specs, tmp_path / "out", progress=False, echo=lambda _: None, executor="process", jobs=2)
    shares = {json.loads(outcome.path.read_text())["environment"]["torch_threads"] for outcome in outcomes}
    assert shares == {max(1, (os.cpu_count() or 1) // 2)}


def test_a_plugin_adds_an_executor_with_no_core_edit(tmp_path, capsys, monkeypatch):
    """A plugin's executor is chosen by name on the command line, listed, and runs the sweep:
    here one that runs each spec in this process and counts what it ran."""
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "")
    plugins.reset_host()
    ran: list[str] = []

    from lofit_bench import hookimpl
    from lofit_bench.sweep.executors import Executor, run_in_worker

    class CountingExecutor(Executor):
        name = "counting"
        description = "in this process, counting runs (a test plugin)"
        in_process = True

        def execute(self, specs, folder):
            for spec in specs:
                ran.append(spec.method)
                yield spec, run_in_worker(spec, folder, self.options.progress)

    class Plugin:
        @hookimpl
        def register_executors(self, register):
            register(CountingExecutor)

    plugins.get_host().register(Plugin(), "counting-plugin")
    assert main(["list", "executors"]) == 0
    assert "counting" in capsys.readouterr().out
    out = tmp_path / "out"
    code = main([
        "run", "--methods", "zero-shot", "--tasks", "clutrr", "--model", "tiny-random-llama", "--device", "cpu",
        "--budget", "smoke", "--budget-set", "eval_examples=2", "--executor", "counting", "--out", str(out), "--quiet",
    ])
    assert code == 0
    assert ran == ["zero-shot"]
    [record] = (out / "records").glob("*.json")
    assert json.loads(record.read_text())["status"] == "ok"
    plugins.reset_host()

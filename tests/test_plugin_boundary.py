"""Plugin code behind one boundary: whatever a plugin raises is one line naming it, never our traceback."""

from __future__ import annotations

import warnings

import pytest
from plugin_helpers import install_entry_point_plugin

from lofit_bench import plugins
from lofit_bench.budget import get_budget
from lofit_bench.cli import main
from lofit_bench.plugins import PluginHost, PluginWarning
from lofit_bench.records.store import read_record
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep

#: Raises a KeyError in the hook, config, data reader, check or fit named by LOFIT_TEST_BOOM.
BOOM_PLUGIN = '''
import os
from dataclasses import dataclass

from lofit_bench import hookimpl
from lofit_bench.method import Method, MethodConfig
from lofit_bench.tasks.mquake import Mquake


def boom(where):
    if os.environ.get("LOFIT_TEST_BOOM") == where:
        raise KeyError("question")


@dataclass
class BoomConfig(MethodConfig):
    def __post_init__(self):
        super().__post_init__()
        boom("config")


class Boom(Method):
    name = "boom"
    config_class = BoomConfig
    uses_training_data = False

    @classmethod
    def check_before_runs(cls, config, shape):
        boom("check")

    def prepare(self, lm):
        self.lm = lm

    def fit(self, context):
        boom("fit")
        return {}

    def trainable_parameters(self):
        return 0

    def remove(self):
        self.lm = None


class BoomTask(Mquake):
    name = "boom-task"

    @classmethod
    def default_data_dir(cls):
        return Mquake.default_data_dir()

    def data_summary(self):
        boom("reader")
        return super().data_summary()


@hookimpl
def register_methods(register):
    boom("register_methods")
    register(Boom)


@hookimpl
def register_tasks(register):
    boom("register_tasks")
    register(BoomTask)


@hookimpl
def register_task_prefixes(register):
    boom("register_task_prefixes")
'''
WHO = "plugin 'boom' (boom-plugin 0.1)"


@pytest.fixture
def boom_plugin(tmp_path, monkeypatch):
    install_entry_point_plugin(tmp_path, monkeypatch, "boom_plugin", BOOM_PLUGIN, "boom-plugin")
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "boom")
    yield monkeypatch
    plugins.reset_host()


@pytest.mark.parametrize("hook", ["register_methods", "register_tasks", "register_task_prefixes"])
def test_a_plugin_raising_in_a_hook_costs_one_warning_naming_it(boom_plugin, hook):
    boom_plugin.setenv("LOFIT_TEST_BOOM", hook)
    with pytest.warns(PluginWarning) as caught:
        host = PluginHost().load()
    [message] = [str(warning.message) for warning in caught if issubclass(warning.category, PluginWarning)]
    assert message == f"{WHO} raised in {hook} and was skipped: KeyError: 'question'"
    assert ("boom" in host.methods) == (hook != "register_methods")
    assert ("boom-task" in host.tasks) == (hook != "register_tasks")


@pytest.mark.parametrize(
    ("where", "call"),
    [
        ("config", "method 'boom' of plugin 'boom' (boom-plugin 0.1) raised in its config (BoomConfig"),
        ("check", "method 'boom' of plugin 'boom' (boom-plugin 0.1) raised in Boom.check_before_runs(config, shape)"),
        ("reader", "task 'boom-task' of plugin 'boom' (boom-plugin 0.1) raised in reading its splits"),
    ],
)
def test_a_plugin_raising_before_the_runs_is_one_line_naming_it(boom_plugin, tmp_path, capsys, where, call):
    boom_plugin.setenv("LOFIT_TEST_BOOM", where)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        code = main([
            "run", "--methods", "boom", "--tasks", "boom-task", "--model", "tiny-random-llama", "--device", "cpu",
            "--budget", "smoke", "--out", str(tmp_path / "out"), "--executor", "inline", "--quiet",
        ])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith(f"lofit-bench: error: {call}") and "KeyError: 'question'" in error
    assert "--debug shows the traceback" in error and "\n" not in error


def test_debug_shows_the_plugins_traceback(boom_plugin, tmp_path):
    boom_plugin.setenv("LOFIT_TEST_BOOM", "reader")
    with pytest.raises(Exception) as raised:
        main([
            "--debug", "run", "--methods", "boom", "--tasks", "boom-task", "--model", "tiny-random-llama",
            "--device", "cpu", "--out", str(tmp_path / "out"), "--executor", "inline", "--quiet",
        ])
    assert isinstance(raised.value.__cause__, KeyError)


def test_a_plugin_raising_in_a_run_is_named_in_the_record(boom_plugin, tmp_path):
    boom_plugin.setenv("LOFIT_TEST_BOOM", "fit")
    budget = get_budget("smoke").replace(eval_examples=2)
    specs = plan_sweep(["boom"], ["mquake"], budget, ModelSettings("tiny-random-llama", device="cpu"), [0])
    [outcome] = run_sweep(specs, tmp_path, progress=False, echo=lambda *_: None, executor="inline")
    record, _ = read_record(outcome.path)
    assert record.status == "failed"
    assert (record.error.type, record.error.message) == ("KeyError", "'question'")
    assert record.error.plugin == "'boom' (boom-plugin 0.1), in Boom.fit"

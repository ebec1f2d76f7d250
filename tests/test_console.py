"""The sweep's console: finished runs as lines, a live status line from the runs' phases, and
library noise kept out of the terminal (in OUT/logs/) unless --verbose."""

from __future__ import annotations

import io
import json

from lofit_bench.records.run_folder import RunFolder
from lofit_bench.sweep.console import RunStatus, SweepConsole


def test_status_line_shows_each_running_runs_phase_and_an_eta(tmp_path):
    lines: list[str] = []
    now = [0.0]
    console = SweepConsole(total=4, folder=RunFolder(tmp_path), echo=lines.append, stream=io.StringIO(), live=False,
                           clock=lambda: now[0])
    console.skipped("zero-shot on clutrr", "already done, skipped")
    console.submitted("a", "lofit on clutrr")
    console.submitted("b", "lora on clutrr")
    console.submitted("c", "iti on clutrr")
    RunStatus(RunFolder(tmp_path).status("a")).set("fit: head_selection")
    RunStatus(RunFolder(tmp_path).status("b")).set("evaluate")
    line = console.status_line()
    assert line.startswith("[1/4 done] lofit on clutrr: fit: head_selection 0:0")
    assert "lora on clutrr: evaluate" in line and "iti on clutrr" not in line  # c has not started
    assert line.endswith("ETA after the first run")
    now[0] = 60.0
    console.finished("a", "lofit on clutrr", "exact_match 0.500 (55 s)")
    assert lines == ["[1/4] zero-shot on clutrr: already done, skipped",
                     "[2/4] lofit on clutrr: exact_match 0.500 (55 s) | ETA 2 min"]  # 60 s per run ran, 2 left
    assert not RunFolder(tmp_path).status("a").exists()
    assert console.status_line().endswith("ETA 2 min")


def test_live_line_is_drawn_and_cleared_on_a_terminal(tmp_path):
    stream = io.StringIO()
    lines: list[str] = []
    with SweepConsole(total=1, folder=RunFolder(tmp_path), echo=lines.append, stream=stream, live=True, refresh_s=0.05) as console:
        console.submitted("a", "lofit on clutrr")
        RunStatus(RunFolder(tmp_path).status("a")).set("fit")
        import time

        time.sleep(0.3)
        console.finished("a", "lofit on clutrr", "done")
    assert "\r\033[K[0/1 done] lofit on clutrr: fit" in stream.getvalue()
    assert stream.getvalue().endswith("\r\033[K")  # the live line is gone at the end
    assert lines == ["[1/1] lofit on clutrr: done"]


def test_a_sweep_prints_its_own_lines_and_keeps_the_runs_output_in_a_log(tmp_path, capfd):
    """run_sweep here, its run in a child process (the default executor): the console's lines
    are all that is printed, the run's own output (library bars, logs) is in its log, and a
    quiet rerun prints nothing."""
    from lofit_bench.budget import get_budget
    from lofit_bench.metrics import format_metric
    from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep

    specs = plan_sweep(["zero-shot"], ["mquake"], get_budget("smoke").replace(eval_examples=2), ModelSettings("tiny-random-llama", device="cpu"))
    folder = RunFolder(tmp_path)
    lines: list[str] = []
    [outcome] = run_sweep(specs, tmp_path, progress=False, echo=lines.append, live=False)
    record = json.loads(outcome.path.read_text())
    metrics = ", ".join(f"{name} {format_metric(name, value)}" for name, value in record["metrics"].items())
    assert lines == [
        f"running 1 run(s) (process executor, 1 at a time; each run's own output goes to {folder.logs})",
        f"[1/1] zero-shot on mquake (seed 42, tiny-random-llama): {metrics} ({record['timings']['total_s']:.0f} s)",
    ]
    assert metrics.startswith("exact_match 0.0 %")
    assert capfd.readouterr() == ("", "")  # no library bar or log line reached the terminal
    assert record["log"].startswith("logs/") and (tmp_path / record["log"]).is_file()
    assert not list(folder.root.joinpath(".status").glob("*.json"))  # finished runs leave no status behind

    [again] = run_sweep(specs, tmp_path, progress=False, echo=lines.append, quiet=True)
    assert again.status == "skipped" and len(lines) == 2 and capfd.readouterr() == ("", "")


def test_the_eta_uses_the_runs_expected_costs_fitted_to_what_finished_runs_took(tmp_path):
    import time

    import pytest

    from lofit_bench.records.store import write_text_atomic
    from lofit_bench.sweep.console import cost_model

    now = [0.0]
    costs = {"zero": 0.0, "a": 1.0, "b": 2.0, "c": 4.0, "d": 4.0}
    console = SweepConsole(total=5, folder=RunFolder(tmp_path), echo=lambda _: None, stream=io.StringIO(), live=False,
                           clock=lambda: now[0], costs=costs, jobs=2)
    for stem in costs:
        console.submitted(stem, stem)
    now[0] = 30.0
    console.finished("zero", "zero-shot", "done", seconds=5.0)
    assert console.eta() == 30.0 / 1 * 4  # cost 0 only: nothing known of a unit of cost yet, the pace
    console.finished("a", "a", "done", seconds=15.0)
    console.finished("b", "b", "done", seconds=25.0)
    assert cost_model(console.took) == pytest.approx((5.0, 10.0))  # 5 s + 10 s per unit of cost, exactly
    assert console.eta() == pytest.approx((45.0 + 45.0) / 2)  # c and d: 45 s each, two at a time
    write_text_atomic(RunFolder(tmp_path).status("c"), json.dumps({"phase": "fit", "since": time.time(), "started": time.time() - 30}))
    assert console.eta() == pytest.approx((15.0 + 45.0) / 2, abs=1)  # c ran 30 of its 45 s
    console.finished("c", "c", "done", seconds=45.0)
    assert console.eta() == pytest.approx(45.0, abs=1)  # the last run alone: one job busy


def test_the_cost_model_stays_non_negative():
    from lofit_bench.sweep.console import cost_model

    assert cost_model([]) is None
    assert cost_model([(0.0, 4.0), (0.0, 6.0)]) == (5.0, None)
    assert cost_model([(2.0, 10.0), (2.0, 30.0)]) == (0.0, 10.0)
    assert cost_model([(1.0, 30.0), (3.0, 10.0)]) == (20.0, 0.0)  # dearer runs were quicker: no slope
    a, b = cost_model([(1.0, 1.0), (3.0, 9.0)])  # the line would cross below 0 at cost 0: through the origin
    assert a == 0.0 and b == (1.0 + 27.0) / 10.0

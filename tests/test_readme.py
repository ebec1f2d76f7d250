"""The README is true where a test can tell: its runnable code blocks run, and every command and
`run` option of the command line is documented in it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_block_after(heading: str, language: str = "python") -> str:
    """The first ```language block after ``heading``."""
    section = README[README.index(heading):]
    match = re.search(rf"```{language}\n(.*?)```", section, flags=re.S)
    assert match, f"no {language} block after {heading!r}"
    return match.group(1)


def test_the_python_api_example_runs_as_written(tmp_path):
    script = tmp_path / "api_example.py"
    script.write_text(code_block_after("## Python API"))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| zero-shot" in result.stdout  # the report's table, printed
    assert list((tmp_path / "runs" / "api" / "records").glob("zero-shot--clutrr--seed42--*.json"))


def test_the_sweep_file_example_plans_the_files_sweep_with_the_override(tmp_path):
    script = tmp_path / "sweep_example.py"
    script.write_text(code_block_after("### A sweep file from Python"))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "['seeds'] [('zero-shot', 7)] smoke"


def test_the_executor_plugin_example_defines_a_working_executor():
    namespace: dict = {}
    exec(code_block_after("`register_executors(register)`"), namespace)  # noqa: S102 - our own README
    executor = namespace["Sequential"]
    assert executor.name == "sequential" and executor.in_process


def test_every_command_and_run_option_is_documented():
    from lofit_bench.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if action.dest == "command").choices  # noqa: SLF001 - argparse has no public accessor
    for name, subparser in commands.items():
        assert f"lofit-bench {name}" in README, f"`lofit-bench {name}` is not in the README"
        if name == "run":
            for action in subparser._actions:  # noqa: SLF001
                for option in action.option_strings:
                    if option.startswith("--") and option != "--help":
                        assert f"`{option}" in README, f"`lofit-bench run {option}` is not in the README"


@pytest.mark.parametrize("path", sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("**/*.md") if ".venv" not in str(path) and "reports" not in path.parts))
def test_documents_never_point_at_files_outside_the_repository(path):
    text = (ROOT / path).read_text()
    assert "../shared" not in text

"""The README cites the committed reports: its generated blocks must match their records."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "tools" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readmes_figures_are_the_committed_reports():
    tool = load_tool()
    assert tool.main(["--check"]) == 0, "run `python tools/readme_figures.py` after regenerating reports/"


def test_a_changed_number_fails_the_check(tmp_path, monkeypatch):
    tool = load_tool()
    readme = tmp_path / "README.md"
    text = tool.render((ROOT / "README.md").read_text())
    first_row = next(line for line in text.splitlines() if line.startswith("| zero-shot |"))
    readme.write_text(text.replace(first_row, first_row.replace("| zero-shot |", "| zero-shot (edited) |")))
    monkeypatch.setattr(tool, "README", readme)
    assert tool.main(["--check"]) == 1

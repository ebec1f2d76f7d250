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


def test_the_small_model_evidence_is_what_dev_chose_in_the_committed_records():
    """README "LoFiT on small models" quotes the stage-2 rates dev chose; they must be the records'."""
    import json
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### LoFiT on small models"):]
    evidence = section[section.index("dev chose"):section.index(": a geometric mean")]
    chosen = {}
    for folder, model in (("reports/smollm2-paper-tuned", "SmolLM2-135M"), ("reports/gemma3-270m-paper-tuned", "Gemma-3-270M")):
        rates = []
        for path in sorted((ROOT / folder / "records").glob("lofit--*.json")):
            record = json.loads(path.read_text())
            for fold in record["folds"].values():
                value = ((fold.get("tuning") or {}).get("chosen") or {}).get("stage2_learning_rate")
                if value is not None:
                    rates.append(float(f"{value:.2g}"))
        chosen[model] = sorted(rates)
    quoted = sorted(float(value) for value in re.findall(r"(?<![\d.e-])(0\.\d+)", evidence))
    assert quoted == sorted(chosen["SmolLM2-135M"] + chosen["Gemma-3-270M"]), (quoted, chosen)


def test_the_untuned_and_tuned_lofit_scores_quoted_are_the_untuned_reports():
    import json

    readme = (ROOT / "README.md").read_text()
    assert "LoFiT reached 16.4 % on SmolLM2's MQuAKE test set, against 40.6 % at\n0.1-0.3" in readme
    scores = sorted(
        round(100 * record["metrics"]["exact_match"], 1)
        for record in map(json.loads, map(Path.read_text, (ROOT / "reports/smollm2-paper/records").glob("lofit--mquake--*.json")))
    )
    assert scores == [16.4, 40.6]

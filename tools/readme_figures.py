"""The README's figures, generated from the committed reports' records (never typed by hand).

Each block of the README between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` is
rendered from a report folder's ``results.json`` (written by ``lofit-bench report``).
``python tools/readme_figures.py`` rewrites the blocks; ``--check`` exits 1 when one differs
(``tests/test_readme_figures.py`` runs the check, so a cited number that changes fails CI).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _summary(folder: str) -> dict:
    return json.loads((ROOT / folder / "results.json").read_text())


def task_table(folder: str, task: str) -> str:
    """One task's rows of a report: the primary metric with its interval and test, the
    parameters and the times, as the report computed them."""
    data = _summary(folder)
    rows = [row for row in data["summary"] if row["task"] == task]
    if not rows:
        raise SystemExit(f"{folder}: no summary rows for task {task}")
    primary = rows[0]["primary_metric"]
    reference = data.get("reference") or "-"
    lines = [
        f"| method | {primary} (%) | 95 % CI | p vs {reference} (Holm) | trainable params | train s | eval s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mean, std = row["metrics"][primary]
        value = _percent(mean) + (f" ± {_percent(std)}" if std is not None else "")
        interval = row.get("interval")
        ci = f"[{_percent(interval[0])}, {_percent(interval[1])}]" if interval else "-"
        p = row.get("p_value")
        p_text = "-" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}") + (f" ({row['p_test']})" if row.get("p_test") else "")
        params = row.get("trainable_parameters")
        stored = row.get("stored_values")
        params_text = "-" if params is None else f"{params:,}" + (f" (+{stored:,} stored)" if stored else "")
        lines.append(f"| {row['method']} | {value} | {ci} | {p_text} | {params_text} | {row['train_seconds']:.0f} | {row['eval_seconds']:.0f} |")
    return "\n".join(lines)


def section_table(folder: str, title: str) -> str:
    """The first table of a report section (e.g. "Summary in the paper's layout") as markdown."""
    data = _summary(folder)
    section = next((section for section in data["sections"] if section["title"] == title), None)
    if section is None:
        raise SystemExit(f"{folder}: no section {title!r} in results.json")
    table = section["tables"][0]
    lines = [f"*{table['caption']}*", "", "| " + " | ".join(table["headers"]) + " |", "|" + "---|" * len(table["headers"])]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table["rows"]]
    return "\n".join(lines)


def busy_hours(folder: str) -> float:
    """Hours during which at least one run of ``folder`` was running: the union of the records'
    [started_at, finished_at] intervals (a sweep resumed across days is not charged its pauses)."""
    from datetime import datetime

    spans = sorted(
        (datetime.fromisoformat(record["started_at"]), datetime.fromisoformat(record["finished_at"]))
        for record in map(json.loads, map(Path.read_text, (ROOT / folder / "records").glob("*.json")))
        if record.get("started_at") and record.get("finished_at")
    )
    total, current_start, current_end = 0.0, None, None
    for start, end in spans:
        if current_end is None or start > current_end:
            if current_end is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += (current_end - current_start).total_seconds()
    return total / 3600


def run_minutes(folder: str) -> float:
    """Minutes of all runs of ``folder`` added up (each record's total time)."""
    records = map(json.loads, map(Path.read_text, (ROOT / folder / "records").glob("*.json")))
    return sum((record.get("timings") or {}).get("total_s", 0.0) for record in records) / 60


def commit_of(folder: str) -> str:
    """The one commit ``folder``'s records come from (the reports are built with --strict)."""
    commits = {
        (record.get("environment") or {}).get("git_commit")
        for record in map(json.loads, map(Path.read_text, (ROOT / folder / "records").glob("*.json")))
    }
    if len(commits) != 1:
        raise SystemExit(f"{folder}: records of {len(commits)} commits; regenerate it from one clean commit")
    return str(commits.pop())[:12]


BLOCKS: dict[str, Callable[[], str]] = {
    "demo-table": lambda: task_table("reports/smollm2-demo", "mquake"),
}


def render(text: str) -> str:
    """``text`` with every known block regenerated."""
    for name, build in BLOCKS.items():
        pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no block {name}")
        body = build()
        text = pattern.sub(lambda match, body=body: match.group(1) + body + "\n" + match.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a block differs from the records")
    arguments = parser.parse_args(argv)
    current = README.read_text()
    wanted = render(current)
    if arguments.check:
        if wanted != current:
            print("README.md figures differ from the committed reports: run `python tools/readme_figures.py`", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

from lofit_bench.report.labels import (  # the report's own number formats
    format_interval,
    format_p,
    format_percent,
)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


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
        value = format_percent(tuple(row["metrics"][primary]))
        ci = format_interval(row.get("interval"))
        p = row.get("p_value")
        p_text = format_p(p) + (f" ({row['p_test']})" if row.get("p_test") and p is not None else "")
        params = row.get("trainable_parameters")
        stored = row.get("stored_values")
        params_text = "-" if params is None else f"{params:,}" + (f" (+{stored:,} stored)" if stored else "")
        lines.append(f"| {row['method']} | {value} | {ci} | {p_text} | {params_text} | {row['train_seconds']:.0f} | {row['eval_seconds']:.0f} |")
    return "\n".join(lines)


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

"""What the sweep's shared frozen-model work saves: ITI + RepE + LoFiT(``head_source=iti``) on
CLUTRR in one sweep, with the shared store and without it (``--no-shared-work``), in one run.

Counts the frozen-model activation passes (calls of
:func:`lofit_bench.activations.last_token_activations` and the texts they read) and sums the
three runs' fit seconds (``timings.fit``) in each arm; prints both and their ratio. Both arms
run in this process (inline executor) one after the other, on the same machine, so the ratio
is the figure to read; seconds alone depend on what else the cores do.

    python benchmarks/shared_work_cost.py                              # tiny random model, seconds
    python benchmarks/shared_work_cost.py --model smollm2-135m --budget smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("LOFIT_BENCH_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ["iti", "repe", "lofit"]
LOFIT_ON_ITI_HEADS = {"lofit": {"head_source": "iti"}}


def measure(model: str, budget_name: str, overrides: dict, out: Path) -> dict:
    from lofit_bench import activations
    from lofit_bench.budget import Budget, get_budget
    from lofit_bench.runner import ModelSettings, plan_sweep, run_sweep

    budget = Budget.from_dict(get_budget(budget_name).to_dict() | overrides)
    specs = plan_sweep(METHODS, ["clutrr"], budget, ModelSettings(model, device="cpu"), method_options=LOFIT_ON_ITI_HEADS)
    original = activations.last_token_activations
    passes: list[int] = []

    def counted(lm, texts, *args, **kwargs):
        passes.append(len(texts))
        return original(lm, texts, *args, **kwargs)

    activations.last_token_activations = counted
    results = {}
    try:
        for arm, share in (("without store", False), ("with store", True)):
            passes.clear()
            arm_specs = [dataclasses.replace(spec, share_work=share) for spec in specs]
            outcomes = run_sweep(arm_specs, out / arm.replace(" ", "-"), progress=False, echo=lambda _: None, executor="inline")
            records = [json.loads(outcome.path.read_text()) for outcome in outcomes]
            failed = [record["error"]["message"] for record in records if record["status"] != "ok"]
            if failed:
                raise SystemExit(f"{arm}: runs failed: {failed}")
            results[arm] = {
                "activation_passes": len(passes),
                "texts_read": sum(passes),
                "fit_s": {record["method"]["name"]: record["timings"]["fit"] for record in records},
                "fit_s_total": round(sum(record["timings"]["fit"] for record in records), 2),
                "metrics": {record["method"]["name"]: record["metrics"] for record in records},
            }
    finally:
        activations.last_token_activations = original
    without, shared = results["without store"], results["with store"]
    results["fit_time_ratio_with_over_without"] = round(shared["fit_s_total"] / without["fit_s_total"], 3)
    results["same_metrics"] = shared["metrics"] == without["metrics"]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random-llama")
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--budget-set", action="append", default=[], metavar="FIELD=JSON")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    arguments = parser.parse_args()
    overrides = {item.partition("=")[0]: json.loads(item.partition("=")[2]) for item in arguments.budget_set}
    if arguments.model.startswith("tiny-") and "max_length" not in overrides:
        overrides["max_length"] = 1024  # the tiny byte-level tokenizer makes a CLUTRR example ~450 tokens
    with tempfile.TemporaryDirectory(prefix="lofit-bench-shared-") as folder:
        results = measure(arguments.model, arguments.budget, overrides, Path(folder))
    results["model"], results["budget"], results["overrides"] = arguments.model, arguments.budget, overrides
    text = json.dumps(results, indent=1)
    print(text)
    if arguments.json:
        arguments.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

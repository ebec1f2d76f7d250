"""What the sweep's shared frozen-model work saves: ITI + RepE + LoFiT(``head_source=iti``) on
CLUTRR in one sweep, with the shared store and without it (``--no-shared-work``), in one run.

Counts the frozen-model activation passes (calls of
:func:`lofit_bench.engine.activations.last_token_activations` and the texts they read) and sums the
three runs' fit seconds (``timings.fit``) and their frozen-model parts (ITI's probes, RepE's
layer scan, LoFiT's head selection) in each arm; prints both and their ratios. Both arms
run in this process (inline executor), alternating for ``--rounds`` rounds, on the same
machine, so the ratio is the figure to read; seconds alone depend on what else the cores do.
With tuning on, the fit also scores the dev split (which no store saves); ``--budget-set
tune=false`` isolates the frozen-model work.

    python benchmarks/shared_work_cost.py                              # tiny random model, seconds
    python benchmarks/shared_work_cost.py --model smollm2-135m --budget smoke --budget-set tune=false
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
#: The fit parts that read the frozen model (what the store can save); LoFiT's bias tuning is not one.
FROZEN_PHASES = ("probes", "layer_scan", "head_selection")
LOFIT_ON_ITI_HEADS = {"lofit": {"head_source": "iti"}}


def measure(model: str, budget_name: str, overrides: dict, out: Path, rounds: int = 1) -> dict:
    from lofit_bench.budget import Budget, get_budget
    from lofit_bench.engine import activations
    from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep

    budget = Budget.from_dict(get_budget(budget_name).to_dict() | overrides)
    specs = plan_sweep(METHODS, ["clutrr"], budget, ModelSettings(model, device="cpu"), method_options=LOFIT_ON_ITI_HEADS)
    original = activations.last_token_activations
    passes: list[int] = []

    def counted(lm, texts, *args, **kwargs):
        passes.append(len(texts))
        return original(lm, texts, *args, **kwargs)

    activations.last_token_activations = counted
    arms = {"without store": False, "with store": True}
    results: dict = {arm: {"fit_s_total_per_round": [], "frozen_work_s_per_round": []} for arm in arms}
    try:
        for round_number in range(rounds):  # ABAB...: the cores' load drifts, so the arms alternate
            for arm, share in arms.items():
                passes.clear()
                arm_specs = [dataclasses.replace(spec, share_work=share) for spec in specs]
                folder = out / f"{arm.replace(' ', '-')}-{round_number}"
                outcomes = run_sweep(arm_specs, folder, progress=False, echo=lambda _: None, executor="inline")
                records = [json.loads(outcome.path.read_text()) for outcome in outcomes]
                failed = [record["error"]["message"] for record in records if record["status"] != "ok"]
                if failed:
                    raise SystemExit(f"{arm}: runs failed: {failed}")
                results[arm] |= {
                    "activation_passes": len(passes),
                    "texts_read": sum(passes),
                    "fit_s": {record["method"]["name"]: record["timings"]["fit"] for record in records},
                    "fit_phases_s": {record["method"]["name"]: record["timings"]["fit_phases"] for record in records},
                    "metrics": {record["method"]["name"]: record["metrics"] for record in records},
                }
                results[arm]["fit_s_total_per_round"].append(round(sum(record["timings"]["fit"] for record in records), 2))
                frozen = sum(seconds for record in records for name, seconds in record["timings"]["fit_phases"].items()
                             if name in FROZEN_PHASES)
                results[arm]["frozen_work_s_per_round"].append(round(frozen, 2))
    finally:
        activations.last_token_activations = original
    without, shared = results["without store"], results["with store"]
    results["fit_time_ratio_with_over_without"] = round(
        sum(shared["fit_s_total_per_round"]) / sum(without["fit_s_total_per_round"]), 3
    )
    results["frozen_work_ratio_with_over_without"] = round(
        sum(shared["frozen_work_s_per_round"]) / sum(without["frozen_work_s_per_round"]), 3
    )
    results["same_metrics"] = shared["metrics"] == without["metrics"]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random-llama")
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--budget-set", action="append", default=[], metavar="FIELD=JSON")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the two arms (ABAB...)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    arguments = parser.parse_args()
    overrides = {item.partition("=")[0]: json.loads(item.partition("=")[2]) for item in arguments.budget_set}
    if arguments.model.startswith("tiny-") and "max_length" not in overrides:
        overrides["max_length"] = 1024  # the tiny byte-level tokenizer makes a CLUTRR example ~450 tokens
    with tempfile.TemporaryDirectory(prefix="lofit-bench-shared-") as folder:
        results = measure(arguments.model, arguments.budget, overrides, Path(folder), arguments.rounds)
    results["model"], results["budget"], results["overrides"] = arguments.model, arguments.budget, overrides
    text = json.dumps(results, indent=1)
    print(text)
    if arguments.json:
        arguments.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

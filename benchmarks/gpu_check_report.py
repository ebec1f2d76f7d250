"""The device check's summary: one line per run (devices, precision, dtype, peak memory, step time,
accuracy), the tail of each failed run's traceback, what each record must say on that device,
and the exactness rules of the head edits on the device.

    python3 benchmarks/gpu_check_report.py DEVICE MODEL SWEEP_FOLDER...

Exits 1 when a run failed or a check did not hold; every problem is printed, not just the first.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch

TRACEBACK_LINES = 15
problems: list[str] = []


def check(condition: bool, message: str) -> None:
    if not condition:
        problems.append(message)


def trainings(fit):
    """Every TrainResult dict inside a fit record (LoFiT has one per stage)."""
    if isinstance(fit, dict):
        if "steps" in fit and "seconds" in fit:
            yield fit
        for value in fit.values():
            yield from trainings(value)


def summarise(folder: Path, device: str) -> None:
    records = [json.loads(path.read_text()) for path in sorted((folder / "records").glob("*.json"))]
    check(bool(records), f"{folder.name}: no records")
    for record in records:
        name = f"{folder.name}/{record['method']['name']}"
        if record["status"] != "ok":
            error = record.get("error") or {}
            problems.append(f"{name}: {record['status']}: {error.get('type')}: {error.get('message')}")
            tail = "\n".join((error.get("traceback") or "").rstrip().splitlines()[-TRACEBACK_LINES:])
            print(f"--- {name} failed; the end of its traceback:\n{tail}\n---")
            continue
        model, memory, environment = record["model"], record["memory"], record["environment"]
        fit = next(iter(record["folds"].values()))["fit"]
        steps = [(t["seconds"], t["steps"]) for t in trainings(fit) if t["steps"]]
        step_time = steps[0][0] / steps[0][1] if steps else float("nan")
        accuracy = record["metrics"][record["task"]["primary_metric"]]
        devices = ",".join(model.get("devices") or [model["device"]])
        print(f"{folder.name:<10} {record['method']['name']:<8} {devices:<14} {'bf16' if model.get('precision') == 'bf16-mixed' else 'off':<8} "
              f"{model['dtype']:<5} {memory['peak_mib']:>9.1f} {memory.get('peak_reserved_mib') or float('nan'):>9.1f} "
              f"{step_time:>7.3f} {accuracy:>8.3f}  {record['timings']['total_s']:>6.1f}s")
        check(model["device"].startswith(device), f"{name}: ran on {model['device']}, not {device}")
        if device == "cuda":
            check(memory["kind"] == "cuda_peak_allocated", f"{name}: memory kind {memory['kind']}")
            check(memory["peak_mib"] > 0 and (memory.get("peak_reserved_mib") or 0) >= memory["peak_mib"],
                  f"{name}: implausible memory {memory}")
            check(bool(environment.get("gpus")) and environment.get("cuda") is not None,
                  f"{name}: the record does not name the GPU and CUDA: {environment.get('gpus')}, {environment.get('cuda')}")
            visible = (record.get("placement") or {}).get("cuda_visible_devices")
            wanted = 2 if folder.name == "sharded" else 1
            check(visible is not None and len(visible.split(",")) == wanted, f"{name}: placement {visible}")
        else:
            check(environment.get("gpus") is None, f"{name}: a CPU run names GPUs {environment.get('gpus')}")


def exactness(device: str, model: str) -> None:
    """LoFiT's vectors stay fp32 on a bf16 model, a zero edit leaves the logits unchanged, a
    non-zero one changes them, removing it restores them bit for bit."""
    from lofit_bench.engine.interventions import HeadIntervention
    from lofit_bench.engine.models import load_model

    lm = load_model(model, dtype="bf16", device=device)
    ids = lm.tokenizer("Q: Who wrote Hamlet?\nA:", return_tensors="pt")["input_ids"].to(lm.device)
    last = lm.layout.n_layers - 1
    with torch.no_grad():
        before = lm.model(ids).logits
        intervention = HeadIntervention(lm.layout, [(0, 0), (last // 2, 3 % lm.layout.n_heads), (last, lm.layout.n_heads - 1)],
                                        scale=True, shift=True)
        with intervention.attach(lm.model, lm.layout, "lofit_check"):
            check(all(p.dtype == torch.float32 for p in intervention.parameters()), "LoFiT vectors are not fp32 on a bf16 model")
            check(all(p.device.type == device for p in intervention.parameters()), f"LoFiT vectors are not on {device}")
            check(torch.equal(lm.model(ids).logits, before), "a zero intervention changed the logits")
            intervention.init_normal_(0.5, seed=0)
            check(not torch.equal(lm.model(ids).logits, before), "a non-zero intervention left the logits unchanged")
        check(torch.equal(lm.model(ids).logits, before), "removing the intervention did not restore the logits exactly")
    print(f"exactness: fp32 vectors, identity at zero, exact removal on {lm.device} ({lm.dtype}, {lm.layout.n_layers} layers)")


def main() -> int:
    device, model, folders = sys.argv[1], sys.argv[2], [Path(folder) for folder in sys.argv[3:]]
    print(f"{'sweep':<10} {'method':<8} {'device(s)':<14} {'autocast':<8} {'dtype':<5} {'peak MiB':>9} "
          f"{'resv MiB':>9} {'step s':>7} {'accuracy':>8}  {'total':>7}")
    for folder in folders:
        summarise(folder, device)
    try:
        exactness(device, model)
    except Exception:  # noqa: BLE001 - reported with the rest
        problems.append("exactness check raised:\n" + "\n".join(traceback.format_exc().splitlines()[-TRACEBACK_LINES:]))
    if problems:
        print("gpu_check: MISMATCH:\n  " + "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

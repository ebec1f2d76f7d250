#!/usr/bin/env bash
# The CUDA path, checked end to end on a GPU machine in a few minutes:
#   1. LoFiT, LoRA and full fine-tuning on the bundled model in bf16 with a small budget;
#   2. with two or more GPUs, a --jobs 2 sweep (two runs at once, each on its own GPU);
#   3. a sharded (--gpus-per-run 2) LoFiT run with gradient checkpointing and accumulation
#      when there are two GPUs;
#   4. the exactness rules of the CPU path, on the GPU: LoFiT's vectors stay fp32 on a bf16
#      model, a zero intervention leaves the logits unchanged, removing one restores them bit
#      for bit, and the CLI process never initialises CUDA.
# It prints per run: device(s), dtype, peak allocated / reserved memory, step time and accuracy,
# and exits non-zero on any failed run or mismatch.
#
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (default runs/gpu-check; reruns start fresh)
set -euo pipefail

OUT="${1:-runs/gpu-check}"
PYTHON="${PYTHON:-python}"
export LOFIT_BENCH_QUIET=1 TOKENIZERS_PARALLELISM=false

GPUS=$("$PYTHON" -c "from lofit_bench.executors import visible_gpus; print(len(visible_gpus()))")
if [ "$GPUS" -lt 1 ] || ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch; this check needs a GPU machine" >&2
    exit 2
fi
echo "gpu_check: $GPUS GPU(s); torch $("$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
rm -rf "$OUT" "$OUT".*.log
mkdir -p "$(dirname "$OUT")"
SMALL=(--tasks clutrr --budget smoke --budget-set train_examples=16 --budget-set eval_examples=24 --dtype bf16 --quiet)

echo "== 1. lofit, lora, full-ft on one GPU each (bf16, smoke budget)"
lofit-bench run --methods lofit,lora,full-ft "${SMALL[@]}" --out "$OUT/single" > "$OUT.single.log" 2>&1 \
    || { tail -20 "$OUT.single.log"; echo "gpu_check: FAILED: sweep 1" >&2; exit 1; }

SWEEPS=("$OUT/single")
if [ "$GPUS" -ge 2 ]; then
    echo "== 2. --jobs 2: lofit and lora at once, one GPU each"
    lofit-bench run --methods lofit,lora "${SMALL[@]}" --jobs 2 --out "$OUT/jobs2" > "$OUT.jobs2.log" 2>&1 \
        || { tail -20 "$OUT.jobs2.log"; echo "gpu_check: FAILED: sweep 2" >&2; exit 1; }
    echo "== 3. lofit sharded over 2 GPUs, gradient checkpointing, accumulation 2"
    lofit-bench run --methods lofit "${SMALL[@]}" --gpus-per-run 2 --budget-set gradient_checkpointing=true \
        --budget-set gradient_accumulation_steps=2 --out "$OUT/sharded" > "$OUT.sharded.log" 2>&1 \
        || { tail -20 "$OUT.sharded.log"; echo "gpu_check: FAILED: sweep 3" >&2; exit 1; }
    SWEEPS+=("$OUT/jobs2" "$OUT/sharded")
else
    echo "== 2, 3. skipped: one GPU (a --jobs 2 sweep and a sharded run need two)"
fi

echo "== 4. the runs' records and the exactness rules on the GPU"
"$PYTHON" - "${SWEEPS[@]}" <<'PYTHON'
import json
import sys
from pathlib import Path

import torch

problems = []


def check(condition, message):
    if not condition:
        problems.append(message)


def trainings(fit):
    """Every TrainResult dict inside a fit record (LoFiT has one per stage)."""
    if isinstance(fit, dict):
        if "steps" in fit and "seconds" in fit:
            yield fit
        for value in fit.values():
            yield from trainings(value)


print(f"{'sweep':<8} {'method':<8} {'device(s)':<16} {'dtype':<5} {'peak alloc MiB':>14} {'reserved MiB':>12} "
      f"{'step s':>7} {'accuracy':>8}")
for folder in map(Path, sys.argv[1:]):
    records = [json.loads(path.read_text()) for path in sorted((folder / "records").glob("*.json"))]
    check(records, f"{folder}: no records")
    placements = []
    for record in records:
        name = f"{folder.name}/{record['method']['name']}"
        if record["status"] != "ok":
            problems.append(f"{name}: {record['status']}: {record.get('error', {}).get('message')}")
            continue
        model, memory = record["model"], record["memory"]
        fit = next(iter(record["folds"].values()))["fit"]
        steps = [(t["seconds"], t["steps"]) for t in trainings(fit) if t["steps"]]
        # the top-level "training" total repeats the stages; the first entry is that total
        step_time = steps[0][0] / steps[0][1] if steps else float("nan")
        accuracy = record["metrics"][record["task"]["primary_metric"]]
        devices = ",".join(model.get("devices") or [model["device"]])
        print(f"{folder.name:<8} {record['method']['name']:<8} {devices:<16} {model['dtype']:<5} "
              f"{memory['peak_mib']:>14.1f} {memory.get('peak_reserved_mib', float('nan')):>12.1f} "
              f"{step_time:>7.3f} {accuracy:>8.3f}")
        check(model["device"].startswith("cuda"), f"{name}: ran on {model['device']}, not CUDA")
        check(model["dtype"] == "bf16", f"{name}: dtype {model['dtype']}, asked for bf16")
        check(memory["kind"] == "cuda_peak_allocated", f"{name}: memory kind {memory['kind']}")
        check(memory["peak_mib"] > 0 and memory.get("peak_reserved_mib", 0) >= memory["peak_mib"],
              f"{name}: implausible memory {memory}")
        placements.append(record.get("placement", {}).get("cuda_visible_devices"))
        if folder.name == "sharded":
            check(placements[-1] is not None and len(placements[-1].split(",")) == 2, f"{name}: placement {placements[-1]}")
            check(set(memory.get("per_device", {})) == set(model.get("devices") or []), f"{name}: memory not per device: {memory}")
            if len(model.get("devices") or []) < 2:  # accelerate may fit a 135M model on one GPU
                print(f"  note: {name}: accelerate put the whole model on {model.get('devices')}")
        else:
            check(model.get("devices") == ["cuda:0"], f"{name}: saw devices {model.get('devices')}, expected its own GPU as cuda:0")
            check(placements[-1] is not None and "," not in placements[-1], f"{name}: placement {placements[-1]}")
    if folder.name == "jobs2":
        check(len(set(placements)) == 2, f"jobs2: both runs on the same GPU: {placements}")

# Exactness on the GPU, as the CPU tests check it.
from lofit_bench.interventions import HeadIntervention
from lofit_bench.models import load_model

lm = load_model("smollm2-135m", dtype="bf16", device="cuda")
ids = lm.tokenizer("Q: Who wrote Hamlet?\nA:", return_tensors="pt")["input_ids"].to("cuda")
with torch.no_grad():
    before = lm.model(ids).logits
    heads = [(0, 0), (5, 3), (29, 8)]
    intervention = HeadIntervention(lm.layout, heads, scale=True, shift=True)
    with intervention.attach(lm.model, lm.layout, "lofit_check"):
        check(all(p.dtype == torch.float32 for p in intervention.parameters()), "LoFiT vectors are not fp32 on a bf16 model")
        check(all(p.device.type == "cuda" for p in intervention.parameters()), "LoFiT vectors are not on the GPU")
        check(torch.equal(lm.model(ids).logits, before), "a zero intervention changed the logits")
        intervention.init_normal_(0.5, seed=0)
        check(not torch.equal(lm.model(ids).logits, before), "a non-zero intervention left the logits unchanged")
    check(torch.equal(lm.model(ids).logits, before), "removing the intervention did not restore the logits exactly")
print(f"exactness: fp32 vectors, identity at zero, exact removal on {lm.device} ({lm.dtype})")

if problems:
    print("gpu_check: MISMATCH:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
PYTHON

echo "== 5. the CLI process never initialises CUDA"
"$PYTHON" - "$OUT/parent" <<'PYTHON'
import sys

import torch

from lofit_bench.cli import main

code = main(["run", "--methods", "zero-shot", "--tasks", "clutrr", "--budget", "smoke", "--budget-set", "eval_examples=4",
             "--dtype", "bf16", "--quiet", "--out", sys.argv[1]])
if code != 0 or torch.cuda.is_initialized():
    print(f"gpu_check: MISMATCH: exit code {code}, CUDA initialised in the CLI process: {torch.cuda.is_initialized()}", file=sys.stderr)
    sys.exit(1)
print("the CLI process did not initialise CUDA")
PYTHON
echo "gpu_check: OK"

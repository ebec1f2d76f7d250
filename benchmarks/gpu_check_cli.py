"""The CLI process never initialises CUDA: a zero-shot sweep run through ``main`` in this process
(a file, not stdin: the sweep's spawned child re-imports ``__main__``).

    python3 benchmarks/gpu_check_cli.py OUT_DIR MODEL DEVICE
"""

import sys

import torch

from lofit_bench.cli import main

if __name__ == "__main__":
    out, model, device = sys.argv[1:4]
    code = main(["run", "--methods", "zero-shot", "--tasks", "clutrr", "--model", model, "--device", device,
                 "--budget", "smoke", "--budget-set", "eval_examples=4", "--quiet", "--out", out])
    if code != 0 or torch.cuda.is_initialized():
        print(f"gpu_check: MISMATCH: exit code {code}, CUDA initialised in the CLI process: {torch.cuda.is_initialized()}")
        sys.exit(1)
    print("the CLI process did not initialise CUDA")

"""The device check (benchmarks/gpu_check.sh) rehearsed end to end on the CPU, so its first GPU
run can fail only for GPU reasons; and its pieces that decide what happens on the lent machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from lofit_bench.engine.models import load_model
from lofit_bench.engine.standin_model import SMOLLM2_135M_SHAPE, build_standin

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check_report  # noqa: E402
import gpu_check_setup  # noqa: E402


def test_the_standin_has_smollm2s_heads_and_loads_as_a_folder(tmp_path) -> None:
    folder = build_standin(tmp_path / "standin", num_hidden_layers=2, vocab_size=512)  # 2 of its 30 layers: a test
    lm = load_model(str(folder), device="cpu")
    assert (lm.layout.n_heads, lm.layout.head_dim, lm.layout.hidden_size) == (9, 64, 576)
    assert SMOLLM2_135M_SHAPE["num_hidden_layers"] == 30 and lm.model.config.tie_word_embeddings
    ids = lm.tokenizer("Q: 2 + 2?\nA:", return_tensors="pt")["input_ids"]
    assert torch.isfinite(lm.model(ids).logits).all()


def test_setup_installs_only_wheels_the_machine_lacks_or_has_older(tmp_path) -> None:
    for name in ("pluggy-0.1-py3-none-any.whl", "pluggy-999.0-py3-none-any.whl", "surely_absent_pkg-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    chosen = [wheel.name for wheel in gpu_check_setup.missing_wheels(tmp_path)]
    assert chosen == ["pluggy-999.0-py3-none-any.whl", "surely_absent_pkg-1.0-py3-none-any.whl"]


def test_the_summary_goes_on_after_a_failed_run_and_prints_its_traceback_tail(tmp_path, capsys) -> None:
    records = tmp_path / "mixed" / "records"
    records.mkdir(parents=True)
    lines = "\n".join(f"  line {index}" for index in range(40))
    (records / "a.json").write_text(json.dumps({
        "method": {"name": "lofit"}, "status": "failed",
        "error": {"type": "TypeError", "message": "boom", "traceback": f"Traceback:\n{lines}\nTypeError: boom"},
    }))
    gpu_check_report.problems.clear()
    gpu_check_report.summarise(tmp_path / "mixed", "cuda")
    gpu_check_report.summarise(tmp_path / "empty", "cuda")  # the next sweep is still summarised
    printed = capsys.readouterr().out
    assert "TypeError: boom" in printed and "line 39" in printed and "line 20" not in printed
    assert gpu_check_report.problems == ["mixed/lofit: failed: TypeError: boom", "empty: no records"]


@pytest.mark.slow
def test_the_device_check_runs_end_to_end_on_the_cpu(tmp_path) -> None:
    out = tmp_path / "device-out"
    out.mkdir()
    environment = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                   "PYTHON": sys.executable, "GPU_CHECK_SITE": str(tmp_path / "site")}
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--model", "tiny-random-llama",
         str(tmp_path / "results")],
        capture_output=True, text=True, env=environment, timeout=1800, check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "gpu_check: OK" in result.stdout and "skipped: 3. a --jobs 2 sweep" in result.stdout
    assert "exactness: fp32 vectors, identity at zero, exact removal on cpu" in result.stdout
    assert "the CLI process did not initialise CUDA" in result.stdout
    with tarfile.open(out / "gpu-check-records.tar.gz") as packed:
        names = packed.getnames()
    assert sum(name.startswith("./mixed/records/") for name in names) == 3
    assert sum(name.startswith("./bf16/records/") for name in names) == 1
    assert not any("artifacts" in name or name.endswith(".safetensors") for name in names)
    assert (out / "gpu-check.txt").exists()

"""Benchmarks on the bundled SmolLM2-135M model (`tox -e bench`; never part of the default tests).

Every benchmark times its subject and a baseline in the same run, interleaved (ABAB...), and
reports their ratio: the cores are shared and noisy, so only ratios measured together mean
anything. pytest-benchmark records the subject's own statistics (``--benchmark-save``).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("LOFIT_BENCH_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

@pytest.fixture(scope="session")
def bundled():
    from lofit_bench.engine.models import load_model

    return load_model("smollm2-135m")

"""Shared test setup: offline, quiet, two threads, and a tiny random Llama to test on.

The environment is set when this file is imported, before any test module imports
huggingface_hub or transformers: both read the offline switches once, at import.
"""

from __future__ import annotations

import os

import pytest
import torch

from lofit_bench.engine.models import LoadedModel, load_model

TEST_ENVIRONMENT = {
    "LOFIT_BENCH_QUIET": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(TEST_ENVIRONMENT)
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def isolated_cache(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch
):
    """Point LOFIT_BENCH_CACHE at a per-session folder, except for slow tests, which load the
    bundled model from the user's real cache (building it there costs minutes)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv(
            "LOFIT_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "lofit-bench-cache")
        )


@pytest.fixture
def tiny_lm() -> LoadedModel:
    """A fresh 2-layer, 4-head random Llama with the byte-level tokenizer (fp32, CPU)."""
    return load_model("tiny-random-llama", device="cpu")


@pytest.fixture(scope="module")
def builtin_host():
    """The process-wide plugin host with built-ins only (installed plugins must not leak in)."""
    from lofit_bench import plugins

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(plugins.ALLOWLIST_VARIABLE, "")
        plugins.reset_host()
        yield plugins.get_host()
        plugins.reset_host()


@pytest.fixture
def builtin_plugins_only(monkeypatch):
    """The process-wide host, loaded with built-ins only, for one test (installed plugins must
    not leak in); use with ``pytestmark = pytest.mark.usefixtures("builtin_plugins_only")``."""
    from lofit_bench import plugins

    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "")
    plugins.reset_host()
    yield
    plugins.reset_host()

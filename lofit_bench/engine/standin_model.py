"""A random model of the bundled SmolLM2-135M's exact shape, for machines its weights cannot reach.

The device check (benchmarks/gpu_check.sh) runs on a lent GPU machine that has no network and
takes 64 MiB per call; the bundled model's 94 MiB GGUF does not fit. This builds, on that
machine, a Llama of SmolLM2-135M's shape (30 layers x 9 heads, head_dim 64, hidden 576,
3 KV heads, 49152-entry vocabulary, tied embeddings, rope theta 1e5), so layer and head
indices, parameter counts, memory and step times are the real model's; its accuracies are
chance. The tokenizer is the byte-level one of the tiny models (ids < 259).

    python3 -m lofit_bench.engine.standin_model FOLDER [--layers N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

SMOLLM2_135M_SHAPE = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
}


def build_standin(folder: Path, seed: int = 0, **shape_changes: int) -> Path:
    """Write a SmolLM2-135M-shaped random Llama (fp32 safetensors) and its tokenizer to ``folder``."""
    import transformers

    from lofit_bench.engine.models import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    config = transformers.LlamaConfig(
        **(SMOLLM2_135M_SHAPE | shape_changes),
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers (tests); default: SmolLM2's 30")
    arguments = parser.parse_args(argv)
    changes = {"num_hidden_layers": arguments.layers} if arguments.layers else {}
    print(build_standin(arguments.folder, **changes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the intervention sites live in each supported architecture (a table, after pyvene).

Adding an architecture is adding a row: the path of the decoder-layer list, the attention
output projection inside a layer (whose *input* is the concatenation of the per-head
outputs), and where the text config keeps the head geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lofit_bench.errors import UserError


@dataclass(frozen=True)
class Architecture:
    """Module paths for one family of Hugging Face causal LMs."""

    family: str
    layers_path: str = "model.layers"
    attention_path: str = "self_attn"
    attention_output_path: str = "self_attn.o_proj"


LLAMA_LAYOUT = Architecture("llama")

ARCHITECTURES: dict[str, Architecture] = {
    "llama": LLAMA_LAYOUT,
    "mistral": Architecture("mistral"),
    "qwen2": Architecture("qwen2"),
    "qwen3": Architecture("qwen3"),
    "gemma": Architecture("gemma"),
    "gemma2": Architecture("gemma2"),
    "gemma3_text": Architecture("gemma3"),
    "gemma3": Architecture("gemma3", layers_path="model.language_model.layers"),
}


def _get_path(root: nn.Module, path: str) -> object:
    node: object = root
    for part in path.split("."):
        node = getattr(node, part)
    return node


@dataclass(frozen=True)
class ModelLayout:
    """The resolved sites of one loaded model."""

    model_type: str
    architecture: Architecture
    n_layers: int
    n_heads: int
    head_dim: int
    hidden_size: int

    @property
    def total_heads(self) -> int:
        return self.n_layers * self.n_heads

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return _get_path(model, self.architecture.layers_path)  # type: ignore[return-value]

    def attention_output(self, model: nn.Module, layer: int) -> nn.Module:
        """The attention output projection of ``layer``; its input is split into heads."""
        return _get_path(self.decoder_layers(model)[layer], self.architecture.attention_output_path)  # type: ignore[return-value]


def resolve_layout(model: nn.Module) -> ModelLayout:
    """Find layers and head geometry by architecture, or fail with the supported list."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    architecture = ARCHITECTURES.get(model_type or "")
    if architecture is None:
        raise UserError(
            f"unsupported architecture {model_type!r}: lofit-bench knows where attention heads live "
            f"only for {', '.join(sorted(ARCHITECTURES))}. Add a row to "
            "lofit_bench.engine.architectures.ARCHITECTURES to support it."
        )
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = text_config.num_attention_heads
    # head_dim comes from the config, not hidden/heads: Gemma's differ (256 vs 3072/16 = 192).
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // n_heads
    layout = ModelLayout(
        model_type=model_type,
        architecture=architecture,
        n_layers=text_config.num_hidden_layers,
        n_heads=n_heads,
        head_dim=head_dim,
        hidden_size=text_config.hidden_size,
    )
    try:
        projection = layout.attention_output(model, 0)
    except (AttributeError, IndexError) as error:
        raise UserError(
            f"model of type {model_type!r} does not have the expected layout "
            f"({architecture.layers_path}[i].{architecture.attention_output_path}): {error}"
        ) from None
    in_features = getattr(projection, "in_features", None)
    if in_features is not None and in_features != n_heads * head_dim:
        raise UserError(
            f"{model_type}: attention output projection takes {in_features} features, "
            f"expected n_heads * head_dim = {n_heads} * {head_dim}"
        )
    return layout

"""Checks that run before the first run, so a typo never costs a model load.

The budget's schedule name and sizes, the seeds, and whatever a method declares it must check
against the model (head counts, a ``head_source=file:`` path, a layer index) are checked when
the sweep is planned. The model's architecture numbers are read without loading weights: from
a folder's ``config.json``, or from what lofit-bench knows about its named models.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lofit_bench.errors import UserError, did_you_mean
from lofit_bench.plugin_boundary import PluginError, plugin_code
from lofit_bench.sweep.settings import check_seed

#: A training batch of more tokens than this fits in no accelerator's memory.
MAX_BATCH_TOKENS = 2**24
MAX_EVAL_BATCH = 2**16


@dataclass(frozen=True)
class ModelShape:
    """A model's architecture numbers, as far as they are known before loading it."""

    n_layers: int
    n_heads: int
    head_dim: int
    max_positions: int | None = None

    @property
    def total_heads(self) -> int:
        return self.n_layers * self.n_heads


def model_shape(name: str) -> ModelShape | None:
    """The shape of a named model or local folder without loading weights; None when unknown
    (a hub id, an unreadable config: the model load reports those)."""
    from lofit_bench.engine.models import DEFAULT_MODEL, TINY_CONFIGS

    if name == DEFAULT_MODEL:  # SmolLM2-135M-Instruct (models.py: 30 layers x 9 heads, head_dim 64)
        return ModelShape(30, 9, 64, 8192)
    if name in TINY_CONFIGS:  # models.build_tiny_model: hidden 64, 2 layers, 4 heads
        return ModelShape(2, 4, TINY_CONFIGS[name][1].get("head_dim", 64 // 4), 4096)
    config_file = Path(name).expanduser() / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(config, dict) and isinstance(config.get("text_config"), dict):
        config = config["text_config"] | {key: value for key, value in config.items() if key != "text_config"}
    try:
        layers, heads = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    positions = config.get("max_position_embeddings")
    return ModelShape(layers, heads, head_dim, positions if isinstance(positions, int) else None)


def check_model_name(name: str) -> None:
    """A model name that is no known model, no folder and no hub id fails here, as load_model would."""
    from lofit_bench.engine.models import model_source_kind

    model_source_kind(name)


def check_budget(budget: Any) -> None:
    """What the budget's own checks cannot know: schedule names the trainer accepts, sizes that cannot fit."""
    from transformers.trainer_utils import SchedulerType

    schedulers = [item.value for item in SchedulerType]
    if budget.lr_scheduler not in schedulers:
        raise UserError(
            f"budget {budget.name!r}: unknown lr_scheduler {budget.lr_scheduler!r}."
            f"{did_you_mean(budget.lr_scheduler, schedulers)} Known: {', '.join(schedulers)}"
        )
    if budget.batch_size * budget.max_length > MAX_BATCH_TOKENS:
        raise UserError(
            f"budget {budget.name!r}: batch_size {budget.batch_size} x max_length {budget.max_length} = "
            f"{budget.batch_size * budget.max_length:,} tokens per batch cannot fit in memory "
            f"(at most {MAX_BATCH_TOKENS:,}); lower batch_size or max_length"
        )
    if budget.eval_batch_size > MAX_EVAL_BATCH:
        raise UserError(
            f"budget {budget.name!r}: eval_batch_size {budget.eval_batch_size} cannot fit in memory "
            f"(at most {MAX_EVAL_BATCH:,})"
        )


def check_device(device: str) -> None:
    """A CUDA or MPS device that torch cannot see fails here, not in every run. Asking torch
    whether CUDA is available does not initialise it (the CLI process never does)."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for, but torch sees no CUDA device here; use --device cpu or auto")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for, but torch sees no MPS device here; use --device cpu or auto")


#: More characters than any token of a tokenizer we know spans (SmolLM2's longest: 81, a newline and
#: 80 spaces): a prompt text longer than this many characters per token of ``max_length`` is too long
#: whatever the model, and is refused before any model loads.
MAX_TOKEN_CHARACTERS = 128


def prompt_texts(config: Any) -> dict[str, str]:
    """The config's text fields that become part of the model's input (metadata ``prompt_text``:
    RepE's instructions), by name."""
    return {
        item.name: getattr(config, item.name)
        for item in dataclasses.fields(config)
        if item.metadata.get("prompt_text") and isinstance(getattr(config, item.name), str)
    }


def check_prompt_texts(method: str, config: Any, max_length: int, tokenizer: Any = None) -> None:
    """A prompt text (:func:`prompt_texts`) longer than the budget's ``max_length`` makes every
    prompt built from it longer too (a 100,000-character RepE instruction asked for 80 GB after
    two minutes): without ``tokenizer``, a cheap bound on characters (before any model loads);
    with it, the text's own tokens (once the run has loaded its tokenizer)."""
    for name, text in prompt_texts(config).items():
        option = f"{method}.{name}"
        if tokenizer is None:
            limit = MAX_TOKEN_CHARACTERS * max_length
            if len(text) > limit:
                raise UserError(
                    f"{option} is {len(text):,} characters: every prompt built from it is longer than the budget's "
                    f"max_length {max_length} tokens (at most {limit:,} characters, {MAX_TOKEN_CHARACTERS} per token); "
                    "shorten it, or raise --budget-set max_length=N"
                )
            continue
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokens > max_length:
            raise UserError(
                f"{option} is {tokens:,} tokens ({len(text):,} characters): every prompt built from it is longer than "
                f"the budget's max_length {max_length} tokens; shorten it, or raise --budget-set max_length=N"
            )


def check_before_runs(
    method_classes: dict[str, type],
    method_options: dict[str, dict[str, Any]],
    budget: Any,
    model: Any,
    seeds: list[int] | None,
) -> None:
    """Every check that needs no loaded model, for one model of a sweep."""
    check_budget(budget)
    for name, method_class in method_classes.items():
        with plugin_code("method", name, f"its config ({method_class.config_class.__name__})"):
            config = method_class.config_class.from_dict(method_options.get(name, {}))
        check_prompt_texts(name, config, budget.max_length)
    for seed in seeds or list(budget.seeds):
        check_seed(seed)
    check_model_name(model.name)
    check_device(model.device)
    shape = model_shape(model.name)
    if shape is None:
        return
    if shape.max_positions is not None and budget.max_length > shape.max_positions:
        raise UserError(
            f"budget {budget.name!r}: max_length {budget.max_length} is longer than model {model.name}'s "
            f"{shape.max_positions} positions; lower it with --budget-set max_length=N"
        )
    for name, method_class in method_classes.items():
        with plugin_code("method", name, f"its config ({method_class.config_class.__name__})"):
            config = method_class.config_class.from_dict(method_options.get(name, {}))
        try:
            with plugin_code("method", name, f"{method_class.__name__}.check_before_runs(config, shape)"):
                method_class.check_before_runs(config, shape)
        except PluginError:
            raise
        except UserError as error:
            raise UserError(f"{name} on {model.name} ({shape.n_layers} layers x {shape.n_heads} heads): {error}") from None


def check_tune_storage(url: str) -> None:
    """``--tune-storage``: a URL SQLAlchemy can read, of a dialect that is installed, and for
    SQLite a file whose folder exists; checked before any run (nothing connects yet)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise UserError(
            f"--tune-storage {url!r} is not a database URL lofit-bench can use ({error}); e.g. "
            "sqlite:////path/to/trials.db or postgresql://user@host/db"
        ) from None
    except ImportError as error:
        raise UserError(f"--tune-storage {url!r} needs a database driver that is not installed: {error}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().parent
        if not folder.is_dir():
            raise UserError(f"--tune-storage {url!r}: the folder {folder} does not exist; create it or choose another path")


def check_reference(reference: str, methods: list[str], out_dir: Path | None) -> None:
    """``--reference``: a method of this sweep or of the records already in ``out_dir`` (the
    report covers both), checked before the sweep rather than after it."""
    from lofit_bench.records.store import iter_record_files, read_record

    known = set(methods)
    if out_dir is not None and out_dir.is_dir():
        for path in iter_record_files(out_dir):
            record, _ = read_record(path)
            if record is not None:
                known.add(record.method.name)
    if reference in known or any(reference.startswith(f"{name} ") for name in known):
        return
    raise UserError(
        f"--reference {reference}: no method of that name in this sweep or in its folder.{did_you_mean(reference, known)} "
        f"Methods: {', '.join(sorted(known))}"
    )

"""Our models -> lm-eval: lm-eval's ``HFLM`` around the live model object a method produced.

A method's interventions are forward hooks on the unmodified Hugging Face model (or a peft
wrapper around it), so they fire inside every forward pass lm-eval makes: ``_model_call``
(log-likelihoods) and ``_model_generate`` (generation) alike. Interventions that exist only
inside a context manager are supported the way lm-eval's own ``hf_steered.SteeredModel``
does it: pass ``intervention`` and both calls run inside it.

Importing this module imports lm-eval; callers import it lazily.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM
from torch import nn

from lofit_bench.lmeval import quiet_lm_eval
from lofit_bench.progress import progress_enabled


class HookedHFLM(HFLM):
    """``HFLM`` over an in-memory model whose hooks (or ``intervention``) stay active.

    lm-eval's own settings apply unchanged (its tokenisation, batching, stop sequences), so a
    score through this class is what ``lm_eval --model hf`` would give for the same weights
    and hooks. ``tokens_processed`` counts the tokens of every forward pass, for throughput.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        batch_size: int = 16,
        max_length: int | None = None,
        intervention: Callable[[], AbstractContextManager] | None = None,
        progress: bool = False,
    ) -> None:
        with quiet_lm_eval():
            super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
        self.intervention = intervention or contextlib.nullcontext
        self.progress = progress_enabled(progress)
        self.tokens_processed = 0

    # -- the two places lm-eval runs the model -------------------------------------------
    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        self.tokens_processed += int(inps.numel())
        with self.intervention():
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs) -> torch.Tensor:
        with self.intervention():
            output = super()._model_generate(context, max_length, stop, **generation_kwargs)
        self.tokens_processed += int(output.numel())
        return output

    # -- lm-eval's request entry points, with our quiet switch ------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not self.progress)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or not self.progress)

    def generate_until(self, requests, disable_tqdm: bool = False):
        return super().generate_until(requests, disable_tqdm=disable_tqdm or not self.progress)

    def get_model_info(self) -> dict[str, Any]:
        """HFLM's version asks the hub for a model SHA; an in-memory model has none."""
        model = self.model
        return {
            "model_num_parameters": sum(parameter.numel() for parameter in model.parameters()),
            "model_dtype": str(getattr(model, "dtype", "")),
            "model_class": type(model).__name__,
        }

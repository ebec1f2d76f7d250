"""lm-eval adapters, both directions.

- Our models -> lm-eval tasks: :mod:`lofit_bench.lmeval.model` wraps the live model a method
  produced (hooks attached, or a peft wrapper) in lm-eval's ``HFLM``;
  :mod:`lofit_bench.lmeval.tasks` makes ``lm_eval:TASK`` a task name the harness accepts.
- Our tasks -> lm-eval: :mod:`lofit_bench.lmeval.export` writes task configs for any
  generation or multiple-choice task, built-in or from a plugin, scored by the task's own
  code (:mod:`lofit_bench.lmeval.task_functions`; ``lofit-bench export-lm-eval``).

lm-eval is an optional extra (``pip install 'lofit-bench[lm-eval]'``): nothing here imports it
until it is used, so ``lofit-bench --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from collections.abc import Iterator

from lofit_bench.errors import UserError

#: ``lm_eval:NAME`` task names: the prefix, and the variable that carries ``--lm-eval-include``.
PREFIX = "lm_eval"
INCLUDE_VARIABLE = "LOFIT_BENCH_LM_EVAL_INCLUDE"

LM_EVAL_REQUIREMENT = "lm-eval[hf]>=0.4.13,<0.5"
INSTALL_HINT = "pip install 'lofit-bench[lm-eval]'"


def require_lm_eval(purpose: str) -> str:
    """The installed lm-eval version; a one-line UserError with the install command if absent."""
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (the [hf] extra's torch/transformers side)
    except ImportError as error:
        raise UserError(
            f"{purpose} needs lm-eval ({LM_EVAL_REQUIREMENT}), which is not installed "
            f"({error}); install it with `{INSTALL_HINT}`"
        ) from None
    return importlib.metadata.version("lm_eval")


@contextlib.contextmanager
def quiet_lm_eval(level: int = logging.ERROR) -> Iterator[None]:
    """Silence lm-eval's per-call warnings (pre-built model, default aggregations...)."""
    logger = logging.getLogger("lm_eval")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)

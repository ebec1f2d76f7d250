"""Zero-shot: the base model as it is, the reference row of every comparison (LoFiT Table 1)."""

from __future__ import annotations

from lofit_bench import hookimpl
from lofit_bench.engine.models import LoadedModel
from lofit_bench.method import Method


class ZeroShot(Method):
    """Evaluates the unmodified model: nothing is attached and nothing is trained."""

    name = "zero-shot"
    description = "the base model, unmodified (0 trainable parameters)"
    uses_training_data = False

    def prepare(self, lm: LoadedModel) -> None:
        self.lm = lm

    def trainable_parameters(self) -> int:
        return 0

    def remove(self) -> None:
        self.lm = None


@hookimpl
def register_methods(register):
    register(ZeroShot)

"""RED: Representation EDiting with a learned scale and bias, in the LoFiT paper's variant.

Wu et al., "Advancing Parameter Efficiency in Fine-tuning via Representation Editing", ACL 2024,
arXiv:2402.15179. As re-implemented for the LoFiT paper (Yin et al. 2024, arXiv:2406.01563,
Table 3): the edited
representation is not the FFN output of the RED paper but the output z^(l,i) of *every*
attention head i of *every* layer l (the input of the attention output projection, LoFiT's
site), with no head selection. Per head a scale s and a bias b of size head_dim:

    z^(l,i) <- s^(l,i) * z^(l,i) + b^(l,i),   s initialised to 1, b to 0 (the edit starts as identity)

Here the scale is stored as a residual A with s = 1 + A (the shared head-edit module's
convention, :mod:`lofit_bench.engine.interventions`), so A = 0 at start is RED's s = 1 exactly, and
b is the vector named ``shift`` (the Trainer exempts parameters named "bias" from weight
decay; here both vectors are decayed alike, A towards s = 1). s and b are trained jointly
with the task's objective: SFT, or DPO against the model as it is when training starts,
which is the base model, the edit starting as the identity.

Trained values: 2 * L * H * head_dim (Llama-2-7B: 2 x 32 x 32 x 128 = 262,144, Table 3's
262 K). Learning rates default to the paper's Table 7 for Llama-2-7B (TruthfulQA 5e-4,
MQuAKE 1e-3, CLUTRR 5e-3); other tasks need ``red.learning_rate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lofit_bench import hookimpl
from lofit_bench.engine.interventions import (
    HeadIntervention,
    HeadInterventionMethod,
    load_intervention,
    save_intervention,
)
from lofit_bench.engine.models import LoadedModel
from lofit_bench.engine.training import OptimizerSettings, train
from lofit_bench.method import FitContext, MethodConfig, resolve_paper_defaults
from lofit_bench.search_space import LogUniform

STATE_FILE = "red_vectors.safetensors"
SUBMODULE = "red_heads"  # where the vectors hang on the model (model.red_heads)

#: Paper Table 7, Llama-2-7B.
PAPER_TABLE_7 = {
    "truthfulqa": {"learning_rate": 5e-4},
    "mquake": {"learning_rate": 1e-3},
    "clutrr": {"learning_rate": 5e-3},
}


@dataclass
class REDConfig(MethodConfig):
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "AdamW learning rate; None: paper Table 7 (Llama-2-7B) for the task", "exclusive_minimum": 0,
                  "tune": LogUniform(1e-4, 1e-1)},
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay", "minimum": 0})



class RED(HeadInterventionMethod):
    """A trained scale and bias on every attention head's output (LoFiT's RED variant)."""

    name = "red"
    submodule = SUBMODULE
    description = "RED (Wu et al. 2024), LoFiT's variant: scale and bias on every attention head output"
    config_class = REDConfig
    relative_cost = 1.48  # untuned CLUTRR fit, SmolLM2-135M, next to LoRA's (schedule order only)

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.config: REDConfig

    # -- life cycle ------------------------------------------------------------------------
    def prepare(self, lm: LoadedModel) -> None:
        super().prepare(lm)
        # Zero vectors: scale 1 + 0 and bias 0, RED's identity initialisation.
        self.attachment = HeadIntervention(lm.layout, scale=True, shift=True).attach(lm.model, lm.layout, SUBMODULE)

    #: A task Table 7 has no row for: Table 7's rate for the paper's task of the same objective
    #: (MQuAKE for SFT, TruthfulQA for DPO).
    generic_values = {"sft": dict(PAPER_TABLE_7["mquake"]), "dpo": dict(PAPER_TABLE_7["truthfulqa"])}
    generic_source = "paper Table 7's value for its task of the same objective (MQuAKE: SFT, TruthfulQA: DPO)"

    @classmethod
    def default_values(cls, task: Any) -> dict[str, Any]:
        return dict(PAPER_TABLE_7.get(task.name, {}))

    def fit(self, context: FitContext) -> dict[str, Any]:
        lm = self.require_prepared()
        values, sources = resolve_paper_defaults(
            self.name, context.task.name, {"learning_rate": self.config.learning_rate}, PAPER_TABLE_7,
            "paper Table 7 (Llama-2-7B)",
        )
        with context.phase("training"):
            result = train(
                lm.model, lm.tokenizer, context.training_examples(), context.task.objective, context.budget,
                OptimizerSettings(values["learning_rate"], weight_decay=self.config.weight_decay),
                context.seed, context.work_dir / "red", progress=context.progress, on_epoch_end=context.on_epoch_end,
                capabilities=self.capabilities,
            )
        return {
            "training": result.to_dict(),
            "hyperparameters": {**values, "weight_decay": self.config.weight_decay, "sources": sources},
            "heads": lm.layout.total_heads,
        }

    def trainable_parameters(self) -> int:
        if self.attachment is None:
            return 0
        return sum(parameter.numel() for parameter in self.attachment.intervention.parameters())

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        super().save(directory)
        if self.attachment is not None:
            save_intervention(self.attachment.intervention, directory / STATE_FILE, metadata={"method": self.name})

    def load(self, directory: Path) -> None:
        super().load(directory)
        lm = self.require_prepared()
        intervention = load_intervention(directory / STATE_FILE, lm.layout)
        self._detach()
        self.attachment = intervention.attach(lm.model, lm.layout, SUBMODULE)



@hookimpl
def register_methods(register):
    register(RED)

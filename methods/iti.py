"""ITI: Inference-Time Intervention along truthful directions of a few attention heads.

Li, Patel, Viégas, Pfister and Wattenberg, "Inference-Time Intervention: Eliciting Truthful
Answers from a Language Model", NeurIPS 2023, arXiv:2306.03341. Reference code:
github.com/likenneth/honest_llama. The LoFiT paper (Yin et al. 2024) compares against it at
K = 3 % of the heads.

Site: z^(l,i), the output of attention head i of layer l, i.e. the input of the layer's
attention output projection split into heads (the same site as LoFiT). Nothing is trained:

1. Labelled activations. Every training example gives a positive and a negative text
   (:func:`lofit_bench.engine.activations.contrast_pairs`): TruthfulQA ``prompt + chosen`` (the best
   answer, label 1) vs ``prompt + rejected`` (the first incorrect answer, label 0); CLUTRR and
   MQuAKE ``prompt + gold`` (1) vs ``prompt + a wrong answer`` (0), the wrong answer drawn with
   the run's seed from the other training examples' gold answers (CLUTRR: another of the
   relation labels; MQuAKE: another case's answer entity). z^(l,i) is read at the last token.
2. Probes. One logistic regression per head on the raw head_dim features of the training
   pairs (scikit-learn, ``max_iter=1000, random_state=seed``, otherwise defaults), scored by
   accuracy on held-out pairs: the dev split's pairs, as honest_llama scores on its
   validation questions (``probe_validation=dev``), or 20 % of the training pairs (``train``).
3. Heads. The K heads with the best held-out accuracy over the whole model (K = 3 % of the
   heads by default, like LoFiT's comparison).
4. Direction per head, mass-mean shift (ITI's best, ``--use_center_of_mass``), over the
   training and held-out pairs:

       theta^(l,i) = (mean z^(l,i) | label 1) - (mean z^(l,i) | label 0),  normalised to 1

   and sigma^(l,i) = std of <z^(l,i), theta^(l,i)> over the same activations.
5. Intervention, for the K heads:

       z^(l,i) <- z^(l,i) + alpha * sigma^(l,i) * theta^(l,i)

   alpha and K are tuned by the harness on the dev split (:mod:`lofit_bench.sweep.tuning`,
   ``budget.trials`` trials, ITI's alpha = 15 at K = 3 % first): alpha log-uniform in
   [1, 40], K one of 1 %, 3 %, 5 %, 10 % of the heads. Steps 1, 2 and 4 do not depend on
   them, so they run once per fold and every trial reuses them.

Deviations from honest_llama, recorded here and in the README:
- the shift is added at *every* position (the issue's rule, same as LoFiT's bias), while
  honest_llama adds it to the answer tokens when scoring multiple choice and to the last
  position of each forward call when generating;
- one (true, false) pair per TruthfulQA training question (the task's DPO pair), not every
  mc2 choice; and sigma is taken over the fold's train + dev activations, not over a feature
  bank built from all 817 questions (gotcha 14);
- the probe texts join prompt and answer exactly as the shared trainer does (no extra space:
  "Q: ... A:No, ..."), so one text format serves every method.

Recorded: trainable parameters 0; stored values K * head_dim (the fixed shift vectors).
The full head ranking is saved as ``heads.json`` (the LoFiT format,
:class:`lofit_bench.engine.heads.HeadSelection`), so LoFiT can tune its biases on ITI's heads
(``--method-set lofit.head_source=file:RUN_DIR``, paper Table 2); :func:`iti_head_ranking`
computes the same ranking in process.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lofit_bench import hookimpl
from lofit_bench.engine.activations import ContrastPair, contrast_pairs, pair_activations
from lofit_bench.engine.heads import HEADS_FILE, HeadSelection
from lofit_bench.engine.interventions import (
    Head,
    HeadIntervention,
    HeadInterventionMethod,
    check_head_option,
    load_intervention,
    rank_heads,
    resolve_head_count,
    save_intervention,
)
from lofit_bench.engine.models import LoadedModel
from lofit_bench.errors import UserError
from lofit_bench.method import FitContext, MethodConfig
from lofit_bench.search_space import Choice, LogUniform
from lofit_bench.shared_work import SharedWork, examples_hash
from lofit_bench.task import TrainingExample

SHIFTS_FILE = "iti_shifts.safetensors"
DIRECTIONS_FILE = "iti_directions.safetensors"
SUBMODULE = "iti_heads"  # where the fixed shift vectors hang on the model (model.iti_heads)
PROBE_VALIDATION = ("dev", "train")
DIRECTIONS = ("mass_mean", "probe")


@dataclass
class ITIConfig(MethodConfig):
    heads: int | float = field(
        default=0.03,
        metadata={"help": "K heads shifted: a count (int) or a fraction of all heads (float; 0.03 as in "
                  "LoFiT's comparison = 8 of SmolLM2's 270; ITI's own default is 48 of LLaMA-7B's 1024)",
                  "tune": Choice(0.01, 0.03, 0.05, 0.1)},
    )
    alpha: float = field(
        default=15.0,
        metadata={"help": "intervention strength (ITI's default 15)", "tune": LogUniform(1.0, 40.0)},
    )
    direction: str = field(
        default="mass_mean",
        metadata={"help": "mass_mean (ITI's best: true mean - false mean) or probe (the probe's weight vector)",
                  "choices": DIRECTIONS},
    )
    probe_validation: str = field(
        default="dev",
        metadata={"help": "where probe accuracy is measured: dev (the dev split's pairs, as honest_llama) "
                  "or train (a seeded 20% of the training pairs, held out from probe training)",
                  "choices": PROBE_VALIDATION},
    )
    validation_fraction: float = field(
        default=0.2,
        metadata={"help": "share of training pairs held out when probe_validation=train", "exclusive_minimum": 0,
                  "exclusive_maximum": 1},
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # types and bounds from the fields
        check_head_option(self.heads, "iti.heads")  # against the model: ITI.check_before_runs


# -- probes, ranking and directions (plain functions: LoFiT's "ITI heads" and tests call them) --
def probe_accuracies(
    train_positive: torch.Tensor,
    train_negative: torch.Tensor,
    validation_positive: torch.Tensor,
    validation_negative: torch.Tensor,
    seed: int,
    keep_probes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Held-out accuracy of one logistic-regression probe per head -> [n_layers, n_heads].

    Inputs are head activations [N, n_layers, n_heads, head_dim] of the positive (label 1) and
    negative (label 0) members of the pairs. With ``keep_probes`` the probes' unit weight
    vectors come back too ([n_layers, n_heads, head_dim]), for ``direction=probe``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    features = torch.cat([train_positive, train_negative]).double().numpy()
    labels = np.r_[np.ones(len(train_positive)), np.zeros(len(train_negative))]
    held_out = torch.cat([validation_positive, validation_negative]).double().numpy()
    held_out_labels = np.r_[np.ones(len(validation_positive)), np.zeros(len(validation_negative))]
    n_layers, n_heads, head_dim = features.shape[1:]
    accuracies = torch.zeros(n_layers, n_heads, dtype=torch.float32)
    weights = torch.zeros(n_layers, n_heads, head_dim, dtype=torch.float32) if keep_probes else None
    # One BLAS thread: the problems are tiny, and multi-threaded BLAS makes each fit ~40x
    # slower on a busy CPU (0.75 s instead of 0.02 s for 64 x 64 features on 2 cores).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for layer in range(n_layers):
            for head in range(n_heads):
                probe = LogisticRegression(max_iter=1000, random_state=seed)
                probe.fit(features[:, layer, head], labels)
                accuracies[layer, head] = float(probe.score(held_out[:, layer, head], held_out_labels))
                if weights is not None:
                    weight = torch.from_numpy(probe.coef_[0]).float()
                    weights[layer, head] = weight / weight.norm().clamp_min(1e-12)
    return accuracies, weights


def mass_mean_directions(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Unit (mean positive - mean negative) per head: [N, L, H, D] x 2 -> [L, H, D]."""
    direction = positive.double().mean(0) - negative.double().mean(0)
    return (direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float()


def projection_std(activations: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """sigma per head: std of <z, theta> over ``activations`` [N, L, H, D] -> [L, H]."""
    projections = torch.einsum("nlhd,lhd->nlh", activations.double(), directions.double())
    return projections.std(dim=0, unbiased=False).float()  # numpy's np.std, as honest_llama


def split_pairs(pairs: Sequence[ContrastPair], fraction: float, seed: int) -> tuple[list[ContrastPair], list[ContrastPair]]:
    """(probe-training pairs, held-out pairs): a seeded ``fraction`` held out, by pair."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    held = max(1, round(fraction * len(pairs)))
    if held >= len(pairs):
        raise UserError(f"{len(pairs)} training pairs are too few to hold {fraction:.0%} out for the probes")
    held_out = set(order[:held])
    return [p for i, p in enumerate(pairs) if i not in held_out], [p for i, p in enumerate(pairs) if i in held_out]


@dataclass
class ProbeReading:
    """Everything ITI learns from the labelled activations, for every head."""

    accuracy: torch.Tensor  # [L, H] held-out probe accuracy
    directions: torch.Tensor  # [L, H, D] unit directions
    sigma: torch.Tensor  # [L, H]
    train_pairs: int
    validation_pairs: int
    validation: str

    def ranking(self) -> list[tuple[int, int, float]]:
        return rank_heads(self.accuracy)


def read_probes(
    lm: LoadedModel,
    training: Sequence[TrainingExample],
    validation: Sequence[TrainingExample] | None,
    seed: int,
    direction: str = "mass_mean",
    validation_fraction: float = 0.2,
    batch_size: int = 8,
    max_length: int | None = None,
    shared: SharedWork | None = None,
) -> ProbeReading:
    """Collect head activations of the contrast pairs, train the probes, find the directions.

    ``validation`` None holds out ``validation_fraction`` of the training pairs instead. With
    an enabled ``shared`` store the reading (and the activations under it) is computed once per
    sweep: ITI's runs and LoFiT's ``head_source=iti`` with the same data and seed share it.
    """
    if shared is None or not shared.enabled:
        return _read_probes(lm, training, validation, seed, direction, validation_fraction, batch_size, max_length)
    fields = {
        "training": examples_hash(training), "validation": None if validation is None else examples_hash(validation),
        "seed": seed, "direction": direction,
        "validation_fraction": None if validation is not None else validation_fraction,
        "batch_size": batch_size, "max_length": max_length,
    }

    def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        reading = _read_probes(lm, training, validation, seed, direction, validation_fraction, batch_size, max_length, shared)
        tensors = {"accuracy": reading.accuracy, "directions": reading.directions, "sigma": reading.sigma}
        meta = {"train_pairs": reading.train_pairs, "validation_pairs": reading.validation_pairs, "validation": reading.validation}
        return tensors, meta

    tensors, meta = shared.fetch("iti-probes", fields, compute)
    return ProbeReading(tensors["accuracy"], tensors["directions"], tensors["sigma"], **meta)


def _read_probes(
    lm: LoadedModel,
    training: Sequence[TrainingExample],
    validation: Sequence[TrainingExample] | None,
    seed: int,
    direction: str,
    validation_fraction: float,
    batch_size: int,
    max_length: int | None,
    shared: SharedWork | None = None,
) -> ProbeReading:
    pairs = contrast_pairs(training, seed)
    if validation is None:
        pairs, held_out = split_pairs(pairs, validation_fraction, seed)
        where = f"{validation_fraction:.0%} of train"
    else:
        held_out = contrast_pairs(validation, seed + 1, answer_pool=training)
        where = "dev"
    if not pairs or not held_out:
        raise UserError("ITI needs at least one training pair and one held-out pair")
    train_positive, train_negative = pair_activations(lm, pairs, ("heads",), batch_size, max_length, shared)["heads"]
    held_positive, held_negative = pair_activations(lm, held_out, ("heads",), batch_size, max_length, shared)["heads"]
    accuracy, probe_weights = probe_accuracies(
        train_positive, train_negative, held_positive, held_negative, seed, keep_probes=direction == "probe"
    )
    everything = torch.cat([train_positive, held_positive, train_negative, held_negative])
    if direction == "probe":
        directions = probe_weights
    else:
        directions = mass_mean_directions(torch.cat([train_positive, held_positive]), torch.cat([train_negative, held_negative]))
    return ProbeReading(accuracy, directions, projection_std(everything, directions), len(pairs), len(held_out), where)


def iti_head_ranking(
    lm: LoadedModel,
    training: Sequence[TrainingExample],
    validation: Sequence[TrainingExample] | None,
    seed: int,
    batch_size: int = 8,
    max_length: int | None = None,
    shared: SharedWork | None = None,
) -> list[tuple[int, int, float]]:
    """ITI's head ranking: (layer, head, held-out probe accuracy) for every head, best first.

    The ranking LoFiT's "ITI heads" ablation (paper Table 2) tunes its biases on. ``training``
    and ``validation`` are a task's training examples (the train and dev splits); validation
    None holds out 20 % of the training pairs. ITI's default probes, so with an enabled
    ``shared`` store an ITI run of the same sweep, task, fold and seed computes them once.
    """
    return read_probes(lm, training, validation, seed, batch_size=batch_size, max_length=max_length, shared=shared).ranking()


def layer_probe_accuracies(
    train_positive: torch.Tensor,
    train_negative: torch.Tensor,
    validation_positive: torch.Tensor,
    validation_negative: torch.Tensor,
    seed: int,
) -> torch.Tensor:
    """Held-out accuracy of one probe per layer on the layer's heads concatenated -> [n_layers].

    Inputs as :func:`probe_accuracies` ([N, n_layers, n_heads, head_dim]); each layer's heads
    become one feature vector of n_heads * head_dim (LoFiT's "probe-layers" selector).
    """
    def concatenated(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(tensor.shape[0], tensor.shape[1], 1, -1)

    accuracy, _ = probe_accuracies(
        concatenated(train_positive), concatenated(train_negative), concatenated(validation_positive),
        concatenated(validation_negative), seed,
    )
    return accuracy[:, 0]


def heads_of_best_layers(layer_accuracy: torch.Tensor, n_heads: int, k: int) -> tuple[list[tuple[int, int, float]], list[int]]:
    """(ranking, chosen layers): every head scored by its layer's accuracy, best layer first
    (ties: the lower layer), and the fewest best layers that hold at least ``k`` heads."""
    order = sorted(range(len(layer_accuracy)), key=lambda layer: (-float(layer_accuracy[layer]), layer))
    ranking = [(layer, head, float(layer_accuracy[layer])) for layer in order for head in range(n_heads)]
    return ranking, sorted(order[: -(-k // n_heads)])


def probe_layer_ranking(
    lm: LoadedModel,
    training: Sequence[TrainingExample],
    validation: Sequence[TrainingExample],
    seed: int,
    k: int,
    batch_size: int = 8,
    max_length: int | None = None,
) -> tuple[list[tuple[int, int, float]], list[int]]:
    """The paper's "probe-layers" head selector (Yin et al. 2024, Sec. 5.1 and Table 2): probes
    on each layer's concatenated head activations at the last token of prompt + gold answer
    (label 1) vs prompt + a wrong answer (label 0), trained on the training pairs and scored on
    the dev pairs; all heads of the best layer(s). Returns (ranking, chosen layers)."""
    pairs = contrast_pairs(training, seed)
    held_out = contrast_pairs(validation, seed + 1, answer_pool=training)
    if not pairs or not held_out:
        raise UserError("the probe-layers head source needs at least one training pair and one dev pair")
    train_positive, train_negative = pair_activations(lm, pairs, ("heads",), batch_size, max_length)["heads"]
    held_positive, held_negative = pair_activations(lm, held_out, ("heads",), batch_size, max_length)["heads"]
    accuracy = layer_probe_accuracies(train_positive, train_negative, held_positive, held_negative, seed)
    return heads_of_best_layers(accuracy, lm.layout.n_heads, k)


class ITI(HeadInterventionMethod):
    """Shift the K most truth-predictive heads along their mass-mean direction (no training)."""

    name = "iti"
    submodule = SUBMODULE
    description = "ITI (Li et al. 2023): probe-selected heads shifted by alpha * sigma * direction"
    config_class = ITIConfig
    relative_cost = 0.27  # untuned CLUTRR fit, SmolLM2-135M, next to LoRA's (schedule order only)

    @classmethod
    def check_before_runs(cls, config: MethodConfig, shape: Any) -> None:
        resolve_head_count(config.heads, shape.total_heads)

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.config: ITIConfig
        self.selection: HeadSelection | None = None
        self.reading: ProbeReading | None = None

    # -- life cycle ------------------------------------------------------------------------
    def fit(self, context: FitContext) -> dict[str, Any]:
        lm = self.require_prepared()
        self._detach()
        config = self.config
        validation = context.dev_examples() if config.probe_validation == "dev" else None
        key = ("iti probes", config.direction, config.probe_validation, config.validation_fraction)
        with context.phase("probes"):
            reading = context.reuse(key, lambda: read_probes(
                lm, context.training_examples(), validation, context.seed, config.direction,
                config.validation_fraction, context.budget.eval_batch_size, context.budget.max_length, context.shared_work,
            ))
        self.reading = reading
        ranking = reading.ranking()
        k, alpha = resolve_head_count(config.heads, lm.layout.total_heads), float(config.alpha)
        chosen = [(layer, head) for layer, head, _ in ranking[:k]]
        self._attach(chosen, alpha)
        self.selection = HeadSelection.for_layout(
            lm.layout, source="iti", chosen=chosen, ranking=ranking,
            score=f"ITI probe accuracy on held-out pairs ({reading.validation})",
            details={"task": context.task.name, "fold": context.fold, "seed": context.seed, "alpha": alpha,
                     "direction": config.direction},
        )
        return {
            "probes": {
                "train_pairs": reading.train_pairs,
                "validation_pairs": reading.validation_pairs,
                "validation": reading.validation,
                "chosen_head_accuracy": [float(reading.accuracy[layer, head]) for layer, head in chosen],
                "mean_accuracy_all_heads": float(reading.accuracy.mean()),
            },
            "hyperparameters": {"heads": k, "alpha": alpha, "heads_option": config.heads, "direction": config.direction},
            "heads": {"k": k, "chosen": [list(head) for head in chosen],
                      "sigma": [float(reading.sigma[layer, head]) for layer, head in chosen]},
        }

    def trainable_parameters(self) -> int:
        return 0

    def stored_values(self) -> int:
        if self.attachment is None:
            return 0
        return sum(vector.numel() for vector in self.attachment.intervention.vectors("shift"))

    # -- the intervention ------------------------------------------------------------------
    def _attach(self, heads: list[Head], alpha: float) -> None:
        """Fixed (non-trainable) shifts alpha * sigma * theta on ``heads``."""
        lm = self.require_prepared()
        assert self.reading is not None
        self._detach()
        intervention = HeadIntervention(lm.layout, heads, shift=True)
        with torch.no_grad():
            for layer, site in intervention.sites.items():
                rows = site.heads.cpu()
                values = alpha * self.reading.sigma[int(layer), rows, None] * self.reading.directions[int(layer), rows]
                site.shift.copy_(values)
        intervention.requires_grad_(False)
        self.attachment = intervention.attach(lm.model, lm.layout, SUBMODULE)


    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        super().save(directory)
        if self.attachment is None or self.selection is None:
            return
        from safetensors.torch import save_file

        save_intervention(self.attachment.intervention, directory / SHIFTS_FILE, metadata={"method": self.name})
        self.selection.save(directory / HEADS_FILE)
        if self.reading is not None:
            save_file(
                {"probe_accuracy": self.reading.accuracy.contiguous(), "directions": self.reading.directions.contiguous(),
                 "sigma": self.reading.sigma.contiguous()},
                str(directory / DIRECTIONS_FILE),
                metadata={"validation": self.reading.validation, "direction": self.config.direction},
            )

    def load(self, directory: Path) -> None:
        super().load(directory)
        lm = self.require_prepared()
        selection = HeadSelection.load(directory / HEADS_FILE)
        selection.check_layout(lm.layout, directory)
        intervention = load_intervention(directory / SHIFTS_FILE, lm.layout)
        intervention.requires_grad_(False)
        self._detach()
        self.attachment = intervention.attach(lm.model, lm.layout, SUBMODULE)
        self.selection = selection



@hookimpl
def register_methods(register):
    register(ITI)

"""Budgets: one named, recorded object that every method in a sweep shares.

The budget is what makes a comparison fair: the same training examples, epochs, batch size,
sequence length, schedule, seeds, evaluation subset and number of hyper-parameter trials
on the dev split for every method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lofit_bench.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Budget:
    """Everything a run may spend. ``None`` for a size means the whole split."""

    name: str = field(metadata={"help": "preset name, recorded with every run"})
    train_examples: int | None = field(
        default=None, metadata={"help": "training examples per fold (None: the task's full train split)"}
    )
    dev_examples: int | None = field(
        default=None, metadata={"help": "dev examples used for hyper-parameter trials (None: all)"}
    )
    eval_examples: int | None = field(
        default=None, metadata={"help": "test examples evaluated per fold (None: all, the paper's test set)"}
    )
    epochs: int = field(default=5, metadata={"help": "training epochs"})
    batch_size: int = field(default=8, metadata={"help": "training batch size"})
    eval_batch_size: int = field(default=16, metadata={"help": "evaluation batch size"})
    max_length: int = field(default=400, metadata={"help": "max tokens of a training sequence"})
    lr_scheduler: str = field(default="linear", metadata={"help": "learning-rate schedule (to 0)"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "fraction of steps spent warming up"})
    seeds: tuple[int, ...] = field(default=(42,), metadata={"help": "seeds run for each method"})
    trials: int = field(
        default=4, metadata={"help": "hyper-parameter trials the tuner spends on the dev split for every method"}
    )
    tune: bool = field(
        default=True,
        metadata={"help": "tune each method's declared search space on the dev split with `trials` trials "
                  "(Optuna, seeded; see README, Tuning); false: the paper's / the method's default values"},
    )
    prune_examples: int | None = field(
        default=50,
        metadata={"help": "dev examples scored after each training epoch of a trial so that the tuner can stop "
                  "hopeless trials (median pruning); None: no pruning"},
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "micro-batches per optimizer step; batch_size stays the effective batch "
                  "(each micro-batch holds batch_size / gradient_accumulation_steps examples)"},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute activations in the backward pass to save memory (non-reentrant, "
                  "so hooks on a frozen model still get gradients); same gradients, slower steps"},
    )

    side_effect_texts: int = field(
        default=16,
        metadata={"help": "held-out passages (Python Language Reference excerpts, 64 tokens each) on which every fold "
                  "measures KL from the base model and the change in cross-entropy; 0: not measured"},
    )
    also_eval: tuple[str, ...] = field(
        default=(),
        metadata={"help": "other tasks scored after each fold's fit with no training on them (built-in, plugin or "
                  "lm_eval:NAME), against the base model on the same eval_examples (retention)"},
    )

    def __post_init__(self) -> None:
        # Values arrive from `--budget-set FIELD=VALUE` as parsed JSON or raw strings, so the
        # type is checked too: a wrong one must be a one-line error, not a traceback later.
        for name in ("train_examples", "dev_examples", "eval_examples", "prune_examples"):
            value = getattr(self, name)
            if value is not None and not _is_count(value):
                raise UserError(
                    f"budget {self.name!r}: {name} must be a whole number of at least 1 "
                    f"(or unset for all), got {value!r}"
                )
        for name in ("epochs", "batch_size", "eval_batch_size", "max_length", "trials"):
            value = getattr(self, name)
            if not _is_count(value):
                raise UserError(f"budget {self.name!r}: {name} must be a whole number of at least 1, got {value!r}")
        accumulation = self.gradient_accumulation_steps
        if not _is_count(accumulation):
            raise UserError(
                f"budget {self.name!r}: gradient_accumulation_steps must be a whole number of at least 1, got {accumulation!r}"
            )
        if self.batch_size % accumulation:
            raise UserError(
                f"budget {self.name!r}: batch_size {self.batch_size} is the effective batch and must split into "
                f"gradient_accumulation_steps={accumulation} equal micro-batches; choose a divisor of {self.batch_size}"
            )
        if not isinstance(self.tune, bool):
            raise UserError(f"budget {self.name!r}: tune must be true or false (on/off), got {self.tune!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise UserError(f"budget {self.name!r}: gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")
        ratio = self.warmup_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
            raise UserError(f"budget {self.name!r}: warmup_ratio must be a fraction in [0, 1), got {ratio!r}")
        if not isinstance(self.lr_scheduler, str):
            raise UserError(f"budget {self.name!r}: lr_scheduler must be a schedule name, got {self.lr_scheduler!r}")
        texts = self.side_effect_texts
        if isinstance(texts, bool) or not isinstance(texts, int) or texts < 0:
            raise UserError(f"budget {self.name!r}: side_effect_texts must be a whole number of passages (0: off), got {texts!r}")
        if isinstance(self.also_eval, list):  # the Python API and JSON give lists; the budget keeps a tuple (hashable)
            object.__setattr__(self, "also_eval", tuple(self.also_eval))
        if not isinstance(self.also_eval, tuple) or not all(isinstance(name, str) and name for name in self.also_eval):
            raise UserError(f"budget {self.name!r}: also_eval must be a list of task names, got {self.also_eval!r}")
        if not self.seeds or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in self.seeds):
            raise UserError(f"budget {self.name!r}: seeds must be one or more whole numbers, got {self.seeds!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["seeds"] = list(self.seeds)
        data["also_eval"] = list(self.also_eval)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Budget:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown budget fields: {', '.join(unknown)}. Known: {', '.join(sorted(known))}")
        values = dict(data)
        if "seeds" in values:
            seeds = values["seeds"]
            values["seeds"] = tuple(seeds) if isinstance(seeds, list | tuple) else (seeds,)
        if "also_eval" in values:
            names = values["also_eval"]
            names = names.split(",") if isinstance(names, str) else names
            if isinstance(names, list | tuple):
                names = tuple(name.strip() if isinstance(name, str) else name for name in names)
                values["also_eval"] = tuple(name for name in names if name != "")
            else:
                values["also_eval"] = names
        return cls(**values)

    def replace(self, **changes: Any) -> Budget:
        return dataclasses.replace(self, **changes)

    @property
    def micro_batch_size(self) -> int:
        """Examples per forward/backward pass: the effective batch over the accumulation steps."""
        return self.batch_size // self.gradient_accumulation_steps


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


BUDGETS: dict[str, Budget] = {
    # The paper's protocol (LoFiT Sec. 4 and App. B): full splits, 5 epochs, batch 8, and the
    # mean of two seeds (Table 1's caption).
    "paper": Budget(name="paper", seeds=(42, 43)),
    # The README's quick start on the bundled model: enough training for the methods to show
    # their effect (MQuAKE's 134 training cases, 2 epochs), 100 test examples, about 6.5 minutes on 2
    # cores. Every method at its defaults (no tuning: one trial would choose nothing), and side
    # effects on 4 held-out passages.
    "demo": Budget(
        name="demo",
        train_examples=None,
        dev_examples=50,
        eval_examples=100,
        epochs=2,
        batch_size=8,
        eval_batch_size=16,
        max_length=256,
        trials=1,
        tune=False,
        prune_examples=None,
        side_effect_texts=4,
    ),
    # The studies (`lofit-bench run --study NAME --budget study-cpu`) on a 2-core CPU, where
    # `paper` does not fit (TruthfulQA's DPO runs, four tuning trials, five configs of LoFiT):
    # the paper's protocol on 128 training examples per fold, 3 epochs, 2 trials on 50 dev
    # examples, every test example.
    "study-cpu": Budget(
        name="study-cpu",
        train_examples=128,
        dev_examples=50,
        eval_examples=None,
        epochs=3,
        batch_size=8,
        eval_batch_size=16,
        max_length=400,
        trials=2,
        prune_examples=None,
    ),
    # Proves the machinery end to end in a few minutes on 2 cores (tests, CI, plugin authors).
    "smoke": Budget(
        name="smoke",
        train_examples=16,
        dev_examples=8,
        eval_examples=12,
        epochs=1,
        batch_size=8,
        eval_batch_size=16,
        # Long enough for every built-in task on the tiny models' byte-level tokenizer
        # (CLUTRR's longest training story is 704 bytes); padding is per batch, so a real
        # model's ~150-token examples cost nothing more.
        max_length=768,
        trials=1,
        prune_examples=None,
        side_effect_texts=4,
    ),
}


def get_budget(name: str) -> Budget:
    if not isinstance(name, str):  # e.g. a list from a sweep file or the Python API
        raise UserError(f"a budget is named by a string (one of {', '.join(BUDGETS)}), got {name!r}")
    try:
        return BUDGETS[name]
    except KeyError:
        raise UserError(
            f"unknown budget: {name}.{did_you_mean(name, BUDGETS)} Known budgets: {', '.join(BUDGETS)}."
        ) from None

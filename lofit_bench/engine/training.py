"""The shared training loop: SFT and DPO through trl, so methods differ only in what is trained.

Every trained method (LoFiT, LoRA, RED, a plugin's BitFit...) calls :func:`train` with its
trainable parameters already registered on the model (hook parameters must live in a
submodule of the model: the Trainer builds its optimizer from ``model.named_parameters()``).
The budget fixes epochs, batch size, sequence length and schedule; the method chooses only
its learning rate, weight decay and an optional extra loss term (LoFiT's L1 penalty), and
says what its edits need (:class:`~lofit_bench.method.Capabilities`: LoReFT's prompt positions).

trl is extended in one place: :func:`harness_trainer` builds one subclass per trl trainer
that overrides the Trainer's ``compute_loss`` (and, for DPO, trl's public
``compute_ref_log_probs``, the precomputed reference pass, which only a listener needs to
know is the reference); the rest is callbacks. What trl and accelerate leave on the model
object is undone by :func:`model_left_as_found`.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lofit_bench.budget import Budget
from lofit_bench.engine.divergence import divergence_hint, first_non_finite, non_finite_stop
from lofit_bench.errors import Diverged, UserError, warn
from lofit_bench.method import Capabilities
from lofit_bench.progress import progress_enabled
from lofit_bench.prompt_positions import (
    PromptListener,
    PromptSpans,
    declare_prompt,
    listeners_to_tell,
)
from lofit_bench.task import Objective, PreferenceExample, SFTExample

DPO_BETA = 0.5  # LoFiT's TruthfulQA setting (the lo-fit script default)


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW as in the LoFiT paper: eps 1e-8, weight decay 0.01, linear decay, grad clip 1.0."""

    learning_rate: float
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0


@dataclass
class TrainResult:
    """What one training run did, for the run record."""

    objective: str
    examples: int
    epochs: int
    steps: int
    seconds: float
    tokens: int
    losses: list[float] = field(default_factory=list)
    over_length: int = 0

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "examples": self.examples,
            "epochs": self.epochs,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "tokens": self.tokens,
            "tokens_per_second": round(self.tokens_per_second, 1),
            "final_loss": self.final_loss,
            "examples_over_max_length": self.over_length,
            "losses": [round(loss, 6) for loss in self.losses],
        }


ExtraLoss = Callable[[], torch.Tensor]


def trainable_parameter_count(model: nn.Module) -> int:
    """numel of every tensor that will receive gradients."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def train(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[SFTExample | PreferenceExample],
    objective: Objective,
    budget: Budget,
    optimizer: OptimizerSettings,
    seed: int,
    work_dir: Path,
    extra_loss: ExtraLoss | None = None,
    peft_config: Any = None,
    progress: bool = False,
    on_epoch_end: Callable[[int], None] | None = None,
    capabilities: Capabilities | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters on ``examples`` with the task's objective.

    SFT puts the loss on completion tokens only (trl's completion-only loss); DPO uses
    beta 0.5 with reference log-probs precomputed from the model as it is when training
    starts (the LoFiT code's setting; with ``peft_config`` the adapter-disabled model).
    ``on_epoch_end(epoch)`` runs after each epoch (1-based), the model in eval mode; an
    exception it raises (the tuner's "prune this trial") ends the training. ``capabilities``
    is the method's declaration (``method.capabilities``); with ``needs_prompt_positions`` each
    batch's prompts are declared to the model's prompt listeners. None: what
    :meth:`Capabilities.of_model` reads off the model.
    """
    if not examples:
        raise ValueError("no training examples")
    over_length = count_over_length(tokenizer, examples, budget.max_length)
    if over_length == len(examples):
        shortest = min(sequence_length(tokenizer, example) for example in examples)
        raise UserError(
            f"every training example is longer than the budget's max_length ({budget.max_length} tokens; "
            f"the shortest needs {shortest}); raise it with --budget-set max_length={shortest} or more"
        )
    if over_length:
        warn(
            f"{over_length} of {len(examples)} training examples are longer than the budget's max_length "
            f"({budget.max_length} tokens) and are truncated; raise it with --budget-set max_length=N"
        )
    needs = capabilities if capabilities is not None else Capabilities.of_model(model)
    listeners = listeners_to_tell(model, needs.needs_prompt_positions)
    _quiet_libraries(progress)
    from transformers.trainer_callback import PrinterCallback

    with model_left_as_found(model):
        trainer = build_trainer(
            model, tokenizer, examples, objective, budget, optimizer, seed, work_dir, extra_loss, peft_config, progress,
            listeners,
        )
        trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout; losses go to the record
        trainer.args.logging_nan_inf_filter = False  # a NaN loss must be seen, not averaged away
        trainer.add_callback(non_finite_stop(optimizer.learning_rate))
        if on_epoch_end is not None:
            trainer.add_callback(_epoch_end_callback(model, on_epoch_end))
        started = time.perf_counter()
        try:
            trainer.train()
        finally:
            if budget.gradient_checkpointing:
                _undo_activation_checkpointing(model)
        seconds = time.perf_counter() - started
        trained = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
        broken = first_non_finite(trained)
        if broken is not None:
            raise Diverged(
                f"training diverged: trained tensor {broken} holds NaN or infinity after step "
                f"{trainer.state.global_step}; {divergence_hint(optimizer.learning_rate)}"
            )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainResult(
        objective=objective,
        examples=len(examples),
        epochs=budget.epochs,
        steps=trainer.state.global_step,
        seconds=seconds,
        tokens=int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0),
        losses=[float(loss) for loss in losses if not math.isnan(loss)] if losses else [],
        over_length=over_length,
    )


@contextmanager
def model_left_as_found(model: nn.Module) -> Iterator[None]:
    """Undo what trl, accelerate and the Trainer leave on the model instance after training.

    With trl 1.16 they patch ``forward`` on the instance (trl's fused LM head, accelerate's
    wrapper), add instance attributes (``_is_accelerate_prepared``, ``model_tags``), turn
    ``config.use_cache`` off and leave the model in train mode (tests/test_training.py shows it);
    evaluation and a method's ``remove()`` must see the model as it was, trained values aside.
    For a peft model the same holds for the wrapped base model (trl patches that one), and
    adapters trl added (DPO's frozen ``"ref"`` copy of the adapter) are deleted.
    """
    instances = [model]
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else None
    if base is not None and base is not model:
        instances.append(base)
    attributes = [dict(instance.__dict__) for instance in instances]
    adapters = set(getattr(model, "peft_config", {}) or {})
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    try:
        yield
    finally:
        for instance, found in zip(instances, attributes, strict=True):
            for name in set(instance.__dict__) - set(found):
                del instance.__dict__[name]
            for name, value in found.items():
                if instance.__dict__.get(name) is not value:
                    instance.__dict__[name] = value
        for adapter in sorted(set(getattr(model, "peft_config", {}) or {}) - adapters):
            model.delete_adapter(adapter)
        model.train(attributes[0]["training"])
        if config is not None and use_cache is not None:
            config.use_cache = use_cache


def _epoch_end_callback(model: nn.Module, hook: Callable[[int], None]) -> Any:
    """A Trainer callback that calls ``hook(epoch)`` at each epoch's end, then puts the model
    back in train mode (the hook scores it in eval mode)."""
    from transformers import TrainerCallback

    class EpochEnd(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            try:
                hook(round(state.epoch or 0))
            finally:
                model.train()

    return EpochEnd()


def sequence_length(tokenizer: Any, example: SFTExample | PreferenceExample) -> int:
    """Tokens of the example's longest full training sequence (+1 for the EOS the trainer appends)."""
    completions = [example.completion] if isinstance(example, SFTExample) else [example.chosen, example.rejected]
    return max(len(tokenizer(example.prompt + completion)["input_ids"]) + 1 for completion in completions)


def count_over_length(tokenizer: Any, examples: Sequence[SFTExample | PreferenceExample], max_length: int) -> int:
    """Examples whose longest full sequence exceeds ``max_length`` tokens (trl truncates them)."""
    return sum(sequence_length(tokenizer, example) > max_length for example in examples)


def _common_arguments(
    budget: Budget, optimizer: OptimizerSettings, seed: int, work_dir: Path, model: nn.Module, progress: bool
) -> dict[str, Any]:
    parameter = next(model.parameters())
    on_cpu = parameter.device.type == "cpu"
    return dict(
        output_dir=str(work_dir),
        per_device_train_batch_size=budget.micro_batch_size,
        gradient_accumulation_steps=budget.gradient_accumulation_steps,
        num_train_epochs=budget.epochs,
        learning_rate=optimizer.learning_rate,
        weight_decay=optimizer.weight_decay,
        adam_epsilon=optimizer.adam_epsilon,
        max_grad_norm=optimizer.max_grad_norm,
        lr_scheduler_type=budget.lr_scheduler,
        warmup_steps=budget.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        max_length=budget.max_length,
        seed=seed,
        data_seed=seed,
        use_cpu=on_cpu,
        bf16=parameter.dtype == torch.bfloat16,
        fp16=parameter.dtype == torch.float16,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_steps=1,
        logging_strategy="steps",
        disable_tqdm=not progress_enabled(progress),
        include_num_input_tokens_seen=True,
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )


def checkpointing_arguments(config_class: type, enabled: bool) -> dict[str, Any]:
    """The checkpointing switch under the name ``config_class`` accepts: trl 1.16 calls it
    ``activation_checkpointing``, trl 1.12 (the lowest declared) ``gradient_checkpointing``;
    read off the installed signature, not a fixed list. trl turns it
    on by default; here the budget decides. Non-reentrant, so hooks' vectors on a frozen model
    get gradients without inputs that require grad."""
    accepted = inspect.signature(config_class.__init__).parameters
    name = "activation_checkpointing" if "activation_checkpointing" in accepted else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def build_trainer(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[SFTExample | PreferenceExample],
    objective: Objective,
    budget: Budget,
    optimizer: OptimizerSettings,
    seed: int,
    work_dir: Path,
    extra_loss: ExtraLoss | None,
    peft_config: Any,
    progress: bool,
    listeners: Sequence[PromptListener] = (),
):
    """trl's SFT or DPO trainer for ``examples``, as :func:`harness_trainer` extends it."""
    from datasets import Dataset

    arguments = _common_arguments(budget, optimizer, seed, work_dir, model, progress)
    if objective == "sft":
        from trl import SFTConfig, SFTTrainer

        if not all(isinstance(example, SFTExample) for example in examples):
            raise TypeError("SFT training needs SFTExample items")
        dataset = Dataset.from_list([{"prompt": e.prompt, "completion": e.completion} for e in examples])
        arguments |= checkpointing_arguments(SFTConfig, budget.gradient_checkpointing)
        # loss_type "nll" is trl 1.16's default; trl 1.12 defaults to "chunked_nll", which patches the
        # model's forward (and fails on a device-mapped model, whose forward accelerate wraps):
        # naming it keeps one computation on every trl the project declares.
        config = SFTConfig(completion_only_loss=True, packing=False, loss_type="nll", **arguments)
        trainer_class = harness_trainer(SFTTrainer, TrainerNeeds(extra_loss, tuple(listeners), loss_positions_only=True))
    elif objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        if not all(isinstance(example, PreferenceExample) for example in examples):
            raise TypeError("DPO training needs PreferenceExample items")
        dataset = Dataset.from_list(
            [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected} for e in examples]
        )
        arguments |= checkpointing_arguments(DPOConfig, budget.gradient_checkpointing)
        config = DPOConfig(
            beta=DPO_BETA,
            precompute_ref_log_probs=True,
            precompute_ref_batch_size=budget.micro_batch_size,
            **arguments,
        )
        trainer_class = harness_trainer(DPOTrainer, TrainerNeeds(extra_loss, tuple(listeners)))
    else:
        raise ValueError(f"unknown objective {objective!r}; expected 'sft' or 'dpo'")
    never_data_parallel(config)
    kwargs: dict[str, Any] = dict(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    if peft_config is not None:
        kwargs["peft_config"] = peft_config
    if objective == "dpo":
        kwargs["ref_model"] = None
    return trainer_class(**kwargs)


def never_data_parallel(arguments: Any) -> None:
    """Keep the Trainer from wrapping the model in ``nn.DataParallel``.

    The Trainer wraps when it counts several GPUs (``n_gpu > 1``). A run's process sees only its
    own GPUs, and when it has several the frozen model is already sharded over them
    (``device_map``); replicating it would put a copy (and the interventions) on every GPU and
    split each batch. The Trainer itself lowers the count to 1 for model-parallel models; this
    does it whatever the map looks like (a small model mapped onto one of two GPUs included).
    """
    if arguments.n_gpu > 1:
        # Private, and on purpose: ``TrainingArguments.n_gpu`` is a read-only property over
        # ``_n_gpu`` and transformers offers no public switch; the Trainer itself sets ``_n_gpu``
        # for model-parallel models. tests/test_gpu_placement.py fails loudly if that changes.
        arguments._n_gpu = 1


def _undo_activation_checkpointing(model: nn.Module) -> None:
    """The Trainer leaves checkpointing on, and a hook on the input embeddings that makes their
    output require grad; evaluation and a method's ``remove()`` must find the model as it was."""
    instances = [model]
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else None
    if base is not None and base is not model:
        instances.append(base)
    for instance in instances:
        if getattr(instance, "_require_grads_hook", None) is not None:
            instance.disable_input_require_grads()
        disable = getattr(instance, "activation_checkpointing_disable", None) or getattr(
            instance, "gradient_checkpointing_disable", None
        )  # the name the installed transformers has (5.2x renamed it)
        if callable(disable) and any(getattr(module, "gradient_checkpointing", False) for module in instance.modules()):
            disable()


@dataclass(frozen=True)
class TrainerNeeds:
    """What the harness adds to a trl trainer's loss: the method's needs and the objective's."""

    #: Added to each step's loss (LoFiT's L1 term); a function of no arguments.
    extra_loss: ExtraLoss | None = None
    #: Told where each batch's prompts are (the method declared ``needs_prompt_positions``).
    listeners: tuple[PromptListener, ...] = ()
    #: SFT: run the LM head only on positions that predict a labelled token (:func:`labelled_positions_loss`).
    loss_positions_only: bool = False


def harness_trainer(trainer_class: type, needs: TrainerNeeds) -> type:
    """``trainer_class`` (trl's SFTTrainer or DPOTrainer) with the harness's ``compute_loss``.

    Each loss is computed with the batch's prompts declared to ``needs.listeners``, is trl's
    own loss (or, with ``loss_positions_only``, the same cross entropy on labelled positions
    only), plus ``needs.extra_loss()``. DPO's precomputed reference pass is declared as such.
    """

    class HarnessTrainer(trainer_class):  # type: ignore[valid-type, misc]
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with _prompts_declared(needs.listeners, inputs):
                if needs.loss_positions_only and not return_outputs:
                    result = labelled_positions_loss(model, inputs, num_items_in_batch)
                else:
                    result = super().compute_loss(
                        model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                    )
                return _plus_extra_loss(result, needs.extra_loss, return_outputs)

        if hasattr(trainer_class, "compute_ref_log_probs"):  # DPO: trl's precomputed reference pass

            def compute_ref_log_probs(self, model, inputs):
                with _prompts_declared(needs.listeners, inputs, reference=True):
                    return super().compute_ref_log_probs(model, inputs)

    HarnessTrainer.__name__ = HarnessTrainer.__qualname__ = f"Harness{trainer_class.__name__}"
    return HarnessTrainer


def labelled_positions_loss(model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
    """trl's SFT loss with the LM head run only on positions that predict a labelled token.

    With the loss on a few completion tokens, the (batch x length x vocabulary) logits are
    mostly wasted work; ``logits_to_keep`` takes the union of labelled positions across the
    batch. The loss is the same token-level cross entropy trl computes (mean over labelled
    tokens, or over ``num_items_in_batch`` under gradient accumulation).
    """
    targets = inputs["labels"][:, 1:]
    labelled = targets != -100
    keep = labelled.any(dim=0).nonzero().squeeze(1)
    # On a device-mapped model the hidden states are indexed on the last layer's device: a CPU
    # index works on any device, one on the input's GPU does not. The loss is computed where
    # the logits are (the LM head's device), so the targets go there.
    outputs = model(
        input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), logits_to_keep=keep.cpu(), use_cache=False
    )
    logits = outputs.logits.float()
    total = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets[:, keep].reshape(-1).to(logits.device), ignore_index=-100, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else labelled.sum()
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


def batch_prompt_spans(inputs: dict[str, Any]) -> PromptSpans:
    """Where a training batch's prompts are: both trl collators right-pad from column 0, and the
    prompt ends where the completion starts (SFT: the first label that is not -100; DPO:
    ``completion_mask``)."""
    completion = inputs["completion_mask"] if "completion_mask" in inputs else inputs["labels"] != -100
    return PromptSpans.before_first(completion, inputs.get("attention_mask"))


@contextmanager
def _prompts_declared(listeners: Sequence[PromptListener], inputs: dict[str, Any], reference: bool = False) -> Iterator[None]:
    """The calls inside told the batch's prompt spans (DPO's reference pass marked as such, so a
    listener can leave the base model as the reference); nothing when there are no listeners."""
    if not listeners:
        yield
        return
    spans = batch_prompt_spans(inputs)
    with declare_prompt(listeners, spans.as_reference() if reference else spans):
        yield


def _plus_extra_loss(result: Any, extra_loss: ExtraLoss | None, return_outputs: bool) -> Any:
    """``compute_loss``'s result with ``extra_loss()`` added to the loss (on the loss's device:
    a device-mapped model's loss is on its last GPU)."""
    if extra_loss is None:
        return result
    if return_outputs:
        loss, outputs = result
        return loss + extra_loss().to(loss.device), outputs
    return result + extra_loss().to(result.device)


def _quiet_libraries(progress: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets

    if progress_enabled(progress):
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
        os.environ["TQDM_DISABLE"] = "1"  # trl's reference log-prob pass has its own bar
    for name in ("transformers.trainer", "trl", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*Mismatch between tokenized prompt and the start.*")
    # trl 1.x still asks for the old name; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated", category=FutureWarning)

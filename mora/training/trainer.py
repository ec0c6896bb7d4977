"""The HF Trainer as a run configures it: the global batch split into micro-batches, processes and
accumulation; the step count (from epochs where Table 5 gives them); TrainingArguments; and the Trainer
class with the project's guards (a non-finite loss stops the run, DeepSpeed keeps our optimizer)."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import fields
from typing import Any

import torch

from .distributed import init_deepspeed_state, keeping_optimizer
from .finite import stopping_on_nonfinite_loss

log = logging.getLogger("mora")


def import_trainer() -> type:
    """transformers' Trainer, imported with WANDB_MODE hidden: with WANDB_MODE=offline (the Makefile's
    and CI's setting) transformers prints "[INFO] Running in WANDB offline mode" when it imports its
    integrations, whatever the run logs to. conf/logger/wandb.yaml reads the variable itself."""
    mode = os.environ.pop("WANDB_MODE", None)
    try:
        from transformers import Trainer
    finally:
        if mode is not None:
            os.environ["WANDB_MODE"] = mode
    return Trainer


def grad_accumulation(train_cfg) -> int:
    """Steps of accumulation so that micro-batch x processes x accumulation = the global batch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = train_cfg.micro_batch_size * world
    if train_cfg.batch_size % per_step:
        raise ValueError(
            f"train.batch_size={train_cfg.batch_size} is not a multiple of train.micro_batch_size="
            f"{train_cfg.micro_batch_size} x {world} process(es); change one of them"
        )
    return train_cfg.batch_size // per_step


def max_steps(train_cfg, rows) -> int:
    """train.max_steps, or with `train.epochs` set (Table 5 gives epochs) epochs x ceil(rows / batch_size)."""
    epochs, steps = train_cfg.get("epochs"), train_cfg.max_steps
    if (epochs is None) == (steps is None):
        raise ValueError(f"set exactly one of train.max_steps ({steps}) and train.epochs ({epochs})")
    if epochs is None:
        return steps
    if not hasattr(rows, "__len__"):
        raise ValueError("train.epochs needs a dataset of known size; this one streams: set train.max_steps")
    steps = int(epochs) * math.ceil(len(rows) / train_cfg.batch_size)
    log.info("%s epochs of %d rows at batch %d: %d steps", epochs, len(rows), train_cfg.batch_size, steps)
    return steps


def checkpointing_args(enabled: bool) -> dict[str, Any]:
    """Activation checkpointing for TrainingArguments, under the name this transformers uses (5.2x
    renames gradient_checkpointing to activation_checkpointing); non-reentrant, so gradients reach the
    adapters even though the frozen embeddings' outputs do not require grad."""
    from transformers import TrainingArguments

    name = "activation_checkpointing"
    if name not in {f.name for f in fields(TrainingArguments)}:
        name = "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}} if enabled else {}


def make_trainer(train_cfg, *, seed: int, output_dir: str, steps: int, accumulation: int,
                 deepspeed: dict | None, **trainer_kwargs: Any):
    """The Trainer for one run: `train_cfg` is the run's `train` node, `trainer_kwargs` what Trainer
    takes besides its arguments (model, train_dataset, data_collator, optimizers, callbacks)."""
    from transformers import TrainingArguments

    ds_args = init_deepspeed_state() if deepspeed is not None else {}
    bf16 = train_cfg.precision == "bf16"
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=train_cfg.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=train_cfg.lr,
        max_grad_norm=train_cfg.max_grad_norm,
        logging_steps=train_cfg.log_every,
        save_strategy="steps",
        save_steps=train_cfg.save_every,
        save_total_limit=train_cfg.save_total_limit,
        bf16=bf16,
        use_cpu=bf16 and not torch.cuda.is_available(),  # bf16 autocast on the CPU
        **checkpointing_args(train_cfg.gradient_checkpointing),
        include_num_input_tokens_seen="all",
        seed=seed,
        data_seed=seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not train_cfg.progress_bar,
        deepspeed=deepspeed or None,
        **ds_args,
    )
    trainer_cls = import_trainer()
    guarded = stopping_on_nonfinite_loss(keeping_optimizer(trainer_cls) if deepspeed is not None else trainer_cls)
    trainer = guarded(args=args, **trainer_kwargs)
    if not train_cfg.progress_bar:  # quiet: one line per evaluation, no per-step log dicts or bars
        from transformers.trainer_callback import PrinterCallback
        from transformers.utils import logging as hf_logging

        trainer.remove_callback(PrinterCallback)
        hf_logging.disable_progress_bar()
    return trainer

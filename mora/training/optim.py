"""Optimizer and learning-rate schedule for a run, built from the `train` and `method` configs."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..adapters import param_groups

SCHEDULES = ("constant", "linear", "cosine")


def build_optimizer(model: torch.nn.Module, train_cfg) -> torch.optim.Optimizer:
    if train_cfg.optimizer != "adamw":
        raise ValueError(f"train.optimizer must be 'adamw', got {train_cfg.optimizer!r}")
    groups = param_groups(model, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    # The fused CUDA kernel (one launch for every tensor) where all trainable weights are on the GPU.
    fused = all(p.is_cuda for g in groups for p in g["params"]) and any(g["params"] for g in groups)
    return torch.optim.AdamW(
        groups, lr=train_cfg.lr, betas=tuple(train_cfg.adam_betas), eps=train_cfg.adam_eps, fused=fused or None
    )


def base_factor(step: int, schedule: str, warmup: int, total: int, min_ratio: float) -> float:
    """Warmup then constant / linear decay / cosine decay to `min_ratio` of the peak."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


def jagged_factor(step: int, restart_every: int, rewarm: int, **base) -> float:
    """ReLoRA's jagged schedule: after each restart a linear re-warm up to the base schedule's value."""
    factor = base_factor(step, **base)
    if restart_every and rewarm and step >= restart_every:
        since = step % restart_every
        if since < rewarm:
            factor *= (since + 1) / rewarm
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg, restart_every: int, rewarm: int, total: int) -> LambdaLR:
    """LambdaLR over `total` steps; it scales each group's own initial lr, so LoRA+ ratios survive
    schedule and re-warm."""
    if train_cfg.schedule not in SCHEDULES:
        raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {train_cfg.schedule!r}")
    factor = partial(
        jagged_factor,
        restart_every=restart_every,
        rewarm=rewarm,
        schedule=train_cfg.schedule,
        warmup=train_cfg.warmup_steps,
        total=total,
        min_ratio=train_cfg.min_lr_ratio,
    )
    return LambdaLR(optimizer, factor)

"""Optimizer-side helpers the trainer calls: parameter groups (LoRA+ learning-rate ratios, decay vs.
no-decay) and the optimizer-state reset that follows a ReLoRA / ReMoRA restart."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .inject import adapter_layers

NO_DECAY_TOKENS = ("bias", "norm")


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Trainable parameters grouped by (learning-rate factor, decay). Each group records its factor as
    `lr_ratio` so schedulers and restarts can keep the ratios (LoRA+: B at lr * lambda)."""
    factors: dict[int, float] = {}
    for _, layer in adapter_layers(model):
        for pname, factor in layer.config.lr_multipliers().items():
            factors[id(getattr(layer, pname))] = factor
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        decays = param.dim() >= 2 and not any(t in name.lower() for t in NO_DECAY_TOKENS)
        groups.setdefault((factors.get(id(param), 1.0), decays), []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters: check the method's target_modules")
    return [
        {"params": params, "lr": lr * factor, "lr_ratio": factor, "weight_decay": weight_decay if decays else 0.0}
        for (factor, decays), params in sorted(groups.items())
    ]


def restart_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, layer in adapter_layers(model) for p in layer.restart_parameters()]


@torch.no_grad()
def reset_optimizer_state(
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    mode: str = "full",
    keep: float = 0.0,
) -> int:
    """Reset the moment estimates of `params`: zero them ("full"), or keep only the `keep` fraction of
    largest-magnitude entries of each ("magnitude", ReLoRA's pruning). Step counters are kept.
    Returns how many state tensors were touched."""
    check_reset_mode(mode)
    touched = 0
    for param in params:
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, value in state.items():
            if key == "step" or not torch.is_tensor(value) or value.shape != param.shape:
                continue
            prune_moment_(value, mode, keep)
            touched += 1
    return touched


def check_reset_mode(mode: str) -> None:
    if mode not in ("full", "magnitude"):
        raise ValueError(f"optimizer reset mode must be 'full' or 'magnitude', got {mode!r}")


@torch.no_grad()
def prune_moment_(value: torch.Tensor, mode: str, keep: float) -> torch.Tensor:
    """In place: zero one moment tensor ("full"), or keep only its `keep` fraction of largest-magnitude
    entries ("magnitude"). Shared by the plain reset above and the sharded one (mora.training.zero)."""
    n_keep = int(value.numel() * keep) if mode == "magnitude" else 0
    if n_keep <= 0:
        value.zero_()
    elif n_keep < value.numel():
        magnitude = value.abs().flatten().float()
        threshold = magnitude.kthvalue(value.numel() - n_keep).values
        value.mul_((value.abs().float() > threshold).to(value.dtype))
    return value

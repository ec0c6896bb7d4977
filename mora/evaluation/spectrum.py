"""Spectrum of the learned update (paper Sec. 6.1, Figure 5): for every adapted projection, the singular
values of ΔW = W_final - W_initial; the number above 0.1, averaged over layers per module type
(q, k, v, o, up, down, gate), following ReLoRA's analysis.

ΔW is taken between weights, never from adapter tensors, so every method is measured the same way:
FFT, LoRA-like layers merged at the end, and ReLoRA / ReMoRA whose merges accumulate in W.
Before training, the spectrum benchmark's hook (`mora.evaluate.before_training`) snapshots the initial
weights of the projections (`initial_weights.safetensors`); `mora.evaluate` compares them with `merged/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..adapters import adapter_layers

THRESHOLD = 0.1
MODULE_TYPES = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "up_proj": "up",
    "down_proj": "down",
    "gate_proj": "gate",
}
TYPE_ORDER = ("q", "k", "v", "o", "up", "down", "gate")
SNAPSHOT_NAME = "initial_weights.safetensors"


def module_type(name: str) -> str | None:
    """'model.layers.3.self_attn.q_proj' (or its '.weight') -> 'q'; None for other modules."""
    parts = name.split(".")
    if parts[-1] == "weight":
        parts = parts[:-1]
    return MODULE_TYPES.get(parts[-1]) if parts else None


def projection_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """{module name: weight} for every q/k/v/o/up/down/gate projection, whether plain or wrapped in an
    adapter layer (then its frozen base weight)."""
    wrapped = {name: layer.base.weight for name, layer in adapter_layers(model)}
    weights = {}
    for name, module in model.named_modules():
        if module_type(name) is None:
            continue
        if name in wrapped:
            weights[name] = wrapped[name]
        elif isinstance(module, nn.Linear):
            weights[name] = module.weight
    return weights


def save_snapshot(model: nn.Module, path: str | Path) -> Path:
    """Write the current projection weights (float32, CPU) to `path` (safetensors)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {name: w.detach().to("cpu", torch.float32).contiguous() for name, w in projection_weights(model).items()}
    if not state:
        raise ValueError(f"{type(model).__name__} has no q/k/v/o/up/down/gate projections to snapshot")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    return path


def snapshot_initial_weights(model: nn.Module, run_path: Path) -> None:
    """The run's snapshot, unless it has one (a resumed run keeps the weights it started from)."""
    from ..runs import share_files

    path = Path(run_path) / SNAPSHOT_NAME
    if not path.is_file():
        save_snapshot(model, path)
        share_files(path)


def load_snapshot(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def count_above(delta: torch.Tensor, threshold: float = THRESHOLD) -> tuple[int, torch.Tensor]:
    """(number of singular values > threshold, all singular values in descending order)."""
    values = torch.linalg.svdvals(delta.detach().to(torch.float32))
    return int((values > threshold).sum()), values


def spectrum(initial: Mapping[str, torch.Tensor], final: Mapping[str, torch.Tensor], threshold: float = THRESHOLD,
             keep_values: int = 32) -> dict:
    """Per module: count of singular values of (final - initial) above `threshold`, its shape and its
    largest `keep_values` singular values; per module type: the mean count over layers."""
    missing = sorted(set(initial) - set(final))
    if missing:
        raise ValueError(f"final weights lack {len(missing)} snapshotted module(s), e.g. {missing[:3]}")
    modules = {}
    for name in sorted(initial):
        kind = module_type(name)
        if kind is None:
            continue
        before, after = initial[name], final[name]
        if before.shape != after.shape:
            raise ValueError(f"{name}: initial weight {tuple(before.shape)} vs final {tuple(after.shape)}")
        count, values = count_above(after.to(torch.float32) - before.to(torch.float32), threshold)
        modules[name] = {"type": kind, "count": count, "shape": list(before.shape),
                         "top": [round(float(v), 6) for v in values[:keep_values]]}
    by_type: dict[str, list[int]] = {}
    for entry in modules.values():
        by_type.setdefault(entry["type"], []).append(entry["count"])
    return {
        "threshold": threshold,
        "by_type": {t: sum(by_type[t]) / len(by_type[t]) for t in TYPE_ORDER if t in by_type},
        "layers": {t: len(by_type[t]) for t in TYPE_ORDER if t in by_type},
        "modules": modules,
    }


def final_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Projection weights of a (merged, plain) model, keyed like `projection_weights`."""
    return {name: w.detach().to("cpu") for name, w in projection_weights(model).items()}

"""Choosing between an adapter layer's fused path and its reference path, per call.

`fast_forward(layer, x)` returns the fused path's output, or None when the reference path must run.
The fused path is taken only where it computes exactly the reference's function:

* mode: `MORA_FAST_PATH` / `set_fast_path`: "auto" (default: inputs on CUDA), "always" (any device;
  tests use it to run the fused Functions on the CPU), "off"; a layer with `fast_path = False` never
  takes it;
* the layer is exactly LoRALayer (lora, loraplus, asylora, relora), DoRALayer or MoRALayer (a subclass
  may change the maths, so it keeps the reference path);
* no active dropout, no autocast, the base frozen (weight and bias), one dtype for x, the base and
  the adapter (`fp32: true` adapters on a bf16 base keep the reference path);
* MoRA rotation/decouple with `overflow: fold` and more flat outputs than d keeps the reference path.
"""

from __future__ import annotations

import os

import torch

from .common import compiling
from .lora import dora_forward, lora_forward
from .mora import mora_forward

MODES = ("auto", "always", "off")

_mode = os.environ.get("MORA_FAST_PATH", "auto").strip().lower() or "auto"
if _mode not in MODES:
    raise ValueError(f"MORA_FAST_PATH must be one of {MODES}, got {_mode!r}")

# How often each fused path ran (reset freely; the agreement check uses it to prove the path was taken).
calls: dict[str, int] = {}


def set_fast_path(mode: str) -> str:
    """Set the mode for the whole process; returns the previous one."""
    global _mode
    mode = mode.strip().lower()
    if mode not in MODES:
        raise ValueError(f"fast path mode must be one of {MODES}, got {mode!r}")
    old, _mode = _mode, mode
    return old


def fast_path_mode() -> str:
    return _mode


class fast_path:
    """Context manager: `with fast_path("always"): ...`."""

    def __init__(self, mode: str):
        self.mode = mode

    def __enter__(self):
        self._old = set_fast_path(self.mode)
        return self

    def __exit__(self, *exc):
        set_fast_path(self._old)
        return False


# By class name (exact classes only; resolved without importing mora.adapters, which imports us).
_HANDLERS = {
    "LoRALayer": ("lora", lora_forward),
    "DoRALayer": ("dora", dora_forward),
    "MoRALayer": ("mora", mora_forward),
}


def _handler(layer):
    cls = type(layer)
    if not cls.__module__.startswith("mora.adapters."):
        return None
    return _HANDLERS.get(cls.__name__)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - older torch
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def supported(layer, x: torch.Tensor) -> bool:
    """Whether the fused path applies to this layer and input (mode and per-layer switch included)."""
    if _mode == "off" or getattr(layer, "fast_path", None) is False or layer.merged:
        return False
    if _mode == "auto" and x.device.type != "cuda":
        return False
    if _handler(layer) is None:
        return False
    base = layer.base
    weight = base.weight
    if weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return False
    if x.dtype != weight.dtype or layer.adapter_dtype != weight.dtype or x.device != weight.device:
        return False
    if x.dim() < 1 or x.shape[-1] != layer.in_features or x.numel() == 0:
        return False
    if layer.training and not isinstance(layer.dropout, torch.nn.Identity) and layer.dropout.p > 0:
        return False
    if not compiling() and _autocast_on(x.device.type):
        return False
    return True


def fast_forward(layer, x: torch.Tensor) -> torch.Tensor | None:
    if not supported(layer, x):
        return None
    name, handler = _handler(layer)
    out = handler(layer, x)
    if out is not None and not compiling():
        calls[name] = calls.get(name, 0) + 1
    return out

"""Choosing between an adapter layer's fused path and its reference path, per call.

`fast_forward(layer, x)` returns the fused path's output, or None when the reference path must run.
The fused path is taken only where it computes the reference's function:

* mode: `MORA_FAST_PATH` / `set_fast_path`: "auto" (default: inputs on CUDA), "always" (any device;
  tests use it to run the fused Functions on the CPU), "off"; a layer with `fast_path = False` never
  takes it;
* the layer's own class defines `fused_forward(x, dtype)` (LoRALayer, DoRALayer, MoRALayer call the
  Functions in lora.py and mora.py); a subclass that does not define its own keeps the reference path,
  since it may change the maths;
* no active dropout, the base frozen (weight and bias);
* the compute dtype is autocast's where autocast is on (x, W0 and the fp32 adapter weights are cast to
  it, as autocast would cast them for the reference's matmuls; gradients reach the fp32 weights
  through the casts), else x's, which must then be W0's;
* MoRA rotation/decouple with `overflow: fold` and more flat outputs than d keeps the reference path.

Every decision is counted per method and path (`path_counts()`; `mora.train` records it in
metrics.json), so a silent fallback shows. Under torch.compile the decision is made, and counted,
once per traced call ("traced" counts), not per step.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter

import torch

from .common import compiling

MODES = ("auto", "always", "off")

_mode = os.environ.get("MORA_FAST_PATH", "auto").strip().lower() or "auto"
if _mode not in MODES:
    raise ValueError(f"MORA_FAST_PATH must be one of {MODES}, got {_mode!r}")

# (method, "fused" | "reference") -> eager calls; `traced` the same for calls traced by torch.compile.
# Reset freely; tests and the agreement check use them to prove which path ran.
calls: Counter = Counter()
traced: Counter = Counter()


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


@contextlib.contextmanager
def fast_path(mode: str):
    """`with fast_path("always"): ...`: the mode inside the block, the previous one restored after."""
    old = set_fast_path(mode)
    try:
        yield
    finally:
        set_fast_path(old)


def _handler(layer):
    """The fused path the layer's own class declares (not one inherited: see the module docstring)."""
    return vars(type(layer)).get("fused_forward")


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def compute_dtype(layer, x: torch.Tensor) -> torch.dtype | None:
    """The dtype the fused path computes in for this layer and input, or None where it does not apply
    (mode and per-layer switch included)."""
    if _mode == "off" or getattr(layer, "fast_path", None) is False or layer.merged:
        return None
    if _mode == "auto" and x.device.type != "cuda":
        return None
    if _handler(layer) is None:
        return None
    base = layer.base
    weight = base.weight
    if weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return None
    if x.device != weight.device or x.dim() < 1 or x.shape[-1] != layer.in_features or x.numel() == 0:
        return None
    if layer.training and not isinstance(layer.dropout, torch.nn.Identity) and layer.dropout.p > 0:
        return None
    autocast = _autocast_dtype(x.device.type)
    if autocast is not None:
        return autocast
    return x.dtype if x.dtype == weight.dtype else None


def supported(layer, x: torch.Tensor) -> bool:
    """Whether the fused path applies to this layer and input."""
    return compute_dtype(layer, x) is not None


@torch._dynamo.assume_constant_result
def _count_traced(method: str, path: str) -> bool:
    """Runs once per traced call (its result is baked into the graph), so compiled runs are counted too."""
    traced[(method, path)] += 1
    return True


def _count(layer, path: str) -> None:
    if compiling():
        _count_traced(layer.config.method, path)
    else:
        calls[(layer.config.method, path)] += 1


def fast_forward(layer, x: torch.Tensor) -> torch.Tensor | None:
    dtype = compute_dtype(layer, x)
    out = None
    if dtype is not None:
        handler = _handler(layer)
        # The Functions run on operands already in `dtype`; autocast off keeps their wide reductions wide.
        off = torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) else None
        with off or contextlib.nullcontext():
            out = handler(layer, x.to(dtype), dtype)
    _count(layer, "reference" if out is None else "fused")
    return out


def fused_calls() -> int:
    """Eager calls that took a fused path so far."""
    return sum(n for (_, path), n in calls.items() if path == "fused")


def path_counts() -> dict[str, dict[str, int]]:
    """{method: {"fused": n, "reference": m, "fused_traced": ..., "reference_traced": ...}}, non-zero only."""
    out: dict[str, dict[str, int]] = {}
    for counter, suffix in ((calls, ""), (traced, "_traced")):
        for (method, path), n in sorted(counter.items()):
            if n:
                out.setdefault(method, {})[path + suffix] = n
    return out


def reset_counts() -> None:
    calls.clear()
    traced.clear()

"""Helpers shared by the fused adapter paths: which formulation to trace, and buffer-reusing GEMMs.

Every fused path has two formulations of the same arithmetic:

* eager (the default outside torch.compile): the adapter's contribution is written into a fresh
  buffer and the frozen GEMM accumulates onto it in place (`E.addmm_(x, W.t())`, cuBLAS with
  beta = 1), so no separate "base + delta" pass over the output is needed;
* functional (chosen while torch.compile traces, or forced for tests): out-of-place ops only; the
  Function computes the adapter's contribution alone (custom backward, small saved tensors) and the
  frozen layer's output is added outside it, so inductor fuses that add into the consumer's kernel
  (spelling a rank-8 product as 8 broadcast multiply-adds for inductor was measured: far slower).

Both are plain torch; tests run each against the adapter layers' reference path.
"""

from __future__ import annotations

import contextlib

import torch

_force_functional = False


def compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()  # pragma: no cover - torch < 2.3


def functional() -> bool:
    """True when the out-of-place formulation must be used (torch.compile tracing, or forced)."""
    return _force_functional or compiling()


@contextlib.contextmanager
def force_functional(enabled: bool = True):
    """Run the functional formulation eagerly inside the block (tests and agreement checks)."""
    global _force_functional
    old, _force_functional = _force_functional, enabled
    try:
        yield
    finally:
        _force_functional = old


def finish(delta: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Eager: `x2 @ weight.T + bias + delta`, the frozen GEMM accumulating onto `delta`'s buffer (which
    the caller owns and never reuses). Functional: `delta` alone; the caller adds the frozen layer's
    output outside the autograd Function, in the layer's own shape, where inductor fuses the add into
    the consumer (an add inside, on 2-D tensors, becomes an addmm that first copies `delta`)."""
    if functional():
        return delta
    delta.addmm_(x2, weight.t())
    if bias is not None:
        delta.add_(bias)
    return delta


def finish_grad(delta: torch.Tensor, gy: torch.Tensor, weight: torch.Tensor, functional_fwd: bool) -> torch.Tensor:
    """Eager: `gy @ weight + delta` (the input gradient) accumulated onto `delta`'s buffer.
    Functional: `delta` alone (autograd of the frozen layer supplies `gy @ weight`). The choice is the
    forward's (`ctx.functional`), since the backward may run outside the context that chose it."""
    if functional_fwd:
        return delta
    return delta.addmm_(gy, weight)


def with_base(y2: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The layer's output from a Function's 2-D result: adds the frozen layer in functional mode."""
    y = y2.view(*x.shape[:-1], y2.shape[-1])
    if functional():
        y = torch.nn.functional.linear(x, weight, bias) + y
    return y


def frozen(base, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The frozen layer's weight and bias in the compute dtype (no copy when they already have it)."""
    bias = base.bias
    return base.weight.to(dtype), None if bias is None else bias.to(dtype)


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype for reductions over t: fp32 for half types, t's own for fp32/fp64."""
    return torch.promote_types(t.dtype, torch.float32)


def pad_to(n: int, multiple: int = 8) -> int:
    return -(-n // multiple) * multiple


def pad_cols(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the last dim of a 2-D tensor to `width` (a no-op when it already has it)."""
    extra = width - t.shape[-1]
    return torch.nn.functional.pad(t, (0, extra)) if extra else t


def pad_square(m: torch.Tensor, size: int) -> torch.Tensor:
    extra = size - m.shape[0]
    return torch.nn.functional.pad(m, (0, extra, 0, extra)) if extra else m

"""Helpers shared by the fused adapter paths: which formulation to trace, and buffer-reusing GEMMs.

Every fused path has two formulations of the same arithmetic:

* eager (the default outside torch.compile): the adapter's contribution is written into a fresh
  buffer and the frozen GEMM accumulates onto it in place (`E.addmm_(x, W.t())`, cuBLAS with
  beta = 1), so no separate "base + delta" pass over the output is needed;
* functional (chosen while torch.compile traces, or forced for tests): out-of-place ops only, with
  the adapter's contribution written as pointwise/reshaping expressions that inductor fuses into
  the neighbouring kernels (the add of the delta lands in the consumer's kernel).

Both are plain torch; tests run each against the adapter layers' reference path.
"""

from __future__ import annotations

import torch

# Rank up to which a rank-r product `u @ V` (u: (n, r)) is spelled as r broadcast multiply-adds in
# the functional formulation, so that inductor can fuse it into a consumer instead of calling a GEMM.
UNROLL_MAX_RANK = 16

_force_functional = False


def compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()  # pragma: no cover - torch < 2.3


def functional() -> bool:
    """True when the out-of-place formulation must be used (torch.compile tracing, or forced)."""
    return _force_functional or compiling()


class force_functional:
    """Context manager: run the functional formulation eagerly (tests and agreement checks)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def __enter__(self):
        global _force_functional
        self._old = _force_functional
        _force_functional = self.enabled
        return self

    def __exit__(self, *exc):
        global _force_functional
        _force_functional = self._old
        return False


def lowrank(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`u @ v` for u (n, r), v (r, m); unrolled into r multiply-adds when tracing for inductor."""
    r = u.shape[1]
    if functional() and r <= UNROLL_MAX_RANK:
        out = u[:, 0:1] * v[0]
        for i in range(1, r):
            out = out + u[:, i : i + 1] * v[i]
        return out
    return u @ v


def finish(delta: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`x2 @ weight.T + bias + delta`: in eager mode the frozen GEMM accumulates onto `delta`'s buffer
    (which the caller owns and never reuses); traced, it is an out-of-place sum inductor can fuse."""
    if functional():
        return torch.nn.functional.linear(x2, weight, bias) + delta
    delta.addmm_(x2, weight.t())
    if bias is not None:
        delta.add_(bias)
    return delta


def finish_grad(delta: torch.Tensor, gy: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`gy @ weight + delta` (the input gradient), accumulating onto `delta`'s buffer in eager mode."""
    if functional():
        return gy @ weight + delta
    return delta.addmm_(gy, weight)


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

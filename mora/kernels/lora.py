"""Fused LoRA and DoRA training paths (custom autograd Functions over cuBLAS GEMMs).

LoRA, `y = x W0^T + b + s (x A^T) B^T`:
  forward   u = x A^T (one pass over x); E = u (sB)^T; y = E.addmm_(x, W0^T) (cuBLAS accumulates the
            frozen GEMM onto E, no separate add pass). Saves x (only if A trains), u (M x r).
  backward  gu = s gy B; gB = s gy^T u; gA = gu^T x; gx = (gu A).addmm_(gy, W0).
DoRA, `y = g * (x W0^T + s (x A^T) B^T) + b`, `g = m / ||W0 + s B A||_row` (norm detached):
  the row norm comes from ||W0||^2 (cached while W0 is unchanged), W0 A^T (d x r) and A A^T (r x r),
  never from a dense W0 + s B A; backward gets dL/dm from the saved output (y / m = pre-scale / norm).
Under torch.compile (functional formulation, see common.py) the Functions return the low-rank term
alone and the frozen output is added (and, for DoRA, scaled) outside them, where inductor fuses it.

The plain-torch twins these are tested against are the layers' reference paths
(`LoRALayer.adapted_forward`, `DoRALayer.adapted_forward`): tests/test_kernels.py and
bench/check_fast.py compare outputs and every gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fused_gemm
from .common import acc_dtype, finish, finish_grad, frozen, functional, with_base
from .fused_gemm import fused_mm


class LoRAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, A, B, scaling, flags):
        need_x, need_A, need_B = flags
        u = x2 @ A.t()
        y = finish(torch.mm(u, (B * scaling).t()), x2, weight, bias)
        ctx.scaling, ctx.flags, ctx.functional = scaling, flags, functional()
        ctx.save_for_backward(x2 if need_A else None, weight, A, B, u if need_B else None)
        return y

    @staticmethod
    def backward(ctx, gy):
        x2, weight, A, B, u = ctx.saved_tensors
        need_x, need_A, need_B = ctx.flags
        gx, gA, gB = _lora_backward(gy, x2, weight, A, B, u, ctx.scaling, need_x, need_A, need_B, ctx.functional)
        return gx, None, None, gA, gB, None, None


def _lora_backward(gy, x2, weight, A, B, u, scaling, need_x, need_A, need_B, functional_fwd):
    gx = gA = gB = None
    if need_x or need_A:
        gu = (gy @ B) * scaling
        if need_A:
            gA = gu.t() @ x2
        if need_x:
            gx = finish_grad(torch.mm(gu, A), gy, weight, functional_fwd)
    if need_B:
        gB = (gy.t() @ u) * scaling
    return gx, gA, gB


class LoRAFusedFunction(torch.autograd.Function):
    """LoRA with the low-rank term in the frozen GEMM's epilogue (Triton, fused_gemm.py), forward and
    dL/dx alike: y = x W0^T + u (sB)^T + b and gx = gy W0 + gu A, each one kernel writing its output once.
    Eager and traced (the kernel is then an opaque custom op) run the same code."""

    @staticmethod
    def forward(ctx, x2, weight, bias, A, B, scaling, flags):
        need_x, need_A, need_B = flags
        u = x2 @ A.t()
        y = fused_mm(x2, weight, False, u=u, v=(B * scaling).t(), bias=bias)
        ctx.scaling, ctx.flags = scaling, flags
        ctx.save_for_backward(x2 if need_A else None, weight, A, B, u if need_B else None)
        return y

    @staticmethod
    def backward(ctx, gy):
        x2, weight, A, B, u = ctx.saved_tensors
        need_x, need_A, need_B = ctx.flags
        gx, gA, gB = _lora_fused_backward(gy, x2, weight, A, B, u, ctx.scaling, need_x, need_A, need_B)
        return gx, None, None, gA, gB, None, None


def _lora_fused_backward(gy, x2, weight, A, B, u, scaling, need_x, need_A, need_B):
    gx = gA = gB = None
    if need_x or need_A:
        gu = (gy @ B) * scaling
        if need_A:
            gA = gu.t() @ x2
        if need_x:
            gx = fused_mm(gy, weight, True, u=gu, v=A)
    if need_B:
        gB = (gy.t() @ u) * scaling
    return gx, gA, gB


def lora_forward(x: torch.Tensor, base, A: torch.Tensor, B: torch.Tensor, scaling: float,
                 dtype: torch.dtype) -> torch.Tensor:
    """x already in `dtype`; A and B are cast to it (their gradients flow back to the fp32 weights)."""
    weight, bias = frozen(base, dtype)
    x2 = x.reshape(-1, weight.shape[1])
    A, B = A.to(dtype), B.to(dtype)
    flags = (x.requires_grad, A.requires_grad, B.requires_grad)
    if fused_gemm.usable(x2, weight):
        y = LoRAFusedFunction.apply(x2, weight, bias, A, B, float(scaling), flags)
        return y.view(*x.shape[:-1], weight.shape[0])
    y = LoRAFunction.apply(x2, weight, bias, A, B, float(scaling), flags)
    return with_base(y, x, weight, bias)


# -- DoRA ------------------------------------------------------------------------------------------


class WeightNorms:
    """||W0||^2 per output row (fp32 or wider), kept by a DoRA layer until W0 is modified or replaced;
    computed afresh while torch.compile traces (the functional formulation)."""

    def __init__(self):
        self.key, self.value = None, None

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        if functional():
            return torch.linalg.vector_norm(weight, dim=1, dtype=acc_dtype(weight)).square()
        key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape), weight.device)
        if key != self.key:
            with torch.no_grad():
                self.value = torch.linalg.vector_norm(weight, dim=1, dtype=acc_dtype(weight)).square()
            self.key = key
        return self.value


@torch.no_grad()
def dora_row_norm(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, s: float, w_sq: torch.Tensor) -> torch.Tensor:
    """||W0 + s B A|| per output row (fp32, detached) without forming the dense (d, k) sum, from
    w_sq = ||W0||^2: w_sq + 2 s <W0 A^T, B>_row + s^2 <B (A A^T), B>_row. W0 A^T runs in W0's dtype (A
    rounded to it: a second pass over W0 in fp32 would cost more than the whole adapter); the rest in fp32."""
    acc = acc_dtype(weight)
    wa = (weight @ A.to(weight.dtype).t()).to(acc)
    bs = B.to(acc) * s
    a32 = A.to(acc)
    gram = a32 @ a32.t()
    sq = w_sq + 2.0 * (wa * bs).sum(1) + ((bs @ gram) * bs).sum(1)
    return sq.clamp_min(0.0).sqrt()


class DoRAFunction(torch.autograd.Function):
    """Eager only (the functional formulation composes LoRAFunction with autograd ops)."""

    @staticmethod
    def forward(ctx, x2, weight, bias, A, B, m, norm, scaling, flags):
        need_x, need_A, need_B, need_m = flags
        g = m.to(norm.dtype) / norm
        u = x2 @ A.t()
        y = finish(torch.mm(u, (B * scaling).t()), x2, weight, None)
        y.mul_(g)
        ctx.scaling = scaling
        ctx.flags = flags
        ctx.save_for_backward(
            x2 if need_A else None, weight, A, B, u if need_B else None, g, m, y if need_m else None
        )
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, gy):
        x2, weight, A, B, u, g, m, y = ctx.saved_tensors
        need_x, need_A, need_B, need_m = ctx.flags
        gm, gyg = _dora_scale_grads(gy, y, g, m, need_m)
        gx, gA, gB = _lora_backward(gyg, x2, weight, A, B, u, ctx.scaling, need_x, need_A, need_B, False)
        return gx, None, None, gA, gB, gm, None, None, None


def _dora_scale_grads(gy, y, g, m, need_m):
    """dL/dm, and the output gradient through the column scale g = m / norm (what the LoRA backward
    then takes): shared by DoRA's cuBLAS and Triton formulations."""
    gm = None
    if need_m:
        # d y / d m = pre-scale output / norm = y / m.
        gm = ((gy * y).sum(0, dtype=acc_dtype(gy)) / m.to(acc_dtype(gy))).to(m.dtype)
    return gm, gy * g.to(gy.dtype)


class DoRAFusedFunction(torch.autograd.Function):
    """DoRA with the low-rank term and the column scale g = m / norm in the frozen GEMM's epilogue
    (y = g * (x W0^T + u (sB)^T), one kernel), and dL/dx = (g gy) W0 + gu A in one kernel too."""

    @staticmethod
    def forward(ctx, x2, weight, bias, A, B, m, norm, scaling, flags):
        need_x, need_A, need_B, need_m = flags
        g = m.to(norm.dtype) / norm
        u = x2 @ A.t()
        y = fused_mm(x2, weight, False, u=u, v=(B * scaling).t(), col_scale=g)
        ctx.scaling = scaling
        ctx.flags = flags
        ctx.save_for_backward(
            x2 if need_A else None, weight, A, B, u if need_B else None, g, m, y if need_m else None
        )
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, gy):
        x2, weight, A, B, u, g, m, y = ctx.saved_tensors
        need_x, need_A, need_B, need_m = ctx.flags
        gm, gyg = _dora_scale_grads(gy, y, g, m, need_m)
        gx, gA, gB = _lora_fused_backward(gyg, x2, weight, A, B, u, ctx.scaling, need_x, need_A, need_B)
        return gx, None, None, gA, gB, gm, None, None, None


def dora_forward(x: torch.Tensor, base, A: torch.Tensor, B: torch.Tensor, m: torch.Tensor, scaling: float,
                 norms: WeightNorms, dtype: torch.dtype) -> torch.Tensor:
    """x already in `dtype`; A and B are cast to it, the magnitude m and the row norm stay fp32."""
    weight, bias = frozen(base, dtype)
    x2 = x.reshape(-1, weight.shape[1])
    norm = dora_row_norm(base.weight, A, B, float(scaling), norms(base.weight))
    A, B = A.to(dtype), B.to(dtype)
    scaling = float(scaling)
    if fused_gemm.usable(x2, weight):
        flags = (x.requires_grad, A.requires_grad, B.requires_grad, m.requires_grad)
        y = DoRAFusedFunction.apply(x2, weight, bias, A, B, m, norm, scaling, flags)
        return y.view(*x.shape[:-1], weight.shape[0])
    if functional():
        flags = (x.requires_grad, A.requires_grad, B.requires_grad)
        delta = LoRAFunction.apply(x2, weight, None, A, B, scaling, flags)
        g = (m.to(norm.dtype) / norm).to(x.dtype)  # in the compute dtype, as the reference: bf16 saved tensors
        y = (F.linear(x, weight) + delta.view(*x.shape[:-1], -1)) * g
        return y if bias is None else y + bias
    flags = (x.requires_grad, A.requires_grad, B.requires_grad, m.requires_grad)
    y = DoRAFunction.apply(x2, weight, bias, A, B, m, norm, scaling, flags)
    return y.view(*x.shape[:-1], weight.shape[0])

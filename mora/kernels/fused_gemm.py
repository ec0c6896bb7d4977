"""One Triton GEMM with the adapter's term in its epilogue (Hopper and newer; optional).

    C = A @ op(B)  [+ U @ V]  [+ G[m, i1[n]] (+ G[m, i2[n]])]  [* s[n]]  [+ bias[n]]

op(B) = B^T for the forward (B = the frozen weight W, (N, K), as nn.Linear stores it) or B for the
input gradient (B = W, (K, N)). The low-rank term (LoRA, DoRA: U = x A^T, V = (s B)^T; and U = gu,
V = A for dL/dx) and the gathered term (MoRA sharing's decompression, w[:, n mod r̂] or its
contiguous grouping, and the adjoint of its compression for dL/dx) are added to the fp32 accumulator
before the one rounding to bf16, so the adapter's (M, N) term is never written to memory and no
separate "base + delta" pass runs. The frozen GEMM's operands are read through TMA tensor descriptors.

LoRA and DoRA use it by default; MoRA sharing's gather epilogue is opt-in (`MORA_TRITON_GATHER=1`),
since it measured slower than the cuBLAS formulation on the H200. Used only where `usable()` says so: Triton importable, a CUDA device of compute capability >= 9,
bf16/fp16, both GEMM dimensions multiples of 8 (TMA's 16-byte strides). Everything else, and every
machine without Triton (the CPU tests), keeps the cuBLAS formulations in lora.py / mora.py.
`MORA_TRITON=0` (or `set_enabled(False)`) switches it off. Under torch.compile the kernel is the opaque
custom op `mora::fused_mm`, so inductor schedules around it.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

try:  # Triton is optional: mora.kernels must import with torch alone
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    triton = tl = TensorDescriptor = None
    HAVE_TRITON = False

_enabled = os.environ.get("MORA_TRITON", "1").strip().lower() not in ("0", "off", "false", "no")
# MoRA sharing's gather epilogue is opt-in (MORA_TRITON_GATHER=1 / set_gather(True)): on the H200 its
# gathered (M, N) loads cost more than the passes they save (sharing r8 step 1.330 x the compiled frozen
# base with it, 1.136 with the cuBLAS formulation; bench/RESULTS.md, 2026-12-01).
_gather = os.environ.get("MORA_TRITON_GATHER", "0").strip().lower() in ("1", "on", "true", "yes")
_capable: dict[int, bool] = {}

# (BM, BN, BK, GROUP_M, num_warps, num_stages, persistent, warp_specialize); override with MORA_TRITON_CFG
# = "128,256,64,8,8,3,1,0". Chosen from the kernel benchmark on the H200 (bench/gemm_bench.py): persistent,
# no warp specialisation (a warp-specialised configuration hung there; never use WS=1 untested).
DEFAULT_CONFIG = (128, 256, 64, 8, 8, 3, True, False)


def _env_config():
    text = os.environ.get("MORA_TRITON_CFG", "").strip()
    if not text:
        return DEFAULT_CONFIG
    v = [int(t) for t in text.split(",")]
    return (v[0], v[1], v[2], v[3], v[4], v[5], bool(v[6]), bool(v[7]))


CONFIG = _env_config()


def set_enabled(flag: bool) -> bool:
    global _enabled
    old, _enabled = _enabled, bool(flag)
    return old


def set_gather(flag: bool) -> bool:
    """Whether MoRA sharing uses the gather epilogue (opt-in, see above); returns the previous value."""
    global _gather
    old, _gather = _gather, bool(flag)
    return old


def gather_on() -> bool:
    return _gather


class enabled:
    """Context manager: `with fused_gemm.enabled(False): ...` (agreement checks compare both);
    `gather=True/False` also sets sharing's opt-in gather epilogue for the block."""

    def __init__(self, flag: bool, gather: bool | None = None):
        self.flag, self.gather = flag, gather

    def __enter__(self):
        self._old = set_enabled(self.flag)
        self._old_gather = set_gather(self.gather) if self.gather is not None else None
        return self

    def __exit__(self, *exc):
        set_enabled(self._old)
        if self.gather is not None:
            set_gather(self._old_gather)
        return False


def usable(x2: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the Triton GEMM may run for this input and frozen weight (no data access: fine while tracing)."""
    if not (HAVE_TRITON and _enabled):
        return False
    if x2.device.type != "cuda" or weight.device != x2.device:
        return False
    if x2.dtype not in (torch.bfloat16, torch.float16) or weight.dtype != x2.dtype:
        return False
    if weight.dim() != 2 or weight.shape[0] % 8 or weight.shape[1] % 8 or x2.shape[0] == 0:
        return False
    idx = x2.device.index if x2.device.index is not None else torch.cuda.current_device()
    if idx not in _capable:
        _capable[idx] = torch.cuda.get_device_capability(idx)[0] >= 9
    return _capable[idx]


if HAVE_TRITON:

    @triton.jit
    def _fused_mm_kernel(
        a_desc, b_desc, c_ptr, u_ptr, v_ptr, g_ptr, i1_ptr, i2_ptr, cs_ptr, bias_ptr,
        M, N, K, R, num_progs,
        stride_cm, stride_um, stride_ur, stride_vr, stride_vn, stride_gm,
        B_KN: tl.constexpr, LOWRANK: tl.constexpr, RB: tl.constexpr, GATHER: tl.constexpr,
        COLSCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, WS: tl.constexpr,
    ):
        start = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BM)
        num_pid_n = tl.cdiv(N, BN)
        num_tiles = num_pid_m * num_pid_n
        k_tiles = tl.cdiv(K, BK)
        in_group = GROUP_M * num_pid_n
        for tile in tl.range(start, num_tiles, num_progs, warp_specialize=WS):
            group = tile // in_group
            first_m = group * GROUP_M
            size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
            pid_m = first_m + (tile % in_group) % size_m
            pid_n = (tile % in_group) // size_m
            off_m = pid_m * BM
            off_n = pid_n * BN
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for ki in range(k_tiles):
                off_k = ki * BK
                a = a_desc.load([off_m, off_k])
                if B_KN:
                    b = b_desc.load([off_k, off_n])
                    acc = tl.dot(a, b, acc)
                else:
                    b = b_desc.load([off_n, off_k])
                    acc = tl.dot(a, b.T, acc)
            rows = (off_m + tl.arange(0, BM)).to(tl.int64)
            cols = off_n + tl.arange(0, BN)
            rmask = rows < M
            cmask = cols < N
            if LOWRANK:
                rr = tl.arange(0, RB)
                for r0 in range(0, R, RB):
                    rk = r0 + rr
                    rkm = rk < R
                    u = tl.load(u_ptr + rows[:, None] * stride_um + rk[None, :] * stride_ur,
                                mask=rmask[:, None] & rkm[None, :], other=0.0)
                    v = tl.load(v_ptr + rk[:, None] * stride_vr + cols[None, :] * stride_vn,
                                mask=rkm[:, None] & cmask[None, :], other=0.0)
                    acc = tl.dot(u, v, acc)
            if GATHER >= 1:
                m2 = rmask[:, None] & cmask[None, :]
                i1 = tl.load(i1_ptr + cols, mask=cmask, other=0)
                acc += tl.load(g_ptr + rows[:, None] * stride_gm + i1[None, :], mask=m2, other=0.0).to(tl.float32)
                if GATHER == 2:
                    i2 = tl.load(i2_ptr + cols, mask=cmask, other=-1)
                    m3 = m2 & (i2 >= 0)[None, :]
                    i2c = tl.maximum(i2, 0)
                    acc += tl.load(g_ptr + rows[:, None] * stride_gm + i2c[None, :], mask=m3, other=0.0).to(tl.float32)
            if COLSCALE:
                acc = acc * tl.load(cs_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
            if HAS_BIAS:
                acc += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
            tl.store(c_ptr + rows[:, None] * stride_cm + cols[None, :], acc.to(c_ptr.dtype.element_ty),
                     mask=rmask[:, None] & cmask[None, :])


def _tma_ready(t: torch.Tensor) -> torch.Tensor:
    """A 2-D operand TMA can read: last dim contiguous, leading stride and base 16-byte aligned."""
    es = t.element_size()
    if t.stride(-1) != 1 or (t.stride(0) * es) % 16 or t.data_ptr() % 16:
        t = t.contiguous()
        if t.data_ptr() % 16:  # pragma: no cover - allocator always aligns fresh tensors
            t = t.clone()
    return t


_NUM_SMS: dict[int, int] = {}
launches = [0]  # kernel launches so far (benchmarks and checks read it to prove the kernel ran)


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":  # Triton's interpreter (CPU tests)
        return 3
    dev = device.index if device.index is not None else torch.cuda.current_device()
    if dev not in _NUM_SMS:
        _NUM_SMS[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
    return _NUM_SMS[dev]


# Used when a configuration fails to compile for some epilogue (shared memory, say): smaller tiles.
FALLBACK_CONFIG = (128, 128, 64, 8, 8, 3, True, False)
_failed: set = set()


def launch(a, b, b_kn, u=None, v=None, g=None, i1=None, i2=None, col_scale=None, bias=None, config=None):
    """C = a @ op(b) + epilogue terms (see the module docstring); a new (M, N) tensor in a's dtype."""
    config = config or CONFIG
    key = (config, bool(b_kn), u is not None, g is not None, i2 is not None, col_scale is not None, bias is not None)
    if key in _failed or config is None:
        config = FALLBACK_CONFIG
    elif key not in _launched_ok:
        try:
            out = _launch(a, b, b_kn, u, v, g, i1, i2, col_scale, bias, config)
            _launched_ok.add(key)
            return out
        except Exception as exc:  # compile-time resource limits; the fallback tiles must work
            if config == FALLBACK_CONFIG or "out of resource" not in str(exc).lower():
                raise
            _failed.add(key)
            config = FALLBACK_CONFIG
    return _launch(a, b, b_kn, u, v, g, i1, i2, col_scale, bias, config)


_launched_ok: set = set()


def _launch(a, b, b_kn, u, v, g, i1, i2, col_scale, bias, config):
    BM, BN, BK, GROUP_M, warps, stages, persistent, ws = config
    launches[0] += 1
    a = _tma_ready(a)
    b = _tma_ready(b)
    M, K = a.shape
    N = b.shape[1] if b_kn else b.shape[0]
    assert (b.shape[0] if b_kn else b.shape[1]) == K
    c = torch.empty(M, N, device=a.device, dtype=a.dtype)
    a_desc = TensorDescriptor.from_tensor(a, [BM, BK])
    b_desc = TensorDescriptor.from_tensor(b, [BK, BN] if b_kn else [BN, BK])
    dummy = c
    R = 0
    if u is not None:
        R = u.shape[1]
        u = u.to(a.dtype)
        v = v.to(a.dtype)
    gather = 0
    if g is not None:
        if g.stride(-1) != 1:
            g = g.contiguous()
        gather = 2 if i2 is not None else 1
    RB = 16 if R <= 16 else (32 if R <= 32 else 64)
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    progs = min(tiles, _num_sms(a.device)) if persistent else tiles
    _fused_mm_kernel[(progs,)](
        a_desc, b_desc, c,
        u if u is not None else dummy, v if v is not None else dummy,
        g if g is not None else dummy, i1 if i1 is not None else dummy, i2 if i2 is not None else dummy,
        col_scale if col_scale is not None else dummy, bias if bias is not None else dummy,
        M, N, K, R, progs,
        c.stride(0),
        u.stride(0) if u is not None else 0, u.stride(1) if u is not None else 0,
        v.stride(0) if v is not None else 0, v.stride(1) if v is not None else 0,
        g.stride(0) if g is not None else 0,
        B_KN=bool(b_kn), LOWRANK=u is not None, RB=RB, GATHER=gather,
        COLSCALE=col_scale is not None, HAS_BIAS=bias is not None,
        BM=BM, BN=BN, BK=BK, GROUP_M=GROUP_M, WS=bool(ws), num_warps=warps, num_stages=stages,
    )
    return c


# -- torch.compile: an opaque custom op around `launch` ------------------------------------------------

_op = None


def _custom_op():
    global _op
    if _op is None:
        @torch.library.custom_op("mora::fused_mm", mutates_args=())
        def fused_mm(a: Tensor, b: Tensor, b_kn: bool, u: Optional[Tensor], v: Optional[Tensor],
                     g: Optional[Tensor], i1: Optional[Tensor], i2: Optional[Tensor], col_scale: Optional[Tensor],
                     bias: Optional[Tensor]) -> Tensor:
            return launch(a, b, b_kn, u, v, g, i1, i2, col_scale, bias)

        @fused_mm.register_fake
        def _(a, b, b_kn, u, v, g, i1, i2, col_scale, bias):
            n = b.shape[1] if b_kn else b.shape[0]
            return a.new_empty(a.shape[0], n)

        _op = fused_mm
    return _op


def fused_mm(a, b, b_kn, u=None, v=None, g=None, i1=None, i2=None, col_scale=None, bias=None):
    """`launch` eagerly; the custom op while torch.compile traces (dynamo must not look inside Triton)."""
    from .common import compiling

    if compiling():
        return _custom_op()(a, b, b_kn, u, v, g, i1, i2, col_scale, bias)
    return launch(a, b, b_kn, u, v, g, i1, i2, col_scale, bias)


if HAVE_TRITON:
    _custom_op()  # register at import, before any graph is traced

"""Fused MoRA training paths: sharing (types 1-4), rotation / decouple (blocks), truncation.

What the reference path (`MoRALayer.delta` under autograd) spends, and what these do instead:

* sharing: the reference copies x to wrap-pad it (`cat`), materialises the tiled output, adds it in a
  separate pass and lets autograd save/undo each step. Here: compress x straight from views of it
  (one read, fp32 sums), the r̂ x r̂ GEMM on zero-padded aligned operands (r̂ = 348 or 1966 is not a
  multiple of 8, which cuBLAS runs on slow paths), decompress written into a fresh buffer on which the
  frozen GEMM accumulates. Only z = f_comp(x) (M x r̂) is saved, never x.
* rotation / decouple: the reference rotates a wrap-padded copy of x (two passes plus a copy) and
  truncates the flat result. Here the rotation is folded into per-block matrices W_b = M R_b (tiny:
  blocks x r̂ x r̂), one strided-batched GEMM reads the blocks of x in place, blocks whose outputs the
  truncation drops are never computed; the backward returns the small per-block products
  G_b = gflat_b^T x_b and autograd folds them back through W_b = M R_b: grad_M = sum_b G_b R_b^T.
* truncation: a GEMM on the first r̂ columns accumulated in place into the frozen output.

Every function has the eager (buffer-reusing) and the functional (torch.compile) formulation, see
common.py; tests compare both with `MoRALayer`'s reference path in float64. The layer's schemes
(mora.adapters.mora) call the entry points at the bottom with their geometry: `SharingGeometry`,
`BlockPlan`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import fused_gemm
from .common import acc_dtype, finish, finish_grad, frozen, functional, pad_cols, pad_square, pad_to, with_base
from .fused_gemm import fused_mm
from .mora_tables import SHARING_GROUPINGS, RopeTables

# -- column maps shared by sharing and the block kinds --------------------------------------------


def mod_sum(t: torch.Tensor, width: int) -> torch.Tensor:
    """fp32 (M, width): column c of t added into column c mod width (no wrap padding)."""
    rows, n = t.shape
    full, rem = divmod(n, width)
    if functional():
        out = t[:, : full * width].view(rows, full, width).sum(1, dtype=acc_dtype(t)) if full else None
        if rem:
            tail = F.pad(t[:, full * width :].to(acc_dtype(t)), (0, width - rem))
            out = tail if out is None else out + tail
        return out
    if full:
        out = t[:, : full * width].view(rows, full, width).sum(1, dtype=acc_dtype(t))
    else:
        out = t.new_zeros(rows, width, dtype=acc_dtype(t))
    if rem:
        out[:, :rem] += t[:, full * width :]
    return out


def tile_cols(w: torch.Tensor, n: int) -> torch.Tensor:
    """(M, n) with column o = w[:, o mod width]; a fresh buffer in eager mode."""
    rows, width = w.shape
    if functional():
        reps = -(-n // width)
        return w.repeat(1, reps)[:, :n] if reps > 1 else w[:, :n]
    out = w.new_empty(rows, n)
    full, rem = divmod(n, width)
    if full:
        out[:, : full * width].view(rows, full, width).copy_(w.unsqueeze(1).expand(rows, full, width))
    if rem:
        out[:, full * width :].copy_(w[:, :rem])
    return out


def group_sum(t: torch.Tensor, groups: int) -> torch.Tensor:
    """fp32 (M, groups): contiguous runs of columns summed (first n % groups runs one longer)."""
    rows, n = t.shape
    q, m = divmod(n, groups)
    cut = m * (q + 1)
    parts = []
    if m:
        parts.append(t[:, :cut].view(rows, m, q + 1).sum(2, dtype=acc_dtype(t)))
    if groups - m:
        if q:
            parts.append(t[:, cut:].view(rows, groups - m, q).sum(2, dtype=acc_dtype(t)))
        else:
            parts.append(t.new_zeros(rows, groups - m, dtype=acc_dtype(t)))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def group_repeat(w: torch.Tensor, n: int) -> torch.Tensor:
    """(M, n): each of the `groups` columns of w repeated over its contiguous run (inverse layout of group_sum)."""
    rows, groups = w.shape
    q, m = divmod(n, groups)
    cut = m * (q + 1)
    if functional():
        parts = []
        if m:
            parts.append(w[:, :m].unsqueeze(-1).expand(rows, m, q + 1).reshape(rows, cut))
        if q and groups - m:
            parts.append(w[:, m:].unsqueeze(-1).expand(rows, groups - m, q).reshape(rows, n - cut))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    out = w.new_empty(rows, n)
    if m:
        out[:, :cut].view(rows, m, q + 1).copy_(w[:, :m].unsqueeze(-1).expand(rows, m, q + 1))
    if q and groups - m:
        out[:, cut:].view(rows, groups - m, q).copy_(w[:, m:].unsqueeze(-1).expand(rows, groups - m, q))
    return out


# -- sharing (Eq. 6 and the contiguous groupings) -------------------------------------------------


@dataclass(frozen=True)
class SharingGeometry:
    """A sharing layer as its kernels see it: r̂, the wrap-padded inputs of a modulo compression (0 for a
    contiguous one), the two groupings (mora_tables.SHARING_GROUPINGS) and r̂ rounded up to a multiple
    of 8 (`width`: r̂ = 348 or 1966 is not one, which cuBLAS runs on slow paths)."""

    r_hat: int
    pad: int
    compress: str
    decompress: str
    width: int

    @classmethod
    def of(cls, sharing_type: int, r_hat: int, pad: int) -> SharingGeometry:
        compress, decompress = SHARING_GROUPINGS[sharing_type]
        return cls(r_hat, pad if compress == "modulo" else 0, compress, decompress, pad_to(r_hat))


def _compress(x2, r_hat, pad, cmode):
    if cmode == "contiguous":
        return group_sum(x2, r_hat)
    z = mod_sum(x2, r_hat)
    if pad:
        rem = r_hat - pad
        if functional():
            z = z + F.pad(x2[:, :pad].to(z.dtype), (rem, 0))
        else:
            z[:, rem:] += x2[:, :pad]
    return z


def _compress_t(gz, k, pad, cmode):
    """Adjoint of _compress: (M, r̂) -> (M, k)."""
    if cmode == "contiguous":
        return group_repeat(gz, k)
    out = tile_cols(gz, k)
    if pad:
        rem = gz.shape[1] - pad
        if functional():
            out = out + F.pad(gz[:, rem:], (0, k - pad))
        else:
            out[:, :pad] += gz[:, rem:]
    return out


def _decompress(w, d, dmode):
    return group_repeat(w, d) if dmode == "contiguous" else tile_cols(w, d)


def _decompress_t(gy, r_hat, dmode):
    return group_sum(gy, r_hat) if dmode == "contiguous" else mod_sum(gy, r_hat)


class SharingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, M, geo, flags):
        need_x, need_M = flags
        z = pad_cols(_compress(x2, geo.r_hat, geo.pad, geo.compress).to(x2.dtype), geo.width)
        w = (z @ pad_square(M, geo.width).t())[:, : geo.r_hat]
        y = finish(_decompress(w, weight.shape[0], geo.decompress), x2, weight, bias)
        ctx.geo, ctx.flags, ctx.functional = geo, flags, functional()
        ctx.save_for_backward(z if need_M else None, weight, M)
        return y

    @staticmethod
    def backward(ctx, gy):
        z, weight, M = ctx.saved_tensors
        geo = ctx.geo
        gM, gz = _sharing_adapter_grads(gy, z, M, geo, *ctx.flags)
        gx = None
        if gz is not None:
            gx = finish_grad(_compress_t(gz, weight.shape[1], geo.pad, geo.compress), gy, weight, ctx.functional)
        return gx, None, None, gM, None, None


def _sharing_adapter_grads(gy, z, M, geo, need_x, need_M):
    """dL/dM, and dL/dz (the gradient at the compressed input, before f_comp's adjoint): shared by the
    cuBLAS and the Triton formulations, which differ only in how dL/dx is assembled from dL/dz."""
    r_hat, width = geo.r_hat, geo.width
    gw = pad_cols(_decompress_t(gy, r_hat, geo.decompress).to(gy.dtype), width)
    gM = (gw.t() @ z)[:r_hat, :r_hat].contiguous() if need_M else None
    gz = (gw @ pad_square(M, width))[:, :r_hat] if need_x else None
    return gM, gz


def group_index(c: torch.Tensor, n: int, groups: int) -> torch.Tensor:
    """Group of column c (of n) in group_sum / group_repeat's layout: the first n % groups runs one longer."""
    q, m = divmod(n, groups)
    cut = m * (q + 1)
    return torch.where(c < cut, c // (q + 1), m + (c - cut) // max(q, 1))


def sharing_indices(geo: SharingGeometry, d: int, k: int, device) -> tuple:
    """int32 column maps for the fused GEMM's gather epilogue: i_dec (d,) with y[:, n] += w[:, i_dec[n]]
    (decompression), and i1, i2 (k,) with dL/dx[:, c] += gz[:, i1[c]] (+ gz[:, i2[c]] where i2[c] >= 0),
    the adjoint of the compression (i2: the wrap-padded first `pad` columns of the modulo grouping)."""
    r_hat, pad = geo.r_hat, geo.pad
    n = torch.arange(d, device=device)
    i_dec = group_index(n, d, r_hat) if geo.decompress == "contiguous" else n % r_hat
    c = torch.arange(k, device=device)
    i2 = None
    if geo.compress == "contiguous":
        i1 = group_index(c, k, r_hat)
    else:
        i1 = c % r_hat
        if pad:
            i2 = torch.where(c < pad, c + (r_hat - pad), -1).to(torch.int32)
    return i_dec.to(torch.int32), i1.to(torch.int32), i2


# Eager calls reuse the maps of a geometry (every layer of a type shares them); traced ones rebuild them.
_cached_sharing_indices = functools.lru_cache(maxsize=64)(sharing_indices)


class SharingFusedFunction(torch.autograd.Function):
    """Sharing with the decompression in the frozen GEMM's epilogue (Triton, fused_gemm.py): y = x W0^T +
    b + w[:, i_dec] with w = M f_comp(x) (M x r̂), and dL/dx = gy W0 + f_comp^T(gz) the same way.
    Opt-in (MORA_TRITON_GATHER=1): measured slower than SharingFunction on the H200 (bench/RESULTS.md)."""

    @staticmethod
    def forward(ctx, x2, weight, bias, M, geo, flags, i_dec, i1, i2):
        z = pad_cols(_compress(x2, geo.r_hat, geo.pad, geo.compress).to(x2.dtype), geo.width)
        w = (z @ pad_square(M, geo.width).t())[:, : geo.r_hat]
        y = fused_mm(x2, weight, False, g=w, i1=i_dec, bias=bias)
        ctx.geo, ctx.flags = geo, flags
        ctx.save_for_backward(z if flags[1] else None, weight, M, i1, i2)
        return y

    @staticmethod
    def backward(ctx, gy):
        z, weight, M, i1, i2 = ctx.saved_tensors
        gM, gz = _sharing_adapter_grads(gy, z, M, ctx.geo, *ctx.flags)
        gx = None if gz is None else fused_mm(gy, weight, True, g=gz, i1=i1, i2=i2)
        return gx, None, None, gM, None, None, None, None, None


# -- rotation / decouple (Eqs. 8 and 9) -------------------------------------------------------------


@dataclass(frozen=True)
class BlockPlan:
    """Static geometry of a rotation / decouple layer (d x k, blocks of r = r̂ inputs): `whole` blocks lie
    inside x, the last `rem` inputs and `pad` wrapped copies of the first make the last block; the
    first `width` flat outputs are kept (d, or all of them when fewer, then tiled up to d: `tile`),
    which the first `used` blocks produce, the first `n_batch` of them read in place by one batched
    GEMM; `rp` is r rounded up to a multiple of 8 where r is not one (see PaddedBlockFunction)."""

    r: int
    k: int
    d: int
    whole: int
    rem: int
    pad: int
    used: int
    width: int
    n_batch: int
    tile: bool
    rp: int

    @classmethod
    def of(cls, r_hat: int, in_features: int, out_features: int, pad: int, overflow: str) -> BlockPlan | None:
        """The plan, or None where the fused path does not apply (more flat outputs than d, folded)."""
        r, k, d = r_hat, in_features, out_features
        whole, rem = divmod(k, r)
        flat = (k + pad) // r * r
        if flat > d and overflow != "truncate":
            return None
        tile, width = (False, d) if flat >= d else (True, flat)
        used = -(-width // r)  # blocks whose outputs land in the first `width` flat positions
        n_batch = min(whole, width // r)  # leading blocks read in place from x with all r outputs kept
        # cuBLAS runs batched GEMMs whose block offsets are not 16-byte aligned (r̂ = 348, 1966) on slow
        # sm80 kernels; such r̂ go through a zero-padded blocked copy (r̂ rounded up to a multiple of 8).
        rp = pad_to(r) if r % 8 else r
        return cls(r, k, d, whole, rem, pad, used, width, n_batch, tile, rp)

    def extra_blocks(self):
        """(block, outputs kept, wrapped?) of the used blocks past the batched ones."""
        for b in range(self.n_batch, self.used):
            yield b, min(self.r, self.width - b * self.r), b >= self.whole


def block_weights(M: torch.Tensor, used: int, tables) -> torch.Tensor:
    """(used, r̂, r̂) in M's dtype: M R_b per block (rotation), or M itself (decouple)."""
    if tables is None:
        return M.unsqueeze(0).expand(used, *M.shape)
    cos, sin = tables
    half = M.shape[1] // 2
    m32 = M.to(acc_dtype(M)).unsqueeze(0)
    scaled = m32 * sin.to(m32.dtype).unsqueeze(1)
    rotated = torch.cat([scaled[..., half:], -scaled[..., :half]], dim=-1)
    return (m32 * cos.to(m32.dtype).unsqueeze(1) + rotated).to(M.dtype)


def _blocks_view(t: torch.Tensor, n: int, r: int) -> torch.Tensor:
    """(n, M, r) view of the first n blocks of r columns of a 2-D tensor (no copy)."""
    return t[:, : n * r].view(t.shape[0], n, r).transpose(0, 1)


class BlockFunction(torch.autograd.Function):
    """Blocks read in place from x (r̂ a multiple of 8)."""

    @staticmethod
    def forward(ctx, x2, weight, bias, Wb, plan, flags):
        r, d, nbf, rem, pad, n_batch = plan.r, plan.d, plan.whole, plan.rem, plan.pad, plan.n_batch
        rows = x2.shape[0]
        if functional():
            parts = []
            if n_batch:
                out = torch.bmm(_blocks_view(x2, n_batch, r), Wb[:n_batch].transpose(1, 2))
                parts.append(out.transpose(0, 1).reshape(rows, n_batch * r))
            for b, nrow, wrapped in plan.extra_blocks():
                w = Wb[b, :nrow]
                if wrapped:
                    part = x2[:, nbf * r :] @ w[:, :rem].t()
                    if pad:
                        part = part + x2[:, :pad] @ w[:, rem:].t()
                else:
                    part = x2[:, b * r : (b + 1) * r] @ w.t()
                parts.append(part)
            flat = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            delta = tile_cols(flat, d) if plan.tile else flat
        else:
            delta = x2.new_empty(rows, d)
            if n_batch:
                torch.bmm(
                    _blocks_view(x2, n_batch, r), Wb[:n_batch].transpose(1, 2), out=_blocks_view(delta, n_batch, r)
                )
            for b, nrow, wrapped in plan.extra_blocks():
                w = Wb[b, :nrow]
                dst = delta[:, b * r : b * r + nrow]
                if wrapped:
                    torch.mm(x2[:, nbf * r :], w[:, :rem].t(), out=dst)
                    if pad:
                        dst.addmm_(x2[:, :pad], w[:, rem:].t())
                else:
                    torch.mm(x2[:, b * r : (b + 1) * r], w.t(), out=dst)
            pos = width = plan.width
            while pos < d:  # tiling: the flat result repeats until d outputs
                n = min(width, d - pos)
                delta[:, pos : pos + n].copy_(delta[:, :n])
                pos += n
        y = finish(delta, x2, weight, bias)
        ctx.plan, ctx.flags, ctx.functional = plan, flags, functional()
        need_x, need_W = flags
        ctx.save_for_backward(x2 if need_W else None, weight, Wb)
        return y

    @staticmethod
    def backward(ctx, gy):
        x2, weight, Wb = ctx.saved_tensors
        plan, (need_x, need_W) = ctx.plan, ctx.flags
        r, k, nbf, rem, pad, n_batch = plan.r, plan.k, plan.whole, plan.rem, plan.pad, plan.n_batch
        gy = gy.contiguous()
        rows = gy.shape[0]
        gflat = mod_sum(gy, plan.width).to(gy.dtype) if plan.tile else gy
        gW = gx = None
        if need_W:
            gW = _block_products(gflat, x2, plan).to(Wb.dtype)
        if need_x:
            if ctx.functional:
                parts = []
                if n_batch:
                    out = torch.bmm(_blocks_view(gflat, n_batch, r), Wb[:n_batch])
                    parts.append(out.transpose(0, 1).reshape(rows, n_batch * r))
                head = None
                for b, nrow, wrapped in plan.extra_blocks():
                    g, w = gflat[:, b * r : b * r + nrow], Wb[b, :nrow]
                    if wrapped:
                        parts.append(g @ w[:, :rem])
                        if pad:
                            head = g @ w[:, rem:]
                    else:
                        parts.append(g @ w)
                gxd = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
                if gxd.shape[1] < k:
                    gxd = F.pad(gxd, (0, k - gxd.shape[1]))
                if head is not None:
                    gxd = gxd + F.pad(head, (0, k - pad))
            else:
                gxd = gy.new_empty(rows, k)
                covered = n_batch * r
                if n_batch:
                    torch.bmm(_blocks_view(gflat, n_batch, r), Wb[:n_batch], out=_blocks_view(gxd, n_batch, r))
                for b, nrow, wrapped in plan.extra_blocks():
                    g, w = gflat[:, b * r : b * r + nrow], Wb[b, :nrow]
                    if wrapped:
                        torch.mm(g, w[:, :rem], out=gxd[:, nbf * r :])
                        if pad:
                            gxd[:, :pad].addmm_(g, w[:, rem:])
                        covered = k
                    else:
                        torch.mm(g, w, out=gxd[:, b * r : (b + 1) * r])
                        covered = (b + 1) * r
                if covered < k:
                    gxd[:, covered:].zero_()
            gx = finish_grad(gxd, gy, weight, ctx.functional)
        return gx, None, None, gW, None, None


def _block_products(gflat, x2, plan):
    """dL/dW_b = G_b = gflat_b^T x_b per used block, fp32 (used, r̂, r̂); rows past the truncation are 0.
    Autograd takes it back through `block_weights` to dL/dM = sum_b G_b R_b^T (tiny tensors)."""
    r, nbf, pad, n_batch = plan.r, plan.whole, plan.pad, plan.n_batch
    blocks = []
    if n_batch:
        gv = gflat[:, : n_batch * r].view(-1, n_batch, r).permute(1, 2, 0)
        blocks.append(torch.bmm(gv, _blocks_view(x2, n_batch, r)).to(acc_dtype(x2)))
    for b, nrow, wrapped in plan.extra_blocks():
        g = gflat[:, b * r : b * r + nrow].t()
        if wrapped:
            gb = g @ x2[:, nbf * r :]
            if pad:
                gb = torch.cat([gb, g @ x2[:, :pad]], dim=1)
        else:
            gb = g @ x2[:, b * r : (b + 1) * r]
        blocks.append(F.pad(gb.to(acc_dtype(x2)), (0, 0, 0, r - nrow)).unsqueeze(0))
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)


def _blocked(t: torch.Tensor, n_cols: int, used: int, r: int, rp: int) -> torch.Tensor:
    """(M, used, rp) contiguous: the first used*r columns of t (zero-extended past n_cols) in blocks of
    r, each zero-padded to rp columns."""
    rows = t.shape[0]
    want = used * r
    if t.shape[1] > want:
        t = t[:, :want]
    elif t.shape[1] < want:
        t = F.pad(t, (0, want - t.shape[1]))
    return F.pad(t.reshape(rows, used, r), (0, rp - r))


class PaddedBlockFunction(torch.autograd.Function):
    """Blocks copied once into an aligned (M, blocks, r̂p) layout, r̂p = r̂ rounded up to 8, so the
    batched GEMMs run on cuBLAS's fast Hopper kernels (one extra pass over x beats 5x slower GEMMs)."""

    @staticmethod
    def forward(ctx, x2, weight, bias, Wb, plan, flags):
        r, k, pad, used, width, rp = plan.r, plan.k, plan.pad, plan.used, plan.width, plan.rp
        rows = x2.shape[0]
        wrapped = used * r > k  # the wrap-padded last block is among the used ones
        src = torch.cat([x2, x2[:, :pad]], dim=1) if wrapped else x2
        xb = _blocked(src, src.shape[1], used, r, rp)
        wp = F.pad(Wb, (0, rp - r, 0, rp - r))
        out = torch.bmm(xb.transpose(0, 1), wp.transpose(1, 2))  # (used, M, rp)
        flat = out[..., :r].transpose(0, 1).reshape(rows, used * r)[:, :width]
        if plan.tile:
            delta = tile_cols(flat, plan.d)
        else:
            delta = flat if functional() else flat.contiguous()
        y = finish(delta, x2, weight, bias)
        ctx.plan, ctx.flags, ctx.functional = plan, flags, functional()
        need_x, need_W = flags
        ctx.save_for_backward(xb if need_W else None, weight, wp)
        return y

    @staticmethod
    def backward(ctx, gy):
        xb, weight, wp = ctx.saved_tensors
        plan, (need_x, need_W) = ctx.plan, ctx.flags
        r, k, pad, used, width, rp = plan.r, plan.k, plan.pad, plan.used, plan.width, plan.rp
        rows = gy.shape[0]
        gflat = mod_sum(gy, width).to(gy.dtype) if plan.tile else gy
        gb = _blocked(gflat, width, used, r, rp)  # (M, used, rp)
        gW = gx = None
        if need_W:
            gW = torch.bmm(gb.permute(1, 2, 0), xb.transpose(0, 1))[:, :r, :r].to(wp.dtype)
        if need_x:
            gxb = torch.bmm(gb.transpose(0, 1), wp)  # (used, M, rp)
            gxw = gxb[..., :r].transpose(0, 1).reshape(rows, used * r)
            n = min(used * r, k)
            gxd = gxw[:, :n] if n == k else F.pad(gxw[:, :n], (0, k - n))
            if used * r > k:
                gxd = gxd + F.pad(gxw[:, k : k + pad], (0, k - pad))
            gx = finish_grad(gxd if ctx.functional else gxd.contiguous(), gy, weight, ctx.functional)
        return gx, None, None, gW, None, None


# -- truncation (Eq. 4) -----------------------------------------------------------------------------


class TruncationFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, M, flags):
        d, k = weight.shape
        r = M.shape[0]
        rd, rk = min(d, r), min(k, r)
        msub = M[:rd, :rk]
        if functional():
            y = F.pad(x2[:, :rk] @ msub.t(), (0, d - rd))
        else:
            y = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias, x2, weight.t())
            y[:, :rd].addmm_(x2[:, :rk], msub.t())
        ctx.flags, ctx.functional = flags, functional()
        need_x, need_M = flags
        ctx.save_for_backward(x2[:, :rk].contiguous() if need_M else None, weight, M)
        return y

    @staticmethod
    def backward(ctx, gy):
        xs, weight, M = ctx.saved_tensors
        need_x, need_M = ctx.flags
        d, k = weight.shape
        r = M.shape[0]
        rd, rk = min(d, r), min(k, r)
        gM = gx = None
        if need_M:
            gM = F.pad(gy[:, :rd].t() @ xs, (0, r - rk, 0, r - rd))
        if need_x:
            if ctx.functional:
                gx = F.pad(gy[:, :rd] @ M[:rd, :rk], (0, k - rk))
            else:
                gx = gy @ weight
                gx[:, :rk].addmm_(gy[:, :rd], M[:rd, :rk])
        return gx, None, None, gM, None


# -- entry points: x already in `dtype`; M (or the per-block W_b, built from the fp32 M) is cast to it ----


def sharing_forward(x: torch.Tensor, base, M: torch.Tensor, geo: SharingGeometry, dtype: torch.dtype) -> torch.Tensor:
    weight, bias = frozen(base, dtype)
    x2 = x.reshape(-1, weight.shape[1])
    M = M.to(dtype)
    flags = (x.requires_grad, M.requires_grad)
    if fused_gemm.gather_on() and fused_gemm.usable(x2, weight):  # opt-in, see fused_gemm.py
        d, k = weight.shape
        i_dec, i1, i2 = sharing_indices(geo, d, k, x.device) if functional() else _cached_sharing_indices(geo, d, k, x.device)
        y = SharingFusedFunction.apply(x2, weight, bias, M, geo, flags, i_dec, i1, i2)
        return y.view(*x.shape[:-1], d)
    return with_base(SharingFunction.apply(x2, weight, bias, M, geo, flags), x, weight, bias)


def block_forward(x: torch.Tensor, base, M: torch.Tensor, plan: BlockPlan, rope: RopeTables | None,
                  dtype: torch.dtype) -> torch.Tensor:
    """`rope`: the layer's rotation tables (rotation), None (decouple)."""
    weight, bias = frozen(base, dtype)
    x2 = x.reshape(-1, plan.k)
    tables = None if rope is None else rope.first(plan.used, M.device, acc_dtype(M))
    Wb = block_weights(M, plan.used, tables).to(dtype)
    fn = PaddedBlockFunction if plan.rp != plan.r else BlockFunction
    return with_base(fn.apply(x2, weight, bias, Wb, plan, (x.requires_grad, Wb.requires_grad)), x, weight, bias)


def truncation_forward(x: torch.Tensor, base, M: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    weight, bias = frozen(base, dtype)
    M = M.to(dtype)
    y = TruncationFunction.apply(x.reshape(-1, weight.shape[1]), weight, bias, M, (x.requires_grad, M.requires_grad))
    return with_base(y, x, weight, bias)

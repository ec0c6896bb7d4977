"""MoRA's input groupings and rotation tables: the one definition that the reference layer
(mora.adapters.mora) and its fused kernels (mora.kernels.mora) both follow.

Sharing types (the authors' numbers) map to a compression and a decompression: `modulo` sums every
r̂-th feature of the wrap-padded input (Eq. 6), `contiguous` sums runs of neighbouring features (the
first n % r̂ runs one longer); `tile` repeats the r̂ outputs, `contiguous` repeats each over its run.
The rotation kind (Eq. 9) turns block b of r̂ inputs RoPE-style by b * theta, theta_i = ROPE_BASE^(-2i/r̂).
"""

from __future__ import annotations

import torch

from .common import compiling, functional

# sharing type -> (compression, decompression)
SHARING_GROUPINGS = {
    1: ("modulo", "tile"),
    2: ("contiguous", "contiguous"),
    3: ("contiguous", "tile"),
    4: ("modulo", "contiguous"),
}
ROPE_BASE = 10000.0


def rope_tables(r_hat: int, blocks: int, device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (blocks, r̂) of the rotation, computed in `dtype`."""
    half = r_hat // 2
    inv_freq = ROPE_BASE ** (-torch.arange(half, dtype=dtype, device=device) * 2 / r_hat)
    angles = torch.outer(torch.arange(blocks, dtype=dtype, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


class RopeTables:
    """One rotation layer's tables: computed in float64 and rounded to the dtype asked for, cached per
    device and dtype, except while torch.compile traces (a per-layer cache lookup would make every
    layer a recompile)."""

    def __init__(self, r_hat: int, blocks: int):
        self.r_hat, self.blocks = r_hat, blocks
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def exact(self, device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if compiling() or key not in self._cache:
            cos, sin = rope_tables(self.r_hat, self.blocks, device, torch.float64)
            tables = (cos.to(dtype), sin.to(dtype))
            if compiling():
                return tables
            self._cache[key] = tables
        return self._cache[key]

    def first(self, used: int, device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables of the first `used` blocks, for a fused kernel: the cached exact ones when eager;
        traced (the functional formulation), recomputed in `dtype` (fp32 for bf16 models) inside the kernel that builds the block
        weights, once per element: float64 trig there cost ~1 ms per step."""
        if functional():
            return rope_tables(self.r_hat, used, device, dtype)
        cos, sin = self.exact(device, dtype)
        return cos[:used], sin[:used]

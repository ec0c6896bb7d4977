"""The shared shape of every adapter layer: a frozen nn.Linear plus a trainable update ΔW.

Subclasses implement `delta` (the adapter's output for an input) and `delta_weight` (the same map as a
dense (d, k) matrix, Eq. 3 of the paper); merging, unmerging and dtype handling live here once.

Precision (docs/precision.md): the trainable tensors are fp32 (fp64 on an fp64 base) whatever the
base's dtype, so an optimizer step smaller than a bf16 ulp is never lost; every write of ΔW into the
base (merge, unmerge, restarts) adds in fp32 and rounds to the base's dtype once.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..kernels import fast_forward
from .config import AdapterConfig


class AdapterLayer(nn.Module):
    """`forward(x) = base(x) + ΔW dropout(x)` until merged; after `merge()` the base alone carries ΔW."""

    def __init__(self, base: nn.Linear, config: AdapterConfig):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{config.method} wraps nn.Linear layers, got {type(base).__name__}")
        self.base = base
        self.config = config
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.merged = False
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        base.requires_grad_(False)

    # -- what a method provides ------------------------------------------------------------------
    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW x for x already in the adapter dtype (dropout applied by the caller)."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """Dense ΔW of shape (out_features, in_features), in the adapter's dtype."""
        raise NotImplementedError

    def reset_adapter(self) -> None:
        """(Re)initialise the trainable tensors so that ΔW = 0."""
        raise NotImplementedError

    def restart_parameters(self) -> list[nn.Parameter]:
        """Parameters re-initialised by `merge_and_reinit` (their optimizer state is reset too)."""
        return []

    def merge_and_reinit(self) -> None:
        raise ValueError(
            f"{self.config.method} has no merge-and-reinit restart; use relora or remora for restarts"
        )

    # -- shared behaviour ------------------------------------------------------------------------
    def new_parameter(self, *shape: int) -> nn.Parameter:
        """An uninitialised parameter on the base's device, in fp32 (or the base's dtype where that is
        wider: fp64 reference checks)."""
        dtype = torch.promote_types(self.base.weight.dtype, torch.float32)
        return nn.Parameter(torch.empty(*shape, device=self.base.weight.device, dtype=dtype))

    @property
    def adapter_dtype(self) -> torch.dtype:
        """The adapter weights' dtype as they are now: fp32 as made, bf16 where DeepSpeed's bf16 engine
        cast the whole model (it then keeps the fp32 masters)."""
        for _, param in self.adapter_parameters():
            return param.dtype
        return torch.promote_types(self.base.weight.dtype, torch.float32)

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, param in self.named_parameters():
            if not name.startswith("base."):
                yield name, param

    # None: use the fused training path when mora.kernels supports the call (CUDA input, see
    # mora/kernels/dispatch.py), else the reference `adapted_forward`; False: always the reference.
    fast_path: bool | None = None
    # A class with a fused path defines `fused_forward(self, x, dtype) -> Tensor | None` in its own body
    # (x already in the compute dtype; None: this call keeps the reference path). A subclass that does not
    # define its own keeps the reference path: it may change the maths the inherited one fuses.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        if self.fast_path is not False:
            out = fast_forward(self, x)
            if out is not None:
                return out
        return self.adapted_forward(x)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        update = self.delta(self.dropout(x.to(self.adapter_dtype)))
        return out + update.to(out.dtype)

    @torch.no_grad()
    def add_to_base(self, delta: torch.Tensor, alpha: float = 1.0) -> None:
        """W0 += alpha ΔW, added in fp32 (or wider) and rounded to W0's dtype once."""
        weight = self.base.weight
        wide = torch.promote_types(weight.dtype, delta.dtype)
        weight.copy_(weight.to(wide).add_(delta.to(wide), alpha=alpha))

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        self.add_to_base(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.add_to_base(self.delta_weight(), alpha=-1.0)
        self.merged = False

    def extra_repr(self) -> str:
        return f"method={self.config.method}, in={self.in_features}, out={self.out_features}, merged={self.merged}"

"""LoRA and the methods that share its layer: LoRA+ (optimizer groups), AsyLoRA (init), ReLoRA (restarts).

`y = W0 x + s B A dropout(x)` with `s = alpha / r` (`alpha / sqrt(r)` with rsLoRA), A (r, k), B (d, r).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..kernels.lora import lora_forward
from .config import AdapterConfig, RestartOptions, register
from .layer import AdapterLayer

INITS = ("kaiming", "orthogonal")


@register("lora")
@dataclass
class LoRAConfig(AdapterConfig):
    """`alpha`: s = alpha / r (alpha / sqrt(r) with `rslora`); `init`: A's, kaiming_uniform(a=sqrt(5)) or
    orthogonal rows (AsyLoRA); `freeze_A`: train B only."""

    alpha: float
    rslora: bool
    init: str
    freeze_A: bool

    def validate(self) -> None:
        super().validate()
        if not self.alpha > 0:
            raise ValueError(
                f"{self.method}: alpha must be > 0, got {self.alpha!r}; set method.alpha > 0 (the paper uses 16 at r 8)"
            )
        if self.init not in INITS:
            raise ValueError(f"{self.method}: init must be one of {INITS}, got {self.init!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def peft_options(self) -> dict[str, Any]:
        """LoRA+, AsyLoRA and ReLoRA train differently but end as LoRA weights: peft loads them all."""
        return {"r": self.r, "lora_alpha": self.alpha, "use_rslora": self.rslora, "use_dora": False,
                "lora_dropout": self.dropout}


@register("loraplus")
@dataclass
class LoRAPlusConfig(LoRAConfig):
    """LoRA+: B learns `lr_ratio` (lambda) times faster than A; the paper searches lambda in {2, 4}."""

    lr_ratio: float

    def validate(self) -> None:
        super().validate()
        if not self.lr_ratio > 0:
            raise ValueError(f"loraplus: lr_ratio (lambda) must be > 0, got {self.lr_ratio!r}")

    def lr_multipliers(self) -> dict[str, float]:
        return {"lora_B": self.lr_ratio}


@register("asylora")
@dataclass
class AsyLoRAConfig(LoRAConfig):
    """AsyLoRA: A from orthonormal rows (`init: orthogonal`), B = 0. `freeze_A=False` is how the MoRA
    paper's baseline ran it; `freeze_A=True` is the AsyLoRA paper's own recipe (train B only)."""


@register("relora")
@dataclass
class ReLoRAConfig(RestartOptions, LoRAConfig):
    def validate(self) -> None:
        LoRAConfig.validate(self)
        self.validate_restarts(self.method)


class LoRALayer(AdapterLayer):
    peft_names = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight"}  # tensor -> its name in peft's files

    def __init__(self, base: nn.Linear, config: LoRAConfig):
        super().__init__(base, config)
        r = config.r
        if config.init == "orthogonal" and r > self.in_features:
            raise ValueError(
                f"{config.method}: orthogonal init needs r <= in_features, got r={r} > {self.in_features}; lower r"
            )
        self.scaling = config.scaling
        self.lora_A = self.new_parameter(r, self.in_features)
        self.lora_B = self.new_parameter(self.out_features, r)
        self.reset_adapter()
        self.lora_A.requires_grad_(not config.freeze_A)

    @torch.no_grad()
    def reset_adapter(self) -> None:
        self._init_A()
        self.lora_B.zero_()

    def _init_A(self) -> None:
        A = self.lora_A
        if A.device.type == "meta":
            return
        if self.config.init == "kaiming":
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        else:
            # Right singular vectors of a random U(-0.5, 0.5) matrix: r orthonormal rows of length k.
            probe = torch.rand(A.shape, dtype=torch.float32, device=A.device) - 0.5
            _, _, vh = torch.linalg.svd(probe, full_matrices=False)
            A.copy_(vh)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.lora_A.t()) @ (self.lora_B * self.scaling).t()

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def fused_forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return lora_forward(x, self.base, self.lora_A, self.lora_B, self.scaling, dtype)

    def restart_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B]

    @torch.no_grad()
    def merge_and_reinit(self) -> None:
        """ReLoRA restart: W0 += s B A, A re-drawn, B = 0 (same Parameter objects, so the optimizer keeps them)."""
        if self.config.restart_options() is None:
            super().merge_and_reinit()  # raises: only relora restarts
        if self.merged:
            raise RuntimeError("merge_and_reinit on a merged layer; unmerge it first")
        self.add_to_base(self.delta_weight())
        self.reset_adapter()


for _cfg in (LoRAConfig, LoRAPlusConfig, AsyLoRAConfig, ReLoRAConfig):
    _cfg.layer_class = LoRALayer

"""DoRA: a learned magnitude per output row times the LoRA-updated direction.

`W' = m * V / ||V||_row` with `V = W0 + s B A` and the norm detached (DoRA sec. 4.3). The forward never
forms W' from scratch for the input: `y = g * (W0 x + s B A dropout(x)) + b`, `g = m / ||V||_row`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.lora import WeightNorms, dora_forward
from .config import register
from .lora import LoRAConfig, LoRALayer


@register("dora")
@dataclass
class DoRAConfig(LoRAConfig):
    def peft_options(self) -> dict[str, Any]:
        return {**super().peft_options(), "use_dora": True}


class DoRALayer(LoRALayer):
    peft_names = {**LoRALayer.peft_names, "dora_magnitude": "lora_magnitude_vector"}

    def __init__(self, base: nn.Linear, config: DoRAConfig):
        super().__init__(base, config)
        self.dora_magnitude = self.new_parameter(self.out_features)
        self.register_buffer("merge_scale", None, persistent=False)
        self.weight_norms = WeightNorms()  # ||W0||² per row for the fused path, kept while W0 is unchanged
        self.reset_adapter()

    @torch.no_grad()
    def reset_adapter(self) -> None:
        super().reset_adapter()
        magnitude = self._parameters.get("dora_magnitude")  # absent while LoRALayer.__init__ runs
        if magnitude is not None and magnitude.device.type != "meta":
            magnitude.copy_(self.base.weight.to(self.adapter_dtype).norm(dim=1))

    def _row_scale(self) -> torch.Tensor:
        """g = m / ||W0 + s B A||_row, the norm detached."""
        directions = self.base.weight.to(self.adapter_dtype) + (self.lora_B @ self.lora_A) * self.scaling
        return self.dora_magnitude / directions.norm(dim=1).detach()

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        g = self._row_scale()
        base_out = F.linear(x, base.weight).to(self.adapter_dtype)
        update = self.delta(self.dropout(x.to(self.adapter_dtype)))
        out = (g * (base_out + update)).to(x.dtype)
        return out if base.bias is None else out + base.bias

    def fused_forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return dora_forward(x, self.base, self.lora_A, self.lora_B, self.dora_magnitude, self.scaling,
                            self.weight_norms, dtype)

    def delta_weight(self) -> torch.Tensor:
        w0 = self.base.weight.to(self.adapter_dtype)
        g = self._row_scale().unsqueeze(1)
        return g * (w0 + (self.lora_B @ self.lora_A) * self.scaling) - w0

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        weight = self.base.weight
        g = self._row_scale()
        merged = g.unsqueeze(1) * (weight.to(self.adapter_dtype) + (self.lora_B @ self.lora_A) * self.scaling)
        weight.copy_(merged.to(weight.dtype))
        self.merge_scale = g
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        weight = self.base.weight
        restored = weight.to(self.adapter_dtype) / self.merge_scale.unsqueeze(1) - (self.lora_B @ self.lora_A) * self.scaling
        weight.copy_(restored.to(weight.dtype))
        self.merge_scale = None
        self.merged = False

    def merge_and_reinit(self) -> None:
        raise ValueError("dora has no merge-and-reinit restart; use relora or remora for restarts")


DoRAConfig.layer_class = DoRALayer

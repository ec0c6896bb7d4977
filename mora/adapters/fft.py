"""Full fine-tuning: no adapter layers, every parameter of the model trains."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import AdapterConfig, register


@register("fft")
@dataclass
class FFTConfig(AdapterConfig):
    """`r` and `target_modules` only say which layers a LoRA budget would be counted over."""

    def inert_fields(self) -> set[str]:
        """Every parameter trains whatever the options say: none of them changes the run."""
        return {f.name for f in dataclasses.fields(self)}

"""Full fine-tuning: no adapter layers, every parameter of the model trains."""

from __future__ import annotations

from dataclasses import dataclass

from .config import AdapterConfig, register


@register("fft")
@dataclass
class FFTConfig(AdapterConfig):
    """`r` and `target_modules` only say which layers a LoRA budget would be counted over."""

"""The precision policy, enforced before training (docs/precision.md).

Trainable tensors are held and updated in fp32 whatever the base's dtype: a bf16 weight of magnitude
0.02 has an ulp of about 1.2e-4, so AdamW steps at the paper's learning rates (2e-5 to 5e-4, each
entry moving by about lr per step) would mostly round away. Adapters are created in fp32 by their
layers; a model trained in full (FFT, or embeddings / norms / head in pretraining) must either be
loaded in fp32 (bf16 compute then comes from `train.precision=bf16`, autocast) or be trained by
DeepSpeed with bf16 enabled, whose optimizer keeps fp32 master weights of every trainable parameter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

WIDE = (torch.float32, torch.float64)


def deepspeed_keeps_fp32_master(ds_config: dict[str, Any] | None, precision: str) -> bool:
    """DeepSpeed's bf16 engine updates an fp32 master copy of every trainable parameter."""
    enabled = ((ds_config or {}).get("bf16") or {}).get("enabled", False)
    return enabled is True or (enabled == "auto" and precision == "bf16")


def narrow_trainable(model: nn.Module) -> dict[str, list[str]]:
    """Trainable parameters held in a dtype narrower than fp32, by dtype name."""
    found: dict[str, list[str]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad and param.dtype not in WIDE:
            found.setdefault(str(param.dtype).removeprefix("torch."), []).append(name)
    return found


def check_trainable_precision(model: nn.Module, precision: str, ds_config: dict[str, Any] | None = None) -> None:
    """Refuse, before anything is recorded, a run that would update bf16/fp16 weights with no fp32 copy."""
    if deepspeed_keeps_fp32_master(ds_config, precision):
        return
    narrow = narrow_trainable(model)
    if not narrow:
        return
    dtype, names = next(iter(narrow.items()))
    count = sum(len(v) for v in narrow.values())
    shown = ", ".join(names[:3]) + (f" and {count - 3} more" if count > 3 else "")
    raise ValueError(
        f"{count} trainable parameter(s) are {dtype} with no fp32 master copy ({shown}): their updates would "
        f"round away. Load the model in fp32 (model.network.dtype=float32; train.precision=bf16 keeps bf16 "
        f"compute through autocast), or train with DeepSpeed bf16 (train/deepspeed=zero2 or zero3), whose "
        f"optimizer holds fp32 masters. See docs/precision.md"
    )

"""Fused training paths for the adapter layers (torch only; nothing here imports mora.adapters at
import time, so mora.adapters can import this package).

`AdapterLayer.forward` asks `fast_forward(layer, x)` first; it returns None, and the layer runs its
reference path, unless the input is on CUDA (mode "auto") and the layer/shape is supported. See
dispatch.py for the rules, lora.py and mora.py for the maths, common.py for the two formulations
(eager buffer-reusing GEMMs, functional for torch.compile), fused_gemm.py for the optional Triton GEMM that
LoRA and DoRA use on Hopper GPUs (the adapter's term in the frozen GEMM's epilogue; import-guarded).
"""

from .common import force_functional
from .dispatch import (
    calls,
    compute_dtype,
    fast_forward,
    fast_path,
    fast_path_mode,
    fused_calls,
    path_counts,
    reset_counts,
    set_fast_path,
    supported,
)

__all__ = [
    "calls",
    "compute_dtype",
    "fast_forward",
    "fast_path",
    "fast_path_mode",
    "force_functional",
    "fused_calls",
    "path_counts",
    "reset_counts",
    "set_fast_path",
    "supported",
]

"""Fused training paths for the adapter layers: torch only, and nothing here imports mora.adapters.
The layers call in: each class that has a fused path declares it (`fused_forward`, next to the
class) and hands the kernel its tensors and geometry; no kernel reads a layer's attributes.

`AdapterLayer.forward` asks `fast_forward(layer, x)` first; it returns None, and the layer runs its
reference path, unless the input is on CUDA (mode "auto") and the layer/shape is supported. See
dispatch.py for the rules, lora.py and mora.py for the maths, mora_tables.py for MoRA's groupings and
rotation tables (the layer's and the kernel's one definition), common.py for the two formulations
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

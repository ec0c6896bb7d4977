"""Pickles from a results store are loaded as tensors and plain values, never as code.

A checkpoint's optimizer, scheduler and RNG state (and DeepSpeed's shards) are pickles, and unpickling
calls whatever the file names. torch's `weights_only` unpickler builds only tensors, containers and an
allowlist of plain types. transformers asks for it on every checkpoint file; DeepSpeed does not, so
`weights_only()` forces it on every `torch.load` while active (TORCH_FORCE_WEIGHTS_ONLY_LOAD), with
DeepSpeed's three plain state classes allowed. `check_checkpoint` reads the pickles' globals before a
resume, so a crafted file stops the relaunch with one line naming the file and what it would call.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from pathlib import Path
from typing import Iterator

import torch

FORCE, FORCE_NOT = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
NEVER_LOADED = ("training_args.bin",)  # the Trainer writes its arguments for people; a resume never reads them
# What a ZeRO optimizer shard holds besides tensors: a loss-scale record, an enum, a dataclass of offsets.
DEEPSPEED_STATE = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def _deepspeed_state_classes() -> list[type]:
    if "deepspeed" not in sys.modules:  # not a DeepSpeed run: nothing of it to load
        return []
    import importlib

    out = []
    for name in DEEPSPEED_STATE:
        module, _, attr = name.rpartition(".")
        out.append(getattr(importlib.import_module(module), attr))
    return out


@contextlib.contextmanager
def weights_only() -> Iterator[None]:
    """Every torch.load in this process loads tensors and plain values only, whatever its caller asks."""
    saved = {key: os.environ.get(key) for key in (FORCE, FORCE_NOT)}
    os.environ[FORCE] = "1"
    os.environ.pop(FORCE_NOT, None)  # torch refuses both set at once
    try:
        with torch.serialization.safe_globals(_deepspeed_state_classes()):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_checkpoint(checkpoint: Path, origin: str) -> None:
    """Raise ValueError, naming `origin`, the file and the globals, if a pickle a resume from `checkpoint`
    would load names anything beyond tensors and plain values (the Trainer's own allowlist: numpy's RNG
    state; DeepSpeed's state classes). Reads each pickle's opcodes only, no tensor data."""
    from transformers.trainer_pt_utils import safe_globals as trainer_safe_globals

    for path in sorted(checkpoint.rglob("*")):
        if path.suffix not in PICKLE_SUFFIXES or path.name in NEVER_LOADED or not path.is_file():
            continue
        where = f"{origin}: {path.relative_to(checkpoint.parent)}"
        fix = f"delete {checkpoint} to resume from the checkpoint before it, or the run directory to start over"
        try:
            with trainer_safe_globals():
                unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - set(DEEPSPEED_STATE)
        except (ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise ValueError(f"{where} is not a torch.save file of tensors and values ({exc}); refused, nothing "
                             f"in it was loaded: {fix}") from None
        if unsafe:
            raise ValueError(f"{where} would call {', '.join(sorted(unsafe))} when loaded; a checkpoint holds tensors "
                             f"and values only: refused, nothing in it was loaded: {fix}")

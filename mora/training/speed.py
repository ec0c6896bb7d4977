"""What makes a run fast without changing what it computes: compiled blocks, and the measured speed.

`compile_blocks` compiles each repeated block (the decoder layers) rather than the whole model:
identical blocks share one compiled graph, so a 32-layer model compiles about as fast as one layer,
and embedding, head and loss stay eager. `Throughput` records seconds per optimizer step, tokens per
second and peak accelerator memory in metrics.json, timing the steps alone (not evaluations or
checkpoint writes, which run after it in the callback order).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks as transformers names them (`_no_split_modules`: LlamaDecoderLayer, ...)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(
            f"train.compile: {type(model).__name__} names no repeated block (_no_split_modules); "
            "set train.compile=false"
        )
    return blocks


# Compiled variants one block may need: inputs with and without grad (the first block's come from
# frozen embeddings) x training / no-grad evaluation x ReMoRA's four groupings, with room to spare.
RECOMPILE_LIMIT = 32


def compile_backend(setting: bool | str) -> str | None:
    """`train.compile`: false, true (inductor), or a torch.compile backend name (aot_eager: the same
    tracing and autograd without code generation, for debugging and quick tests)."""
    if setting is False or setting is None:
        return None
    if setting is True:
        return "inductor"
    if isinstance(setting, str) and setting in torch._dynamo.list_backends(exclude_tags=()):
        return setting
    raise ValueError(
        f"train.compile must be true, false or a torch.compile backend "
        f"({', '.join(torch._dynamo.list_backends(exclude_tags=()))}), got {setting!r}"
    )


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """torch.compile every block in place (nn.Module.compile); returns how many."""
    blocks = repeated_blocks(model)
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)


@contextlib.contextmanager
def without_kv_cache(model: nn.Module):
    """`config.use_cache` off while training, restored after (the saved model generates with its cache).
    Training reads no KV cache; left on, transformers builds one every forward, and a compiled block
    guards on its per-layer state: one recompile per layer (seen on the H200: 32 layers hit the
    recompile limit and the rest ran eager). Generation during training uses generation_config."""
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if old is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if old is not None:
            config.use_cache = old


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Throughput(TrainerCallback):
    """Times optimizer steps after `warmup` of them (compilation and allocator warm-up stay out) and
    writes `metrics["throughput"]`: steps timed, seconds per step, tokens per second (every token of
    every micro-batch of every process, padding included: what the accelerators processed) and peak
    memory in GiB (rank 0's; with several processes also `peak_memory_gib_per_rank`)."""

    def __init__(self, metrics: dict[str, Any], warmup: int = 1):
        self.metrics = metrics
        self.warmup = warmup
        self.seen = self.seconds = self.tokens = 0
        self.begun = self.tokens_at_begin = None
        self.recent: list[float] = []  # the last 20 timed steps' seconds: a slow step shows

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_begin(self, args, state, control, **kwargs):
        _sync()
        self.begun, self.tokens_at_begin = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        self.seen += 1
        if self.begun is None or self.seen <= self.warmup:
            return
        took = time.perf_counter() - self.begun
        self.seconds += took
        self.tokens += state.num_input_tokens_seen - self.tokens_at_begin
        self.recent = (self.recent + [round(took, 4)])[-20:]
        timed = self.seen - self.warmup
        self.metrics["throughput"] = {
            "steps_timed": timed,
            "last_step_seconds": self.recent,
            "seconds_per_step": self.seconds / timed,
            "tokens_per_second": self.tokens / self.seconds if self.seconds else None,
            "peak_memory_gib": _peak_memory_gib(),
        }

    def on_train_end(self, args, state, control, **kwargs):
        """Several processes: every rank's peak, in rank order (`peak_memory_gib` is rank 0's)."""
        from .distributed import all_ranks

        peaks = all_ranks(_peak_memory_gib())
        if len(peaks) > 1 and "throughput" in self.metrics:
            self.metrics["throughput"]["peak_memory_gib_per_rank"] = peaks


def _peak_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None

"""What every hub-or-local builder shares: its source, option checks, cache keys and the collator."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, ClassVar

from .cache import tokenizer_fingerprint
from .collate import PadCollator
from .sources import Source


def batched(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"data.builder.{name} must be a positive integer, got {value!r}")
    return value


class SourceTask:
    """Subclasses register (`@register_task("name")` sets `name`) and set `version` (bump it whenever the
    produced tokens change, so old caches stop matching and the runs made from them are listed as
    stale), and list the options that shape their output."""

    name: ClassVar[str]
    version: ClassVar[int]
    # Options that say where the work is kept, not what it produces: not part of a run's id.
    inert_options: ClassVar[tuple[str, ...]] = ("cache_dir",)

    def __init__(
        self,
        tokenizer,
        source: str,
        max_length: int,
        cache_dir: str,
        seed: int = 0,
        split: str = "train",
        hub_config: str | None = None,
        revision: str | None = None,
        streaming: bool = False,
    ):
        self.tokenizer = tokenizer
        self.max_length = positive_int(max_length, "max_length")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not cache_dir:
            raise ValueError("data.builder.cache_dir is empty; set paths.cache_dir to a writable directory")
        self.seed, self.cache_dir = seed, cache_dir
        self.source = Source(source, split=split, hub_config=hub_config, revision=revision, streaming=streaming)
        self.tokenizer_key = tokenizer_fingerprint(tokenizer)
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; the data formats end sequences with one")

    def options(self) -> dict[str, Any]:
        """Builder options that change the produced tokens (part of the cache key)."""
        return {}

    def cache_keys(self, source: Source) -> dict[str, Any]:
        return {
            "builder": self.name,
            "version": self.version,
            "source": source.fingerprint(),
            "tokenizer": self.tokenizer_key,
            "max_length": self.max_length,
            "options": self.options(),
        }

    def bos(self) -> list[int]:
        """Sequences start with BOS when the tokenizer has one (LLaMA); T5's has none."""
        return [] if self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]

    def collator(self) -> PadCollator:
        pad = self.tokenizer.pad_token_id
        return PadCollator(self.tokenizer.eos_token_id if pad is None else pad)

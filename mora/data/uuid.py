"""UUID memorisation (paper Sec. 4.1): N random `key:value` pairs of UUID strings, learned by heart.

The pairs come from a seeded generator, so the task needs no download and every run of a seed sees
the same pairs. Loss is on every token, as the authors trained; `mask_key` restricts it to the value.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import ClassVar

from .collate import IGNORE_INDEX, PadCollator
from .registry import register_task

SEPARATOR = ":"
VALUE_CHARS = 36


def uuid_pairs(n_pairs: int, seed: int) -> list[tuple[str, str]]:
    if n_pairs <= 0:
        raise ValueError(f"data.n_pairs must be positive, got {n_pairs}")
    rng = random.Random(seed)
    draw = lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4))  # noqa: E731
    return [(draw(), draw()) for _ in range(n_pairs)]


@register_task("uuid")
@dataclass
class UUIDTask:
    version: ClassVar[int] = 1  # bump when the pairs or rows change (the runs made before become stale)

    tokenizer: object
    n_pairs: int = 10_000
    seed: int = 0
    mask_key: bool = False

    def __post_init__(self) -> None:
        self.pairs = uuid_pairs(self.n_pairs, self.seed)

    def prompt_ids(self, key: str) -> list[int]:
        return [self.tokenizer.bos_token_id] + self._encode(key + SEPARATOR)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def train_dataset(self) -> list[dict]:
        rows = []
        for key, value in self.pairs:
            prompt = self.prompt_ids(key)
            answer = self._encode(value) + [self.tokenizer.eos_token_id]
            labels = ([IGNORE_INDEX] * len(prompt) if self.mask_key else list(prompt)) + answer
            rows.append({"input_ids": prompt + answer, "labels": labels})
        return rows

    def collator(self) -> PadCollator:
        return PadCollator(self.tokenizer.pad_token_id)

"""Character accuracy on UUID memorisation: greedy-generate the value after `key:` and compare its
36 characters with the true value position by position (the paper's Table 2 metric)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..data.uuid import VALUE_CHARS
from ..interfaces import KeyValueTask


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def char_matches(generated: str, value: str) -> int:
    return sum(a == b for a, b in zip(generated[:VALUE_CHARS], value))


@dataclass
class CharAccuracy:
    """`sample`: evaluate a seeded sample of that many pairs instead of all of them."""

    version: ClassVar[int] = 1  # bump when the metric changes: runs recorded before become stale
    inert_options: ClassVar[tuple[str, ...]] = ("batch_size",)  # how many at once: not part of the run id

    batch_size: int = 256
    sample: int | None = None
    seed: int = 0

    @torch.no_grad()
    def __call__(self, model, tokenizer, task: KeyValueTask) -> dict[str, float]:
        pairs = task.pairs
        if self.sample is not None and self.sample < len(pairs):
            pairs = random.Random(self.seed).sample(pairs, self.sample)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        correct = 0
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            ids, mask = _left_pad([task.prompt_ids(k) for k, _ in chunk], tokenizer.pad_token_id)
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=VALUE_CHARS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
            correct += sum(char_matches(t, v) for t, (_, v) in zip(texts, chunk))
        model.train(was_training)
        return {"char_acc": 100.0 * correct / (VALUE_CHARS * len(pairs))}

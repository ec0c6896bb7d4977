"""Perplexity on a task's validation rows (paper Table 3: C4 validation), every loss token weighted
equally: exp(total next-token NLL / number of predicted tokens)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..data.collate import IGNORE_INDEX
from ..interfaces import HeldOutTask


@dataclass
class Perplexity:
    """`max_sequences`: score only the first that many validation rows (they come in a fixed order)."""

    version: ClassVar[int] = 1  # bump when the metric changes: runs recorded before become stale
    inert_options: ClassVar[tuple[str, ...]] = ("batch_size",)  # how many at once: not part of the run id

    batch_size: int = 16
    max_sequences: int | None = None

    @torch.no_grad()
    def __call__(self, model, tokenizer, task: HeldOutTask) -> dict[str, float]:
        rows = task.validation_dataset()
        n = len(rows) if self.max_sequences is None else min(self.max_sequences, len(rows))
        collate = task.collator()
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        nll, count = 0.0, 0
        for start in range(0, n, self.batch_size):
            batch = collate([rows[i] for i in range(start, min(n, start + self.batch_size))])
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            targets = batch["labels"][:, 1:].to(device)
            nll += F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            ).item()
            count += int((targets != IGNORE_INDEX).sum())
        model.train(was_training)
        loss = nll / max(count, 1)
        return {"val_loss": loss, "perplexity": math.exp(loss)}

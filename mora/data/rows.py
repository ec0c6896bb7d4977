"""Token arrays seen as training rows {input_ids, labels}: one row per example, or packed sequences.

Views are lazy (they slice the cache's memory-mapped arrays on access), so a multi-billion-token
corpus costs no RAM beyond its per-document offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
from torch.utils.data import Dataset, IterableDataset

from .cache import Ragged
from .collate import IGNORE_INDEX


def permutation(n: int, seed: int) -> np.ndarray:
    """The seeded order every builder shuffles by: the same seed gives the same order everywhere."""
    return np.random.default_rng(seed).permutation(n)


class ExampleRows(Dataset):
    """Row i is example order[i]; labels copy the token where the loss mask is set, else -100."""

    def __init__(self, examples: Ragged, order: np.ndarray):
        self.examples, self.order = examples, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        if not 0 <= i < len(self.order):
            raise IndexError(i)
        j = self.order[i]
        a, b = self.examples.offsets[j], self.examples.offsets[j + 1]
        ids = np.asarray(self.examples.tokens[a:b], dtype=np.int64)
        labels = np.where(self.examples.mask[a:b], ids, IGNORE_INDEX)
        return {"input_ids": ids.tolist(), "labels": labels.tolist()}


class PackedRows(Dataset):
    """Documents (each already ending in EOS) concatenated in `order` and cut every `max_length`
    tokens; the last row keeps the remainder, so every token is trained on exactly once."""

    def __init__(self, docs: Ragged, order: np.ndarray, max_length: int):
        self.docs, self.order, self.max_length = docs, order, max_length
        self.lengths = docs.lengths()[order]
        self.ends = np.cumsum(self.lengths)
        self.total = int(self.ends[-1]) if len(self.ends) else 0

    def __len__(self) -> int:
        return -(-self.total // self.max_length)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start, stop = i * self.max_length, min((i + 1) * self.max_length, self.total)
        k = int(np.searchsorted(self.ends, start, side="right"))
        pieces, pos = [], start
        while pos < stop:
            doc_start = int(self.ends[k] - self.lengths[k])
            end = min(stop, int(self.ends[k]))
            base = int(self.docs.offsets[self.order[k]])
            pieces.append(self.docs.tokens[base + pos - doc_start : base + end - doc_start])
            pos, k = end, k + 1
        ids = np.concatenate(pieces).astype(np.int64).tolist()
        return {"input_ids": ids, "labels": list(ids)}


class StreamingPackedRows(IterableDataset):
    """The packing of PackedRows applied on the fly to a stream of tokenized documents (C4): no
    length, no cache, read once from the start on every iteration."""

    def __init__(self, documents: Callable[[], Iterable[list[int]]], max_length: int):
        self.documents, self.max_length = documents, max_length

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        buffer: list[int] = []
        for ids in self.documents():
            buffer.extend(ids)
            while len(buffer) >= self.max_length:
                row, buffer = buffer[: self.max_length], buffer[self.max_length :]
                yield {"input_ids": row, "labels": list(row)}
        if buffer:
            yield {"input_ids": buffer, "labels": list(buffer)}

"""Raw-text corpora for pretraining from scratch (C4) and continual pretraining (AdaptLLM-processed
PubMed abstracts and financial news).

Each document becomes [BOS] + its tokens + EOS (BOS only when the tokenizer has one); documents are
shuffled by seed and packed into rows of exactly `max_length` tokens, the last row holding the
remainder, so every token is trained on once and EOS separates documents. The loss is on every token.

Validation for perplexity comes either from a hub split (`validation_split`, C4's `validation`, read
until `validation_sequences` rows are full) or, for local text, from `holdout_fraction` of each document
(its end, from the first line start at or after the cut; a local .txt file is one document, so that is
the last 5 % of each file). Validation rows are packed in source order, never shuffled.

`streaming: true` reads the source as a stream (a hub dataset is not converted to Arrow first: PubMed's
one 8 GB .jsonl.zst). The tokens still go through the cache unless `cache_tokens: false`, which packs
them on the fly on every run instead (C4: 156 B tokens, a run reads ~5 B once; needs train.max_steps,
since a stream has no length); the seeded buffer shuffle then orders the documents. Both paths cut
the held-out tail and pack in the same functions, so in the same document order they give the same
rows; on the fly, validation rows are the held-out tails of the stream's first documents (cached).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from .adaptllm import MINERS, reading_comprehension
from .cache import Ragged, Writer, load_or_build
from .registry import register_task
from .rows import PackedRows, StreamingPackedRows, permutation
from .sources import Source
from .task import SourceTask, batched, positive_int

log = logging.getLogger("mora")

# Longer texts (whole books as .txt) are tokenized in pieces cut after a line break, to bound the
# tokenizer's memory; a hub document is never this long.
PIECE_CHARS = 100_000


def holdout_cut(text: str, fraction: float) -> int:
    """Where the held-out tail of a document starts: the first line start at or after (1 - fraction)
    of it (the exact character when no line break follows)."""
    if not fraction:
        return len(text)
    cut = int(len(text) * (1.0 - fraction))
    newline = text.find("\n", max(cut - 1, 0))
    return cut if newline == -1 else newline + 1


def _pieces(text: str) -> list[str]:
    out = []
    while len(text) > PIECE_CHARS:
        cut = text.rfind("\n", 0, PIECE_CHARS) + 1 or PIECE_CHARS
        out.append(text[:cut])
        text = text[cut:]
    return out + [text]


@register_task("c4")
class CorpusTask(SourceTask):
    """C4 (`allenai/c4`, `en`, streamed) or any text corpus: documents packed into max_length rows."""

    version = 1

    def __init__(
        self,
        tokenizer,
        source: str,
        max_length: int,
        cache_dir: str,
        text_field: str = "text",
        holdout_fraction: float = 0.0,
        validation_split: str | None = None,
        validation_sequences: int | None = None,
        shuffle_buffer: int = 10_000,
        cache_tokens: bool = True,
        **source_options,
    ):
        super().__init__(tokenizer, source, max_length, cache_dir, **source_options)
        self.text_field = text_field
        if not 0.0 <= holdout_fraction < 1.0:
            raise ValueError(f"data.builder.holdout_fraction must be in [0, 1), got {holdout_fraction!r}")
        if holdout_fraction and validation_split:
            raise ValueError("set one of data.builder.holdout_fraction and data.builder.validation_split, not both")
        if validation_split and self.source.local:
            raise ValueError(f"validation_split names a hub split, but {source!r} is local; use holdout_fraction")
        if validation_split and validation_sequences is None:
            raise ValueError("validation_split needs data.builder.validation_sequences (how many rows to read)")
        if not cache_tokens and holdout_fraction and validation_sequences is None:
            raise ValueError(
                "cache_tokens=false with holdout_fraction needs data.builder.validation_sequences (how many "
                "held-out rows to read from the head of the stream)"
            )
        if validation_sequences is not None:
            positive_int(validation_sequences, "validation_sequences")
        self.holdout_fraction = holdout_fraction
        self.validation_split = validation_split
        self.validation_sequences = validation_sequences
        self.shuffle_buffer = positive_int(shuffle_buffer, "shuffle_buffer")
        self.cache_tokens = bool(cache_tokens)

    @property
    def schema(self) -> dict[str, Any]:
        return {self.text_field: str}

    def document(self, row: dict) -> str:
        """The text a row contributes (the AdaptLLM corpora add mined tasks to it)."""
        return row[self.text_field]

    def options(self) -> dict[str, Any]:
        return {"text_field": self.text_field, "holdout_fraction": self.holdout_fraction}

    def encode(self, texts: list[str]) -> list[list[int]]:
        """[BOS] + tokens + EOS for each text."""
        owners, pieces = [], []
        for i, text in enumerate(texts):
            for piece in _pieces(text):
                owners.append(i)
                pieces.append(piece)
        # The backend's encode_batch_fast gives the ids of tokenizer(pieces) without computing offsets
        # (2-3x faster, which matters on corpora).
        encodings = self.tokenizer.backend_tokenizer.encode_batch_fast(pieces, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        out = [list(self.bos()) for _ in texts]
        for i, piece_ids in zip(owners, ids):
            out[i].extend(piece_ids)
        for doc in out:
            doc.append(self.tokenizer.eos_token_id)
        return out

    def _token_stream(self, texts: Iterable[str]) -> Iterator[list[int]]:
        for chunk in batched(texts, 256):
            yield from self.encode(chunk)

    def parts(self, rows: Iterable[dict], stats: dict[str, int] | None = None) -> Iterator[tuple[str, str]]:
        """(trained head, held-out tail) of each non-empty document, in order: the one place both the
        cached and the on-the-fly path cut documents."""
        for row in rows:
            text = self.document(row)
            if not text.strip():
                if stats is not None:
                    stats["empty_skipped"] += 1
                continue
            cut = holdout_cut(text, self.holdout_fraction)
            yield text[:cut], text[cut:]

    def _build_documents(self, writer: Writer) -> dict[str, int]:
        stats = {"documents": 0, "empty_skipped": 0, "train_tokens": 0, "validation_tokens": 0}
        for chunk in batched(self.parts(self.source.rows(self.schema), stats), 256):
            for ids in self.encode([head for head, _ in chunk]):
                writer.append("train", ids)
                stats["train_tokens"] += len(ids)
            if self.holdout_fraction:
                for ids in self.encode([tail for _, tail in chunk if tail.strip()]):
                    writer.append("validation", ids)
                    stats["validation_tokens"] += len(ids)
            stats["documents"] += len(chunk)
        if not stats["documents"]:
            raise ValueError(f"{self.source.name}: no non-empty document in field {self.text_field!r}")
        log.info("%s: tokenized %s", self.name, stats)
        return stats

    def _documents(self) -> dict[str, Ragged]:
        names = ("train", "validation") if self.holdout_fraction else ("train",)
        arrays, _ = load_or_build(self.cache_dir, self.cache_keys(self.source), names, self._build_documents)
        return arrays

    def train_dataset(self) -> Dataset:
        if not self.cache_tokens:

            def documents() -> Iterator[list[int]]:
                rows = self.source.rows(self.schema, seed=self.seed, shuffle_buffer=self.shuffle_buffer)
                return self._token_stream(head for head, _ in self.parts(rows))

            return StreamingPackedRows(documents, self.max_length)
        docs = self._documents()["train"]
        return PackedRows(docs, permutation(len(docs), self.seed), self.max_length)

    def validation_dataset(self) -> Dataset:
        """Packed validation rows in source order (at most `validation_sequences` of them)."""
        if self.holdout_fraction and self.cache_tokens:
            docs = self._documents()["validation"]
        elif self.holdout_fraction:
            docs = self._stream_validation(self.source, held_out=True)
        elif self.validation_split:
            source = Source(
                self.source.name,
                split=self.validation_split,
                hub_config=self.source.hub_config,
                revision=self.source.revision,
                streaming=self.source.streaming,
            )
            docs = self._stream_validation(source, held_out=False)
        else:
            raise ValueError(
                f"data {self.name} has no validation data: set data.builder.holdout_fraction (local text) "
                "or data.builder.validation_split (hub)"
            )
        rows = PackedRows(docs, np.arange(len(docs)), self.max_length)
        if not len(rows):
            raise ValueError(f"data {self.name}: the validation part is empty; raise data.builder.holdout_fraction")
        if self.validation_sequences is not None and self.validation_sequences < len(rows):
            return Subset(rows, range(self.validation_sequences))
        return rows

    def _stream_validation(self, source: Source, held_out: bool) -> Ragged:
        """Validation documents from the head of a stream, in order, until `validation_sequences` rows
        are full: the held-out tails of `source`'s documents, or whole documents of a validation split."""
        wanted = self.validation_sequences * self.max_length

        def build(writer: Writer) -> dict[str, int]:
            pairs = self.parts(source.rows(self.schema))
            texts = (tail for _, tail in pairs if tail.strip()) if held_out else (head for head, _ in pairs)
            tokens = 0
            for ids in self._token_stream(texts):
                writer.append("validation", ids)
                tokens += len(ids)
                if tokens >= wanted:
                    break
            return {"validation_tokens": tokens}

        keys = {**self.cache_keys(source), "validation_sequences": self.validation_sequences, "held_out": held_out}
        arrays, _ = load_or_build(self.cache_dir, keys, ("validation",), build)
        return arrays["validation"]


class ReadingComprehensionCorpus(CorpusTask):
    """A domain corpus turned AdaptLLM-style into reading-comprehension documents (see adaptllm.py),
    then packed like C4. `title_field` names a title column when the source has one (news); else a
    short first line is taken as the title (PubMed abstracts in the Pile put the title first)."""

    domain: str

    def __init__(
        self,
        tokenizer,
        source: str,
        max_length: int,
        cache_dir: str,
        title_field: str | None = None,
        miners: list[str] | tuple[str, ...] = MINERS,
        max_per_miner: int = 2,
        **options,
    ):
        super().__init__(tokenizer, source, max_length, cache_dir, **options)
        unknown = [m for m in miners if m not in MINERS]
        if unknown or not miners:
            raise ValueError(f"data.builder.miners has unknown or no miners {unknown}; choose from {list(MINERS)}")
        self.title_field = title_field
        self.miners = tuple(miners)
        self.max_per_miner = positive_int(max_per_miner, "max_per_miner")

    @property
    def schema(self) -> dict[str, Any]:
        return {self.text_field: str, **({self.title_field: str} if self.title_field else {})}

    def document(self, row: dict) -> str:
        title = row[self.title_field] if self.title_field else None
        return reading_comprehension(row[self.text_field], title, self.domain, self.miners, self.max_per_miner)

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "domain": self.domain,
            "title_field": self.title_field,
            "miners": list(self.miners),
            "max_per_miner": self.max_per_miner,
        }


@register_task("biomed_cpt")
class BiomedCorpus(ReadingComprehensionCorpus):
    version = 1
    domain = "biomedicine"


@register_task("finance_cpt")
class FinanceCorpus(ReadingComprehensionCorpus):
    version = 1
    domain = "finance"

"""The paper's supervised fine-tuning formats: Tulu v2 chat (instruction tuning) and MetaMath's Alpaca
prompt (math), with the loss on the model's part only.

A row is rendered to one string plus the character spans that carry loss, and the string is tokenized
once, as the reference training code tokenizes it (so BPE merges across a boundary come out the same
as theirs). A token carries loss iff its first character lies in a loss span. The EOS is written as
the tokenizer's EOS string, which every fast tokenizer maps to the single EOS id (checked at start).
Sequences start with BOS when the tokenizer has one.

Truncation: an example longer than `max_length` tokens keeps its first `max_length` tokens; an
example left with no loss-carrying token (its first reply starts past the limit) is dropped, and the
counts of both are recorded in the cache's meta.json and logged.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from .cache import Writer, load_or_build
from .registry import register_task
from .rows import ExampleRows, permutation
from .task import SourceTask, batched

log = logging.getLogger("mora")

Spans = list[tuple[int, int]]


class ChatTask(SourceTask):
    """Render, tokenize with offsets, mask, truncate, cache; rows come back shuffled by seed."""

    schema: ClassVar[dict[str, Any]]

    def __init__(self, tokenizer, source: str, max_length: int, cache_dir: str, **source_options):
        super().__init__(tokenizer, source, max_length, cache_dir, **source_options)
        eos = tokenizer.eos_token
        if tokenizer(eos, add_special_tokens=False)["input_ids"] != [tokenizer.eos_token_id]:
            raise ValueError(f"the tokenizer does not map its EOS string {eos!r} to the EOS id; the chat formats need that")

    def render(self, row: dict) -> tuple[str, Spans]:
        """The training text of one row and the [start, end) character spans that carry loss."""
        raise NotImplementedError

    def encode(self, rows: list[dict]) -> list[tuple[list[int], np.ndarray]]:
        """Token ids and per-token loss mask of each row, before truncation."""
        rendered = [self.render(row) for row in rows]
        enc = self.tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for (_, spans), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
            starts = np.fromiter((start for start, _ in offsets), dtype=np.int64, count=len(offsets))
            mask = np.zeros(len(ids), dtype=np.bool_)
            for a, b in spans:
                mask |= (starts >= a) & (starts < b)
            bos = self.bos()
            out.append((bos + list(ids), np.concatenate([np.zeros(len(bos), dtype=np.bool_), mask])))
        return out

    def _build(self, writer: Writer) -> dict[str, int]:
        kept = truncated = dropped = 0
        for rows in batched(self.source.rows(self.schema), 256):
            for ids, mask in self.encode(rows):
                if len(ids) > self.max_length:
                    truncated += 1
                    ids, mask = ids[: self.max_length], mask[: self.max_length]
                if not mask.any():
                    dropped += 1
                    continue
                writer.append("train", ids, mask)
                kept += 1
        if not kept:
            raise ValueError(
                f"{self.source.name}: no example keeps a loss-carrying token within max_length="
                f"{self.max_length}; raise data.builder.max_length"
            )
        stats = {"examples": kept, "truncated": truncated, "dropped_no_loss_token": dropped}
        log.info("%s: tokenized %s", self.name, stats)
        return stats

    def train_dataset(self) -> ExampleRows:
        arrays, _ = load_or_build(self.cache_dir, self.cache_keys(self.source), ("train",), self._build)
        return ExampleRows(arrays["train"], permutation(len(arrays["train"]), self.seed))


@register_task("tulu_v2")
class TuluChat(ChatTask):
    """Tulu v2 SFT mixture (`messages`: [{role, content}]) in the Tulu chat format of open-instruct:

        <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{reply}</s>\\n<|user|>\\n...

    each content stripped of surrounding whitespace, no newline after the last message. Loss on each
    assistant reply and its EOS. (open-instruct also trains on the newline after a non-final EOS;
    here that newline is a separator and carries no loss.)"""

    version = 1
    schema = {"messages": [{"role": str, "content": str}]}
    roles = ("system", "user", "assistant")

    def render(self, row: dict) -> tuple[str, Spans]:
        text, spans = "", []
        for i, message in enumerate(row["messages"]):
            role = message["role"]
            if role not in self.roles:
                raise ValueError(
                    f"messages[{i}] has role {role!r} (content {message['content'][:40]!r}); "
                    f"Tulu roles are {self.roles}"
                )
            text += ("\n" if i else "") + f"<|{role}|>\n"
            body = message["content"].strip()
            if role == "assistant":
                body += self.tokenizer.eos_token
                spans.append((len(text), len(text) + len(body)))
            text += body
        return text, spans


@register_task("metamath")
class MetaMathAlpaca(ChatTask):
    """MetaMathQA (`query`, `response`) in the Alpaca prompt, as MetaMath's train_math.py and the MoRA
    authors' training code build it: a query with a new line is split at its first one into the
    instruction and an input (the "with input" template, `### Input:`; every GSM_FOBAR query and the
    multi-line MATH ones), any other query is the instruction alone. The response follows
    `### Response:` directly and ends with EOS. Loss on the response and its EOS. The paper does not give
    a length; MetaMath trained with 512 tokens, the config's default."""

    version = 2
    schema = {"query": str, "response": str}
    # Alpaca's two templates (tatsu-lab/stanford_alpaca PROMPT_DICT, which MetaMath reuses)
    prompt_no_input = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\n{instruction}\n\n### Response:"
    )
    prompt_input = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
        "### Input:\n{input}\n\n### Response:"
    )

    def prompt(self, query: str) -> str:
        """The prompt of one query: split at its first new line when text follows it (Alpaca keeps the
        no-input template for an empty input)."""
        instruction, newline, rest = query.partition("\n")
        if newline and rest:
            return self.prompt_input.format(instruction=instruction, input=rest)
        return self.prompt_no_input.format(instruction=query)

    def render(self, row: dict) -> tuple[str, Spans]:
        prompt = self.prompt(row["query"])
        text = prompt + row["response"] + self.tokenizer.eos_token
        return text, [(len(prompt), len(text))]

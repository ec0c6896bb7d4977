"""The interfaces between the pieces a run is built from, as typing.Protocols: what training and the
evaluators need from the task a data builder returns, and what an evaluator is. A new task implements
`Task`, and `HeldOutTask` or `KeyValueTask` for the evaluators that need them (docs/architecture.md:
"add a task"); tests/test_architecture.py checks every registered builder against them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Task(Protocol):
    """What `mora.train` needs from a task. Optional: a `source` (mora.data.sources.Source), recorded as
    the run's data provenance."""

    def train_dataset(self) -> Any:
        """Rows {input_ids, labels} (labels -100 where no loss is taken): a list or map-style Dataset
        (`train.epochs` needs its len()), or an IterableDataset for a streamed corpus."""

    def collator(self) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        """Pads a list of rows into a batch: input_ids, attention_mask, labels."""


@runtime_checkable
class HeldOutTask(Task, Protocol):
    """A task with held-out rows, in a fixed order: what `Perplexity` scores."""

    def validation_dataset(self) -> Sequence[dict]:
        """Rows like train_dataset's, never trained on."""


@runtime_checkable
class KeyValueTask(Task, Protocol):
    """Pairs learned by heart: what `CharAccuracy` prompts with each key and compares with its value."""

    pairs: list[tuple[str, str]]

    def prompt_ids(self, key: str) -> list[int]:
        """The token ids that ask for `key`'s value (BOS, the key, the separator)."""


class Evaluator(Protocol):
    """`eval.metric` (run at the configured steps of training) and the benchmarks' perplexity: scores a
    model on a task. Its class declares `version` (bump when the number changes: the runs before become
    stale) and `inert_options` (options that cannot change the number, left out of a run's id)."""

    def __call__(self, model: torch.nn.Module, tokenizer: Any, task: Task) -> dict[str, float]:
        """{metric name: value}; leaves the model in the training mode it found it in."""

"""Task data builders, chosen by name in conf/data/*.yaml (see registry.py). Each returns a task object
(mora.interfaces.Task): a `train_dataset()` of {input_ids, labels} rows (labels -100 where no loss is
taken) and a `collator()`; corpora also have a `validation_dataset()` for perplexity."""

from .registry import TASKS, build_task

__all__ = ["TASKS", "build_task"]

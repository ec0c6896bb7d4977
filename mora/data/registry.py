"""Builders by name: `conf/data/*.yaml` picks one with `task: <name>` and passes the rest as options."""

from __future__ import annotations

import inspect
from typing import Any

from .chat import MetaMathAlpaca, TuluChat
from .corpus import BiomedCorpus, CorpusTask, FinanceCorpus
from .uuid import UUIDTask

BUILDERS: dict[str, Any] = {
    "uuid": UUIDTask,
    "tulu_v2": TuluChat,
    "metamath": MetaMathAlpaca,
    "biomed_cpt": BiomedCorpus,
    "finance_cpt": FinanceCorpus,
    "c4": CorpusTask,
}


def accepted_options(builder: type) -> set[str]:
    """Every keyword the builder's __init__ chain takes (subclasses forward the rest with **options)."""
    names = set()
    for cls in builder.__mro__:
        if "__init__" in vars(cls) and cls is not object:
            params = inspect.signature(vars(cls)["__init__"]).parameters.values()
            names |= {p.name for p in params if p.kind is not p.VAR_KEYWORD and p.name != "self"}
    return names


def build_task(task: str, tokenizer, **options):
    """The task object train.py trains on: `train_dataset()` rows and a `collator()`."""
    try:
        builder = BUILDERS[task]
    except KeyError:
        raise ValueError(f"unknown data builder {task!r}; choose one of {sorted(BUILDERS)}") from None
    allowed = accepted_options(builder) - {"tokenizer"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"data builder {task!r} takes no option(s) {unknown}; allowed: {sorted(allowed)}")
    try:
        inspect.signature(builder).bind(tokenizer=tokenizer, **options)
    except TypeError as exc:
        raise ValueError(f"data builder {task!r}: {exc}; set it under data.builder") from None
    return builder(tokenizer=tokenizer, **options)


def _builder_keys(node: dict) -> set[str]:
    """The keys a `data.builder` node may hold: `task` and the options of the builder it names (read by
    mora.schema before anything is built; an unknown task is left for build_task to name)."""
    builder = BUILDERS.get(node.get("task"))
    if builder is None:
        return set(node)
    return {"task"} | (accepted_options(builder) - {"tokenizer"})


build_task.accepted_keys = _builder_keys

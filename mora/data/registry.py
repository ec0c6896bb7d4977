"""Data builders by name: `conf/data/*.yaml` picks one with `task: <name>` and passes the rest as options.
Each builder class registers itself next to its definition (`@register_task("uuid")`)."""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from ..fingerprint import content_fingerprint, hub_revision
from ..interfaces import Task
from ..registry import Registry
from .sources import Source

TASKS = Registry("data builder", "mora.data", "name")
register_task = TASKS.register  # class decorator: `@register_task("uuid")` makes a builder `task: uuid`


def builder_of(task: str) -> type:
    return TASKS.get(task)


def _init_parameters(builder: type) -> list[inspect.Parameter]:
    """The keywords of the builder's __init__ chain, the subclass's first (subclasses forward the rest
    with **options)."""
    params = []
    for cls in builder.__mro__:
        if "__init__" in vars(cls) and cls is not object:
            params += [
                p for p in inspect.signature(vars(cls)["__init__"]).parameters.values()
                if p.kind is not p.VAR_KEYWORD and p.name != "self"
            ]
    return params


def accepted_options(builder: type) -> set[str]:
    """Every keyword the builder's __init__ chain takes."""
    return {p.name for p in _init_parameters(builder)}


def identity(options: dict[str, Any], cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """What of a `data.builder` node is a run's identity: the builder's options with its defaults filled
    in, less those it declares inert (`inert_options`). A local source enters by the content of its
    files (never their path), and the hub coordinates a local source ignores are dropped; a hub source
    by its id, with its config, split and revision as options of their own."""
    options = {k: v for k, v in options.items() if k != "_target_"}
    task = options.pop("task", None)
    builder = builder_of(task)
    defaults = {p.name: p.default for p in reversed(_init_parameters(builder)) if p.default is not p.empty}
    out = {**defaults, **options}
    for name in getattr(builder, "inert_options", ()):
        out.pop(name, None)
    if "source" in out:
        coordinates = {f.name: out.pop(f.name) for f in dataclasses.fields(Source) if f.name in out and f.name != "name"}
        source = Source(out["source"], **coordinates)
        if source.local:
            out["source"] = {"content": content_fingerprint(source.files, cache_dir)}
        else:
            out.update(coordinates, source={"hub": source.name})
    return {"task": task, **out}


def provenance(task: Any) -> dict[str, Any] | None:
    """What a built task reads, for metrics.json: its local files, or its hub dataset with the commit the
    requested revision resolved to when the run started (None: the builder reads no source)."""
    source = getattr(task, "source", None)
    if not isinstance(source, Source):
        return None
    if source.local:
        return {"files": [str(p) for p in source.files]}
    return {"hub": source.name, "config": source.hub_config, "split": source.split, "revision": source.revision,
            "commit": hub_revision("dataset", source.name, source.revision)}


def build_task(task: str, tokenizer, **options) -> Task:
    """The `_target_` of every conf/data/*.yaml: the task a run trains on (mora.interfaces.Task)."""
    builder = builder_of(task)
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
    try:
        builder = builder_of(node.get("task"))
    except ValueError:
        return set(node)
    return {"task"} | (accepted_options(builder) - {"tokenizer"})


build_task.accepted_keys = _builder_keys

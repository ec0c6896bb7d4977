"""What makes a run the run it is: the identity its id hashes, and the versions of the code that made it.

The id is a hash of the run after validation and normalisation: the method's options as its validated
config states them (`AdapterConfig.identity()`: aliases resolved, defaults filled in, inert options
dropped), the data builder's options with local sources by content (`mora.data.registry.identity`),
model and evaluation builders with their defaults filled in (a local model directory by content), the
train settings that change the optimisation, the seed and the experiment name; numbers compare by value
(4 == 4.0). Nothing about where or how fast the run is computed enters it: each part declares its inert
keys once, next to what it describes (the tables below, `inert_fields`, `inert_options`), and
docs/results_store.md gives the reason for each.

A run's results versions name the version of every component that computed it (the training loop, the
shared adapter code, the method, the data builder, the model and metric builders); a component bumps
its version when a change alters what it computes, and a run recorded under an older one is stale.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib
import inspect
import json
import subprocess
from pathlib import Path
from typing import Any

# Bump when a change to what enters the id changes the ids of existing runs: a store written before
# is then read as "old id scheme: stale" until `python -m mora.runs migrate` re-keys it.
ID_SCHEME = 2

# Top-level keys that are not part of what a run computes (every other top-level key is).
ROOT_INERT = {
    "paths": "where the store, the data cache and the fixtures are on this machine",
    "logger": "where metrics are mirrored (wandb); the run and its metrics.json are the same",
    "launcher": "how the run is started (here, Slurm)",
    "artifact": "which paper table or figure the run fills: one run can fill several",
    "benchmark": "what is scored after training; each suite's scores are kept apart in metrics.json",
    "threads": "CPU threads: speed only",
}
# `train` keys that change how fast or where a run is computed, not what it computes.
TRAIN_INERT = {
    "micro_batch_size": "the split of the global batch into forward passes (accumulation makes up the rest)",
    "deepspeed": "the ZeRO stage and offload: where optimizer state lives, not the update",
    "save_every": "checkpoint cadence",
    "save_total_limit": "checkpoints kept on disk",
    "keep_checkpoints": "whether checkpoints are deleted after the run",
    "log_every": "how often the training loss is logged (the curve's resolution, not the training)",
    "progress_bar": "console output",
    "compile": "torch.compile: speed only",
    "gradient_checkpointing": "activation recomputation: memory only",
}


def canonical(value: Any) -> Any:
    """JSON-ready with one spelling per value: mappings sorted, tuples as lists, integral floats as
    ints (`lr_ratio: 4` and `4.0` are one run)."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def locate(target: str) -> Any:
    """The builder a `_target_` names: only this project's builders (mora/builders.py) are imported, so
    reading a stored config's id never runs code the config names."""
    from .builders import BUILDERS, RefusedTarget

    if target not in BUILDERS:
        raise RefusedTarget(f"_target_ {target!r} is not one of this project's builders (mora/builders.py); refused")
    module, _, name = str(target).rpartition(".")
    return getattr(importlib.import_module(module), name)


def _local_content(value: Any, cache_dir: str | None) -> Any:
    """The content of what a location option names when it is local (a directory, a file, a glob or a
    list of them); None when it names nothing here (a hub id)."""
    from .fingerprint import content_fingerprint, directory_fingerprint

    patterns = [value] if isinstance(value, str) else value if isinstance(value, (list, tuple)) else []
    if not patterns or not all(isinstance(p, str) for p in patterns):
        return None
    if len(patterns) == 1 and Path(patterns[0]).is_dir():
        return directory_fingerprint(patterns[0], cache_dir)
    files = sorted({Path(f) for p in patterns for f in glob.glob(p) if Path(f).is_file()})
    return content_fingerprint(files, cache_dir) if files else None


def target_identity(node: dict[str, Any], cache_dir: str | None) -> dict[str, Any]:
    """A `_target_` node with the builder's defaults filled in, less the options it declares inert (its
    `inert_options`, else its module's `INERT_OPTIONS`); an option its module lists in
    `LOCATION_OPTIONS` (a hub id, a local directory, files) enters by content when it names local files."""
    builder = locate(node["_target_"])
    module = inspect.getmodule(builder)
    params = inspect.signature(builder).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not p.empty and p.kind is not p.VAR_KEYWORD}
    out = {**defaults, **node}
    for name in getattr(builder, "inert_options", getattr(module, "INERT_OPTIONS", ())):
        out.pop(name, None)
    for name in getattr(module, "LOCATION_OPTIONS", ()):
        content = _local_content(out.get(name), cache_dir)
        if content is not None:
            out[name] = {"content": content}
    return out


def _with_targets(node: Any, cache_dir: str | None) -> Any:
    if isinstance(node, dict):
        node = {k: _with_targets(v, cache_dir) for k, v in node.items()}
        return target_identity(node, cache_dir) if "_target_" in node else node
    return node


def _method(node: dict[str, Any], cache_dir: str | None) -> dict[str, Any]:
    from .adapters import config_from_dict

    return config_from_dict(node).identity()


def _data(node: dict[str, Any], cache_dir: str | None) -> dict[str, Any]:
    from .data.registry import identity

    return {**node, "builder": identity(node["builder"], cache_dir)}


def _train(node: dict[str, Any], cache_dir: str | None) -> dict[str, Any]:
    out = {k: v for k, v in node.items() if k not in TRAIN_INERT}
    if out.get("schedule") == "constant":
        out.pop("min_lr_ratio", None)  # the floor of a decay that never happens
    return out


PARTS = {"method": _method, "data": _data, "train": _train, "model": _with_targets, "eval": _with_targets}


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What a run's id hashes (written beside it as identity.json), from its resolved config."""
    cache_dir = (config.get("paths") or {}).get("cache_dir")
    out = {}
    for key, value in config.items():
        if key in ROOT_INERT:
            continue
        out[key] = PARTS[key](value, cache_dir) if key in PARTS else value
    return {"id_scheme": ID_SCHEME, **canonical(out)}


def hash_identity(identity: dict[str, Any]) -> str:
    text = json.dumps(canonical(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_id(config: dict[str, Any]) -> str:
    return hash_identity(run_identity(config))


def results_versions(config: dict[str, Any]) -> dict[str, int]:
    """The version of every component that computes this run (module docstring)."""
    from . import training
    from .adapters import config as adapter_config
    from .data.registry import builder_of

    versions = {"training": training.RESULTS_VERSION, "adapters": adapter_config.RESULTS_VERSION}
    method = config["method"]["method"]
    versions[f"method.{method}"] = adapter_config.config_class(method).version
    task = config["data"]["builder"]["task"]
    versions[f"data.{task}"] = builder_of(task).version

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "_target_" in node:
                builder = locate(node["_target_"])
                version = getattr(builder, "version", None) or getattr(inspect.getmodule(builder), "RESULTS_VERSION", None)
                if isinstance(version, int):
                    versions[str(node["_target_"])] = version
            for v in node.values():
                visit(v)

    visit(config.get("model"))
    visit(config.get("eval"))
    return versions


def stale_reason(recorded: dict[str, Any] | None, current: dict[str, int]) -> str | None:
    """Why results recorded under `recorded` versions are not what the current code computes; None
    when they are."""
    if not recorded:
        return "made before results versions were recorded"
    changed = [f"{k} {recorded.get(k, '-')} -> {v}" for k, v in sorted(current.items()) if recorded.get(k) != v]
    return "made by older code: " + ", ".join(changed) if changed else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The git commit of the checkout (and whether it had uncommitted changes); None outside git."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if dirty is None else bool(dirty)}

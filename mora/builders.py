"""The one way an object is built from a config: `build(config, key)`, through this project's builders only.

A `_target_` names a function to call. Configs do not all come from this repository's conf/: a run's
`config.json` lives in a results store that a lab shares, experiment specs and grid manifests are
files anyone with write access can edit. So a config may name only the builders listed in BUILDERS,
and may not ask for a callable instead of an object (`_partial_`). The check reads names only, before
anything is imported or called (importing a module a config names already runs its code), and covers
the whole node: nested `_target_`s and `_args_` too. Hydra's `instantiate` then builds the checked node.

Overrides (a spec's, a manifest line's) follow the same rule, and may not touch `hydra.*`, where Hydra
itself calls targets (callbacks, launcher, sweeper, logging handlers): `check_overrides`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Every `_target_` a config may name. A new builder is added here, by the name conf/ uses for it; a new
# method or data task is not: it registers with its family's builder (mora.registry).
BUILDERS = frozenset(
    {
        "mora.adapters.build_method",
        "mora.models.char_tokenizer",
        "mora.models.hub_tokenizer",
        "mora.models.llama_from_config",
        "mora.models.local_bpe_tokenizer",
        "mora.models.pretrained",
        "mora.data.build_task",
        "mora.evaluation.perplexity.Perplexity",
        "mora.evaluation.uuid_accuracy.CharAccuracy",
    }
)


class RefusedTarget(ValueError):
    """A config or override asks to call something that is not one of this project's builders."""


def _join(key: str, name: Any) -> str:
    return f"{key}.{name}" if key else str(name)


def check_targets(config: Any, origin: str = "config", key: str = "") -> None:
    """Raise RefusedTarget at the first thing in `config` that would make Hydra call anything but a
    registered builder: a foreign `_target_` (at any depth, `_args_` included) or `_partial_`. The
    message names `origin` (e.g. the run), the key and the target."""
    if isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.to_container(config, resolve=True)
    if isinstance(config, Mapping):
        if "_target_" in config:
            target = config["_target_"]
            if not isinstance(target, str) or target not in BUILDERS:
                raise RefusedTarget(
                    f"{origin}: {_join(key, '_target_')}={target!r} is not one of this project's builders "
                    "(mora/builders.py); refused, nothing was called"
                )
        if config.get("_partial_"):
            raise RefusedTarget(
                f"{origin}: {_join(key, '_partial_')} asks for a callable, not an object; configs hold values "
                "only: refused, nothing was called"
            )
        for name, value in config.items():
            check_targets(value, origin, _join(key, name))
    elif isinstance(config, (list, tuple)):
        for index, value in enumerate(config):
            check_targets(value, origin, f"{key}[{index}]")


def build(config: Any, key: str, origin: str = "config", /, **kwargs: Any) -> Any:
    """The object the node at `key` (dotted) of `config` describes, made by its registered builder with
    `kwargs` added (objects the caller built already, e.g. the tokenizer). `origin` names where the
    config came from in errors (e.g. "run runs/uuid_mini/0a1b2c3d4e5f").

    The node is resolved and checked first (`check_targets`). A builder's own ValueError (a missing
    data file, an unknown option) comes out as itself rather than wrapped in Hydra's
    InstantiationException, so the CLI reports it as the one-line error it is (exit status 2)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    root = config if isinstance(config, DictConfig) else OmegaConf.create(config)
    node = OmegaConf.select(root, key, throw_on_missing=True)
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ValueError(f"{origin}: {key} names nothing to build (no _target_)")
    checked = OmegaConf.to_container(node, resolve=True)
    check_targets(checked, origin, key)
    try:
        return instantiate(checked, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ValueError):
            raise exc.__cause__ from None
        raise


@dataclass
class Parts:
    """What a run is built from before any method touches it."""

    tokenizer: Any
    task: Any
    evaluator: Any | None
    model: Any | None


def build_parts(config: Any, origin: str = "config", network: bool = True) -> Parts:
    """The run's tokenizer, data task, evaluator and (with `network`) base model, built in the one order
    that makes a random initialisation come out the same wherever it is built (training, evaluation
    from the store, the benches): seed, tokenizer, task, evaluator, network. The whole config is
    checked first: a foreign target anywhere stops it before any builder runs."""
    from transformers import set_seed

    check_targets(config, origin)
    root = config if isinstance(config, DictConfig) else OmegaConf.create(config)
    set_seed(root.seed)
    tokenizer = build(root, "model.tokenizer", origin)
    task = build(root, "data.builder", origin, tokenizer=tokenizer)
    evaluator = build(root, "eval.metric", origin) if root.eval.get("metric") else None
    model = build(root, "model.network", origin, tokenizer=tokenizer) if network else None
    return Parts(tokenizer, task, evaluator, model)


@functools.lru_cache(maxsize=1)
def _override_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def check_overrides(overrides: Iterable[str], origin: str) -> list:
    """Refuse Hydra overrides that would make anything callable: a `_target_` set to anything but a
    registered builder (directly or inside a mapping value), `_partial_`, or any change under `hydra`.
    Returns them parsed (Hydra's Override objects), for callers that go on to apply them."""
    from hydra.errors import OverrideParseException

    try:
        parsed = _override_parser().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ValueError(f"{origin}: {exc}".replace("\n", " ")) from None
    for override in parsed:
        key = override.key_or_group
        if key.split(".")[0].split("/")[0] == "hydra":
            raise RefusedTarget(
                f"{origin}: {override.input_line!r} changes Hydra's own config, where Hydra calls targets "
                "(callbacks, launcher, sweeper, logging); a run's overrides set its values only: refused"
            )
        if override.is_delete():
            continue
        values = list(override.sweep_iterator()) if override.is_discrete_sweep() else [override.value()]
        for value in values:
            head, _, last = key.rpartition(".")
            if last in ("_target_", "_partial_"):
                check_targets({last: value}, origin, head)
            else:
                check_targets(value, origin, key)
    return parsed

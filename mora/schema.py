"""One validation pass over a composed config, before anything is built or written: every key must be
one the code reads, and a misspelt one fails naming the closest valid key (`train.lrr` -> `train.lr`).

Where the valid keys come from, so that defaults stay in one place:
- the top level, `paths`, and the groups `model`, `data`, `train`, `eval`, `logger`, `benchmark`: the
  keys of the group's default YAML (the option conf/config.yaml's defaults list picks), and one level
  down wherever that YAML holds a non-empty mapping (`paths`, `logger.wandb`); a key whose default is
  not such a mapping takes any value (`train.deepspeed`, `benchmark.suites`, `benchmark.gen_kwargs`);
- a node with `_target_` (`method`, `model.network`, `model.tokenizer`, `data.builder`, `eval.metric`):
  the parameters of the callable it names. One that takes **kwargs passes other keys on (to
  `from_pretrained`, say) and accepts them, except one that nearly spells a parameter of its own (a
  typo), unless it names the keys it takes with an `accepted_keys(node)` attribute (the builders of a
  registry do: `mora.adapters.build_method` the fields of the options dataclass `method` picks,
  `mora.data.build_task` the options of the builder `task` picks).
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Iterable

from .conf import CONF_DIR, load_option

INSTANTIATE_KEYS = {"_target_", "_args_", "_partial_", "_recursive_", "_convert_"}
# `train.lrr=...` as Hydra receives it: a dotted key, no `+`/`~` prefix, no `group/option` or `@package`
_DOTTED_VALUE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)+=")


def closest(key: str, valid: Iterable[str]) -> str | None:
    """The valid key `key` most likely misspells, if one is close enough (difflib's ratio >= 0.6)."""
    found = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return found[0] if found else None


def _unknown(where: str, key: str, valid: Iterable[str]) -> str:
    prefix = f"{where}." if where else ""
    guess = closest(key, valid)
    if guess is not None:
        return f"{prefix}{key} (did you mean {prefix}{guess}?)"
    listed = sorted(k for k in valid if k == "_target_" or not k.startswith("_"))
    return f"{prefix}{key} ({where or 'the top level'} takes {', '.join(listed)})"


def default_schema() -> dict[str, Any]:
    """The top level of conf/config.yaml, each group replaced by its default option's content."""
    from omegaconf import OmegaConf

    root = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))
    schema = {k: v for k, v in root.items() if k not in ("defaults", "hydra")}
    for entry in root.get("defaults", []):
        if isinstance(entry, dict):
            for group, option in entry.items():
                if option and not group.startswith("override ") and "/" not in group:
                    schema[group] = load_option(group, option)
    return schema


def _target_keys(target: str, node: dict[str, Any], where: str) -> tuple[set[str], bool]:
    """The keys a `_target_` node names, and whether the callable takes others too (it has **kwargs)."""
    from hydra.utils import get_object

    try:
        builder = get_object(target)
    except Exception as exc:
        raise ValueError(f"{where}._target_={target!r} cannot be imported ({type(exc).__name__}: {exc})") from None
    if hasattr(builder, "accepted_keys"):
        return set(builder.accepted_keys(node)) | INSTANTIATE_KEYS, False
    params = inspect.signature(builder).parameters.values()
    named = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} | INSTANTIATE_KEYS
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _check(where: str, node: dict[str, Any], schema: dict[str, Any] | None, errors: list[str]) -> None:
    valid, open_ended = set(schema or {}), False
    if "_target_" in node:
        valid, open_ended = _target_keys(str(node["_target_"]), node, where)
    elif isinstance((schema or {}).get("_target_"), str):
        raise ValueError(f"{where} has no _target_: set {where}._target_ to the callable that builds it, as conf/ does")
    for key, value in node.items():
        path = f"{where}.{key}" if where else key
        # a callable with **kwargs passes other keys on; one that nearly spells its own parameter is a typo
        if key not in valid and not (open_ended and closest(key, valid) is None):
            errors.append(_unknown(where, key, valid))
        elif isinstance(value, dict):
            sub = None if "_target_" in node else (schema or {}).get(key)
            if "_target_" in value or (isinstance(sub, dict) and sub):
                _check(path, value, sub if isinstance(sub, dict) else None, errors)


def check_config(cfg: Any) -> None:
    """Raise ValueError naming every key of `cfg` (a composed DictConfig, or its dict) that no code reads,
    each with the closest valid key. Call it before anything is built or written."""
    from omegaconf import DictConfig, OmegaConf

    config = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
    config.pop("hydra", None)
    schema = default_schema()
    errors: list[str] = []
    _check("", config, schema, errors)
    if errors:
        what = "unknown config key" if len(errors) == 1 else "unknown config keys"
        raise ValueError(f"{what} {'; '.join(errors)}; nothing was run")


def set_or_add_overrides(argv: list[str]) -> list[str]:
    """`argv` with each dotted value override (`train.lr=1e-3`) given to Hydra as `++train.lr=1e-3`.

    Hydra refuses a key the config lacks with the advice to add it (`+train.lrr=1e-3`): the wrong advice
    for a typo. As `++` (set, or add when absent) every key reaches check_config, which names the closest
    valid one. Group choices (`method=mora`), `+`/`~` overrides and `hydra.*` are left alone."""
    out = argv[:1]
    for arg in argv[1:]:
        if _DOTTED_VALUE.match(arg) and not arg.startswith("hydra."):
            arg = "++" + arg
        out.append(arg)
    return out

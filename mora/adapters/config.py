"""Method options as validated dataclasses, and the registry that maps a method name to them.

Each method module registers its config class with `@register("name")`; nothing outside that module
needs to know the method exists. A config is built the way every config node is (mora.builders):
`conf/method/<name>.yaml` names the builder, `build_method`, as its `_target_`. The dataclass declares
and checks the options; their defaults live in the YAML only (`conf/method/_base.yaml` holds the keys
every method shares), and `config_from_dict` takes from there what a dict leaves out, so Python callers
(`make_config("lora", 8)`) get the same defaults as Hydra runs. Configs are plain data so that Hydra
dicts and adapter checkpoints round-trip through `config_from_dict` / `AdapterConfig.to_dict`. A config
also says what of it is a run's
identity (`identity()`: every option after validation, defaults filled in, the inert ones dropped) and
which version of the method's behaviour it stands for (`version`), so the results store can tell two
runs apart, and tell an old result from a current one (docs/results_store.md).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from ..conf import CONF_DIR, load_option
from ..registry import Registry

# Bump when the code every method shares (wrapping, freezing, merging, optimizer groups) changes what a
# run computes: the runs made before are then listed as stale (docs/results_store.md).
RESULTS_VERSION = 1

# Options earlier versions took and this one does not, with what became of them: a run's stored config
# that names one is read without it (`mora.runs migrate`), never a config given to train.
RETIRED_OPTIONS = {"fp32": "adapter weights are always fp32 (docs/precision.md)"}

METHODS = Registry("method", "mora.adapters", "method")
register = METHODS.register  # class decorator: `@register("lora")` makes a config class `method: lora`


def available_methods() -> list[str]:
    return METHODS.names()


def config_class(method: str) -> type[AdapterConfig]:
    return METHODS.get(method)


@dataclass
class AdapterConfig:
    """Options every method shares (conf/method/_base.yaml). `r` fixes the parameter budget (d + k) * r
    of a layer; `target_modules` are the nn.Linear layers adapted, `trainable_modules` others trained
    in full (embeddings, norms, head in pretraining)."""

    r: int
    target_modules: tuple[str, ...]
    trainable_modules: tuple[str, ...]
    dropout: float

    method: ClassVar[str] = "?"
    # Bump (in the method's own class) when the method's layer or options change what a run computes.
    version: ClassVar[int] = 1
    # The nn.Module class that wraps a targeted nn.Linear; None means "train the base in place".
    layer_class: ClassVar[type | None] = None

    def __post_init__(self) -> None:
        self.target_modules = _as_tuple(self.target_modules, "target_modules")
        self.trainable_modules = _as_tuple(self.trainable_modules, "trainable_modules")
        self.validate()

    def validate(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"{self.method}: r must be a positive integer, got {self.r!r}; set method.r >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{self.method}: dropout must be in [0, 1), got {self.dropout!r}")
        if self.layer_class is not None and not self.target_modules:
            raise ValueError(f"{self.method}: target_modules is empty; name at least one module pattern")

    def restart_options(self) -> RestartOptions | None:
        """How this method restarts (merge-and-reinit); None for methods that never restart."""
        return None

    def lr_multipliers(self) -> dict[str, float]:
        """Learning-rate factor per adapter parameter name (LoRA+ speeds up B); 1 for the rest."""
        return {}

    def peft_options(self) -> dict[str, Any] | None:
        """This method's options as peft's LoraConfig fields, or None where peft has no such method
        (then the adapter is saved in mora-bench's own layout only)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def inert_fields(self) -> set[str]:
        """Options that cannot change what this run computes (with no adapter layer, dropout does nothing)."""
        return set() if self.layer_class is not None else {"dropout"}

    def identity(self) -> dict[str, Any]:
        """What of this config is a run's identity: every option as validated (aliases resolved,
        defaults filled in), less the inert ones."""
        inert = self.inert_fields()
        return {k: v for k, v in self.to_dict().items() if k not in inert}


@dataclass
class RestartOptions:
    """ReLoRA-style restarts: merge every `merge_every` steps, reset optimizer state, re-warm the LR
    over `rewarm_steps`; `optimizer_reset` "full" zeroes the moments, "magnitude" keeps the
    `optimizer_keep` fraction of the largest."""

    merge_every: int
    rewarm_steps: int
    optimizer_reset: str
    optimizer_keep: float

    def restart_options(self) -> RestartOptions:
        return self

    def inert_fields(self) -> set[str]:
        """A full reset keeps nothing, so the fraction kept does not matter (a mixin: the method's
        config class comes next in the MRO)."""
        inert = super().inert_fields()  # type: ignore[misc]
        return inert | {"optimizer_keep"} if self.optimizer_reset == "full" else inert

    def validate_restarts(self, method: str) -> None:
        if self.merge_every <= 0:
            raise ValueError(f"{method}: merge_every must be a positive number of steps, got {self.merge_every}")
        if self.rewarm_steps < 0:
            raise ValueError(f"{method}: rewarm_steps must be >= 0, got {self.rewarm_steps}")
        if self.optimizer_reset not in ("full", "magnitude"):
            raise ValueError(
                f"{method}: optimizer_reset must be 'full' or 'magnitude', got {self.optimizer_reset!r}"
            )
        if not 0.0 <= self.optimizer_keep <= 1.0:
            raise ValueError(f"{method}: optimizer_keep must be in [0, 1], got {self.optimizer_keep}")


def _as_tuple(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a list of module-name patterns, got {value!r}") from None
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name} must hold strings, got {items!r}")
    return items


IGNORED_KEYS = ("_target_", "name")  # may sit in a method node; no option reads them


def option_names(method: str) -> set[str]:
    """The keys of a method node: `method` and the fields of its options dataclass."""
    return {"method", *(f.name for f in dataclasses.fields(config_class(method)))}


@functools.lru_cache(maxsize=None)
def method_defaults(method: str) -> dict[str, Any]:
    """The options conf/method/<method>.yaml sets, with what its defaults list brings (`_base`, the
    method it extends); none for a method without a YAML there (its callers give every option)."""
    if not (CONF_DIR / "method" / f"{method}.yaml").is_file():
        return {}
    return {k: v for k, v in load_option("method", method).items() if k not in ("method", *IGNORED_KEYS)}


def config_from_dict(options: dict[str, Any] | AdapterConfig) -> AdapterConfig:
    """Build a validated config from `{"method": ..., **options}` (a Hydra node or a checkpoint's JSON);
    options it leaves out take the method's defaults (`method_defaults`)."""
    if isinstance(options, AdapterConfig):
        return options
    opts = {k: v for k, v in dict(options).items() if k not in IGNORED_KEYS}
    method = opts.pop("method", None)
    if method is None:
        raise ValueError(f"method config has no 'method' key; choose one of {available_methods()}")
    cls = config_class(method)
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(f"{method}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    opts = {**method_defaults(method), **opts}
    missing = sorted(allowed - set(opts))
    if missing:
        raise ValueError(f"{method}: no value for option(s) {missing}; set them (a method's defaults are its "
                         f"conf/method/<method>.yaml)")
    return cls(**opts)


def build_method(method: str, **options: Any) -> AdapterConfig:
    """The `_target_` of every conf/method/*.yaml: the validated options of `method`."""
    return config_from_dict({"method": method, **options})


build_method.accepted_keys = lambda node: option_names(str(node.get("method")))  # read by mora.schema


def make_config(method: str, r: int, **options: Any) -> AdapterConfig:
    return config_from_dict({"method": method, "r": r, **options})


__all__ = [
    "AdapterConfig",
    "RestartOptions",
    "available_methods",
    "build_method",
    "config_class",
    "config_from_dict",
    "make_config",
    "method_defaults",
    "option_names",
    "register",
]

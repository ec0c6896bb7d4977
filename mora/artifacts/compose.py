"""Cell composition: the config, run id and results versions `mora.train` would give a list of overrides.

Composing with Hydra once per cell is too slow for a 13 x 4 x grid table, so configs are composed once
per set of structural overrides (config-group choices such as `experiment=`, `method=`, `+key=`), and
the value overrides (`train.lr=`, `seed=`, `method.r=`: a plain change of a key that is not a config
group) are applied to a copy the way Hydra applies them. That one rule serves the report, the launcher
and the demo, so a run lands where the report looks. Overrides are values only: one that names a
foreign builder or touches `hydra.*` is refused (mora.builders), and so is a composed config that
would build anything unregistered.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..builders import check_overrides, check_targets
from ..identity import hash_identity, results_versions, run_identity
from .spec import CONF_DIR


@dataclass(frozen=True)
class Composed:
    experiment: str
    run_id: str
    versions: dict[str, int]
    config: dict[str, Any]  # resolved
    identity: dict[str, Any]  # what the run id hashes (mora.identity)


class Composer:
    """Use as a context manager (Hydra's config search path is set up for its lifetime)."""

    def __init__(self, conf_dir: Path = CONF_DIR):
        self.conf_dir = conf_dir
        self.groups = {p.name for p in conf_dir.iterdir() if p.is_dir()}
        self.base: dict[tuple, Any] = {}
        self.cache: dict[tuple, Composed] = {}
        self.checked: set[tuple] = set()
        self._ctx = None

    def __enter__(self) -> "Composer":
        from hydra import initialize_config_dir

        self._ctx = initialize_config_dir(config_dir=str(self.conf_dir), version_base="1.3")
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    def _is_value(self, override) -> bool:
        key = override.key_or_group
        return (override.type.name == "CHANGE" and override.package is None and key not in self.groups
                and "/" not in key and key.split(".")[0] != "hydra")

    def dict_config(self, overrides: list[str], where: str):
        """The composed DictConfig (a fresh copy)."""
        from hydra import compose
        from omegaconf import OmegaConf

        parsed = check_overrides(overrides, where)
        try:
            values = [o for o in parsed if self._is_value(o)]
            structural = tuple(o.input_line for o in parsed if not self._is_value(o))
            if structural not in self.base:
                self.base[structural] = compose(config_name="config", overrides=list(structural))
            cfg = copy.deepcopy(self.base[structural])
            for o in values:  # set, or add as mora.train does (`++`): a misspelt key is named by the checks
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=True)
            OmegaConf.to_container(cfg, resolve=True)  # interpolations resolve
        except Exception as exc:
            raise ValueError(f"{where}: overrides {list(overrides)} do not compose: {type(exc).__name__}: {exc}") from None
        return cfg

    def compose(self, overrides: list[str], where: str) -> Composed:
        """Experiment, run id, results versions and resolved config of the run the overrides name."""
        key = tuple(overrides)
        if key not in self.cache:
            from omegaconf import OmegaConf

            container = OmegaConf.to_container(self.dict_config(overrides, where), resolve=True)
            check_targets(container, where)
            try:  # the id is that of the validated run: a bad option or a missing data file stops here
                identity = run_identity(container)
                versions = results_versions(container)
            except Exception as exc:
                raise ValueError(f"{where}: overrides {list(overrides)} are not a valid run: {type(exc).__name__}: {exc}") from None
            self.cache[key] = Composed(str(container["experiment_name"]), hash_identity(identity), versions, container,
                                       identity)
        return self.cache[key]

    def check(self, overrides: list[str], where: str) -> None:
        """What `mora.train` rejects before training: the method's options, the batch arithmetic and every
        key (mora.schema). Checked once per cell less its learning rate and seed, which cannot break it."""
        key = tuple(o for o in overrides if not o.startswith(("train.lr=", "seed=")))
        if key in self.checked:
            return
        from ..schema import check_config
        from ..training.trainer import grad_accumulation

        self.compose(list(key), where)  # the method's options are checked here (its id)
        try:
            cfg = self.dict_config(list(key), where)
            grad_accumulation(cfg.train)
            check_config(cfg)
        except ValueError as exc:
            raise ValueError(f"{where} ({' '.join(overrides)}) is not a valid run: {exc}\n"
                             "fix the spec's overrides (or --override) before launching") from None
        self.checked.add(key)

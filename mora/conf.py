"""Where conf/ is, and one option of a config group read as Hydra would compose it on its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def load_option(group: str, option: str) -> dict[str, Any]:
    """conf/<group>/<option>.yaml as a plain dict, the same-group files in its defaults list merged under it."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    merged: dict[str, Any] = {}
    for entry in node.pop("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            merged.update(load_option(group, entry))
    merged.update(node)
    return merged

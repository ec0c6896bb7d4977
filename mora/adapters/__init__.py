"""Adapter layers for every method of the MoRA paper.

Each method lives in its own module and registers its config by name; importing this package
imports every module in it, so a new method is one file here plus one YAML under conf/method/
(docs/architecture.md: "add a method").
"""

import importlib
import pkgutil

from .config import (
    AdapterConfig,
    available_methods,
    build_method,
    config_from_dict,
    make_config,
    method_defaults,
)
from .inject import (
    BudgetReport,
    adapter_config,
    adapter_layers,
    apply_adapters,
    budget_report,
    load_adapter,
    make_adapter,
    merge_adapters,
    merge_and_reinit,
    merge_and_unload,
    save_adapter,
    unmerge_adapters,
)
from .layer import AdapterLayer
from .optim import param_groups, reset_optimizer_state, restart_parameters

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AdapterConfig",
    "AdapterLayer",
    "BudgetReport",
    "adapter_config",
    "adapter_layers",
    "apply_adapters",
    "available_methods",
    "budget_report",
    "build_method",
    "config_from_dict",
    "load_adapter",
    "make_adapter",
    "make_config",
    "merge_adapters",
    "method_defaults",
    "merge_and_reinit",
    "merge_and_unload",
    "param_groups",
    "reset_optimizer_state",
    "restart_parameters",
    "save_adapter",
    "unmerge_adapters",
]

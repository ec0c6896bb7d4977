"""Putting adapters into a model and taking them out again: wrapping, freezing, the parameter-budget
report, merging, and adapter checkpoints (safetensors + the method config as JSON).

An adapter checkpoint is a directory: `mora_bench_adapter.json` (the method config and the adapted
layers' shapes) and the tensors, in peft's layout where peft has the method (peft_format.py: LoRA and
its variants, DoRA) and in `mora_bench_adapter.safetensors` otherwise (MoRA, ReMoRA), so that nothing
takes those for peft's. `load_adapter` also reads the layout runs had before (format 1)."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import AdapterConfig, config_from_dict, make_config
from .layer import AdapterLayer
from .peft_format import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, from_peft, peft_config, peft_targets, to_peft

CONFIG_ATTR = "_mora_adapter_config"
META_NAME = "mora_bench_adapter.json"
WEIGHTS_NAME = "mora_bench_adapter.safetensors"  # methods peft does not have; our tensor names
FORMAT_VERSION = 2
BUDGET_TOLERANCE = 0.01


def make_adapter(base: nn.Linear, method: str, r: int, **options: Any) -> nn.Module:
    """Wrap one linear layer; for `fft` the layer itself comes back, fully trainable."""
    config = make_config(method, r, **options)
    if config.layer_class is None:
        return base.requires_grad_(True)
    return config.layer_class(base, config)


def name_matches(name: str, patterns: tuple[str, ...]) -> bool:
    """A pattern matches a module's qualified name exactly, as its last dotted parts, or as a regex."""
    for pattern in patterns:
        if name == pattern or name.endswith("." + pattern) or re.fullmatch(pattern, name):
            return True
    return False


def adapter_layers(model: nn.Module) -> list[tuple[str, AdapterLayer]]:
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, AdapterLayer)]


def adapter_config(model: nn.Module) -> AdapterConfig | None:
    return getattr(model, CONFIG_ATTR, None)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _module_type(name: str) -> str:
    return name.rsplit(".", 1)[-1] or "(root)"


def apply_adapters(model: nn.Module, method_cfg: AdapterConfig | dict) -> BudgetReport:
    """Wrap every targeted nn.Linear, freeze everything else but `trainable_modules`, report the budget."""
    config = config_from_dict(method_cfg)
    if adapter_config(model) is not None or adapter_layers(model):
        raise ValueError("model already has adapters; apply them once (or merge_and_unload first)")
    if config.layer_class is None:
        model.requires_grad_(True)
    else:
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        targets = [(n, m) for n, m in linears if name_matches(n, config.target_modules)]
        if not targets:
            examples = sorted({_module_type(n) for n, _ in linears})[:12]
            raise ValueError(
                f"{config.method}: target_modules {list(config.target_modules)} match no nn.Linear in "
                f"{type(model).__name__}; its linear layers are named like {examples}: set "
                "method.target_modules to some of them"
            )
        keep = _trainable_modules(model, config)
        model.requires_grad_(False)
        for name, linear in targets:
            _set_submodule(model, name, config.layer_class(linear, config))
        for module in keep:
            module.requires_grad_(True)
    setattr(model, CONFIG_ATTR, config)
    report = budget_report(model)
    if report.ratio is not None and abs(report.ratio - 1.0) > BUDGET_TOLERANCE:
        warnings.warn(
            f"{config.method} at r={config.r} trains {report.ratio:.4f}x LoRA's parameters on the same "
            f"layers (more than {BUDGET_TOLERANCE:.0%} off): comparisons at this r are not at equal budget",
            stacklevel=2,
        )
    return report


def _trainable_modules(model: nn.Module, config: AdapterConfig) -> list[nn.Module]:
    if not config.trainable_modules:
        return []
    found = [m for n, m in model.named_modules() if n and name_matches(n, config.trainable_modules)]
    if not found:
        raise ValueError(
            f"{config.method}: trainable_modules {list(config.trainable_modules)} match no module of "
            f"{type(model).__name__}"
        )
    return found


@dataclass
class BudgetReport:
    """Trainable parameters per module type, and how they compare with LoRA at the same r."""

    method: str
    r: int
    layers: dict[str, int] = field(default_factory=dict)  # adapted layers per module type
    adapter: dict[str, int] = field(default_factory=dict)  # adapter parameters per module type
    lora: dict[str, int] = field(default_factory=dict)  # LoRA's (d + k) r per module type
    other: dict[str, int] = field(default_factory=dict)  # trainable parameters outside adapters
    total_params: int = 0

    @property
    def adapter_total(self) -> int:
        return sum(self.adapter.values())

    @property
    def lora_total(self) -> int:
        return sum(self.lora.values())

    @property
    def trainable_total(self) -> int:
        return self.adapter_total + sum(self.other.values())

    @property
    def ratio(self) -> float | None:
        return self.adapter_total / self.lora_total if self.lora_total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "r": self.r,
            "layers": self.layers,
            "adapter": self.adapter,
            "lora": self.lora,
            "other": self.other,
            "adapter_total": self.adapter_total,
            "trainable_total": self.trainable_total,
            "total_params": self.total_params,
            "ratio_to_lora": self.ratio,
        }

    def __str__(self) -> str:
        if not self.adapter:  # fft: no adapter layers, so no rank to speak of
            lines = [f"parameter budget: {self.method} (no adapter layers)"]
        else:
            lines = [f"parameter budget: {self.method} at r={self.r}"]
            lines.append(f"  {'module':<14}{'layers':>7}{'trainable':>14}{'LoRA r=' + str(self.r):>14}{'ratio':>8}")
            for key in self.adapter:
                lora = self.lora[key]
                lines.append(
                    f"  {key:<14}{self.layers[key]:>7}{self.adapter[key]:>14,}{lora:>14,}"
                    f"{self.adapter[key] / lora:>8.4f}"
                )
            lines.append(
                f"  {'adapters':<14}{sum(self.layers.values()):>7}{self.adapter_total:>14,}"
                f"{self.lora_total:>14,}{self.ratio:>8.4f}"
            )
        for key, count in self.other.items():
            lines.append(f"  {'also trainable' if self.adapter else 'trainable'}: {key} {count:,}")
        share = 100.0 * self.trainable_total / max(self.total_params, 1)
        lines.append(f"  trainable {self.trainable_total:,} of {self.total_params:,} ({share:.3f} %)")
        return "\n".join(lines)


def budget_report(model: nn.Module) -> BudgetReport:
    config = adapter_config(model)
    if config is None:
        raise ValueError("model has no adapters; call apply_adapters first")
    report = BudgetReport(method=config.method, r=config.r)
    counted: set[int] = set()
    for name, layer in adapter_layers(model):
        key = _module_type(name)
        n = sum(p.numel() for _, p in layer.adapter_parameters() if p.requires_grad)
        counted.update(id(p) for _, p in layer.adapter_parameters())
        counted.update(id(p) for p in layer.base.parameters())
        report.layers[key] = report.layers.get(key, 0) + 1
        report.adapter[key] = report.adapter.get(key, 0) + n
        lora = (layer.in_features + layer.out_features) * config.r
        report.lora[key] = report.lora.get(key, 0) + lora
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            report.total_params += param.numel()
            if param.requires_grad and id(param) not in counted:
                key = _module_type(module_name)
                report.other[key] = report.other.get(key, 0) + param.numel()
    return report


@torch.no_grad()
def merge_adapters(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.merge()


@torch.no_grad()
def unmerge_adapters(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.unmerge()


@torch.no_grad()
def merge_and_reinit(model: nn.Module) -> int:
    """Restart every adapter layer (ReLoRA / ReMoRA); returns how many layers restarted."""
    layers = adapter_layers(model)
    for _, layer in layers:
        layer.merge_and_reinit()
    return len(layers)


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain nn.Linear back; returns the model."""
    for name, layer in adapter_layers(model):
        layer.merge()
        _set_submodule(model, name, layer.base)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


# -- adapter checkpoints ---------------------------------------------------------------------------


def _adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors (parameters and persistent buffers) plus everything else that trains. Methods that
    restart (ReLoRA, ReMoRA) merge updates into the base weight, so their base weights are saved too."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in adapter_layers(model):
        keep_base = layer.config.restart_options() is not None
        for key, tensor in layer.state_dict().items():
            if not key.startswith("base.") or (keep_base and key == "base.weight"):
                state[f"{name}.{key}"] = tensor
    owned = {id(t) for t in state.values()}
    for key, param in model.named_parameters():
        if param.requires_grad and id(param) not in owned:
            state[key] = param
    return {k: v.detach().contiguous() for k, v in state.items()}


def _layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {name: [layer.out_features, layer.in_features] for name, layer in adapter_layers(model)}


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write the adapter into `directory`: peft's layout where peft has the method, else our own file,
    and mora_bench_adapter.json (method config + adapted layers) beside it."""
    from safetensors.torch import save_file

    config = adapter_config(model)
    if config is None:
        raise ValueError("model has no adapters to save")
    if config.layer_class is None:
        raise ValueError(f"{config.method} trains the whole model: save it with save_pretrained instead")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state, layers = _adapter_state(model), _layer_shapes(model)
    options = config.peft_options()
    if options is None:
        weights = WEIGHTS_NAME
        save_file(state, str(directory / weights))
    else:
        weights = PEFT_WEIGHTS_NAME
        save_file(to_peft(state, list(layers), config.layer_class.peft_names), str(directory / weights), {"format": "pt"})
        names = [n for n, _ in model.named_modules() if not any(n.startswith(a + ".") for a in layers)]
        whole = sorted({key.rpartition(".")[0] for key in state if not any(key.startswith(a + ".") for a in layers)})
        base = getattr(getattr(model, "config", None), "_name_or_path", "") or None
        peft = peft_config(options, peft_targets(names, list(layers), config.target_modules), whole, base)
        (directory / PEFT_CONFIG_NAME).write_text(json.dumps(peft, indent=2, sort_keys=True))
    meta = {"format": FORMAT_VERSION, "config": config.to_dict(), "layers": layers, "weights": weights}
    (directory / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def _read_adapter(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(meta, tensors under our names) of an adapter checkpoint, in either format."""
    from safetensors.torch import load_file

    if (directory / META_NAME).is_file():
        meta = json.loads((directory / META_NAME).read_text())
        if meta.get("weights") not in (WEIGHTS_NAME, PEFT_WEIGHTS_NAME):
            raise ValueError(f"{directory / META_NAME}: unknown weights file {meta.get('weights')!r}")
        tensors = load_file(str(directory / meta["weights"]))
        if meta["weights"] == PEFT_WEIGHTS_NAME:
            tensors = from_peft(tensors, config_from_dict(meta["config"]).layer_class.peft_names)
        return meta, tensors
    legacy = directory / PEFT_CONFIG_NAME  # format 1 used peft's file names with our content
    meta = json.loads(legacy.read_text()) if legacy.is_file() else {}
    if meta.get("format") == 1:
        return meta, load_file(str(directory / PEFT_WEIGHTS_NAME))
    if meta:
        raise ValueError(f"{directory} holds a peft adapter mora-bench did not write ({META_NAME} is missing): "
                         "load it with peft.PeftModel.from_pretrained")
    raise ValueError(f"{directory} is not an adapter checkpoint: {META_NAME} is missing")


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load an adapter checkpoint; wraps a plain model first. Any mismatch raises, naming it."""
    directory = Path(directory)
    meta, tensors = _read_adapter(directory)
    saved = config_from_dict(meta["config"])
    current = adapter_config(model)
    if current is None:
        # Shapes of the plain linear layers the adapters would wrap: checked before the model changes.
        shapes = {
            name: [m.out_features, m.in_features]
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name_matches(name, saved.target_modules)
        }
    elif current.to_dict() != saved.to_dict():
        old, new = saved.to_dict(), current.to_dict()
        diffs = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        raise ValueError(f"adapter checkpoint {directory} does not match the model's adapters: {diffs} (saved, model)")
    else:
        shapes = _layer_shapes(model)
    for name, shape in meta["layers"].items():
        if name not in shapes:
            raise ValueError(f"adapter checkpoint has layer {name!r}, which the model does not adapt")
        if shapes[name] != shape:
            raise ValueError(
                f"layer {name!r}: checkpoint was saved for (out, in) = {tuple(shape)}, the model has {tuple(shapes[name])}"
            )
    missing = sorted(set(shapes) - set(meta["layers"]))
    if missing:
        raise ValueError(f"adapter checkpoint lacks layers the model adapts: {missing[:5]}")
    if current is None:
        apply_adapters(model, saved)
    expected = _adapter_state(model)
    for key, tensor in tensors.items():
        if key not in expected:
            raise ValueError(f"adapter checkpoint tensor {key!r} has no place in the model")
        if tuple(expected[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"adapter tensor {key!r}: checkpoint shape {tuple(tensor.shape)}, model shape {tuple(expected[key].shape)}"
            )
    absent = sorted(set(expected) - set(tensors))
    if absent:
        raise ValueError(f"adapter checkpoint lacks tensors: {absent[:5]}")
    model.load_state_dict(tensors, strict=False)
    return model

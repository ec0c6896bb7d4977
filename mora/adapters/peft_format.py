"""Adapter checkpoints in peft's layout, for the methods peft has: LoRA, rsLoRA and DoRA, and LoRA+,
AsyLoRA and ReLoRA, whose trained weights are LoRA weights. `PeftModel.from_pretrained(base, adapter/)`
loads them; writing and reading them needs no peft.

peft's layout: `adapter_config.json` (a LoraConfig) and `adapter_model.safetensors` with keys
`base_model.model.<module>.lora_A.weight`, `.lora_B.weight`, `.lora_magnitude_vector` (DoRA), and
`base_model.model.<module>.<param>` for the modules trained whole (peft's `modules_to_save`). ReLoRA's
restarts merge updates into the base weights, which go in as `<module>.base_layer.weight`: peft loads
every key of the file into the wrapped model, so the base gets them too.
"""

from __future__ import annotations

from typing import Any

import torch

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # where peft's PeftModelForCausalLM keeps the model it wraps
BASE_WEIGHT = ("base.weight", "base_layer.weight")  # an adapter layer's frozen linear: ours, peft's


def peft_config(options: dict[str, Any], target_modules: list[str], modules_to_save: list[str],
                base_model: str | None) -> dict[str, Any]:
    """The adapter_config.json of a LoraConfig; `options` come from the method (AdapterConfig.peft_options)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "target_modules": target_modules,
        "modules_to_save": modules_to_save or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        **options,
    }


def peft_targets(module_names: list[str], adapted: list[str], patterns: tuple[str, ...]) -> list[str]:
    """`target_modules` for peft: our patterns when peft's rule for a list (a module's name equals an
    entry or ends with "." + one) picks exactly the adapted layers among `module_names`, else their
    full names (our patterns may be regexes, which a list in peft's config is not)."""
    picked = {n for n in module_names if n in patterns or any(n.endswith("." + p) for p in patterns)}
    return list(patterns) if picked == set(adapted) else sorted(adapted)


def _renames(layer_names: dict[str, str]) -> list[tuple[str, str]]:
    """(our suffix, peft's suffix) of every tensor an adapter layer saves."""
    return [(f".{ours}", f".{theirs}") for ours, theirs in [*layer_names.items(), BASE_WEIGHT]]


def to_peft(state: dict[str, torch.Tensor], layers: list[str], layer_names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Our adapter state (mora.adapters.inject) under peft's keys; `layer_names` maps the layer's
    tensor names to peft's (LoRALayer.peft_names)."""
    out = {}
    for key, tensor in state.items():
        layer = next((name for name in layers if key.startswith(name + ".")), None)
        if layer is not None:
            suffix = key[len(layer):]
            renamed = dict(_renames(layer_names))
            if suffix not in renamed:
                raise ValueError(f"adapter tensor {key!r} has no place in peft's LoRA layout")
            key = layer + renamed[suffix]
        out[PREFIX + key] = tensor
    return out


def from_peft(tensors: dict[str, torch.Tensor], layer_names: dict[str, str]) -> dict[str, torch.Tensor]:
    """The inverse of to_peft."""
    out = {}
    for key, tensor in tensors.items():
        if not key.startswith(PREFIX):
            raise ValueError(f"peft adapter tensor {key!r} does not start with {PREFIX!r}")
        key = key[len(PREFIX):]
        for ours, theirs in _renames(layer_names):
            if key.endswith(theirs):
                key = key[: -len(theirs)] + ours
                break
        out[key] = tensor
    return out

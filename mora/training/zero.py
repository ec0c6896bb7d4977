"""Adapter restarts (ReLoRA / ReMoRA) and the final merge when the model is spread over processes.

Where the training state lives:
- one process, or DDP: full parameters on every process, moments in `optimizer.state[param]`;
- DeepSpeed ZeRO-1/2 (and bf16 without ZeRO): full 16/32-bit parameters on every process, views into
  one flat buffer per parameter group; the fp32 master copy and the Adam moments are flat *partitions*
  inside DeepSpeed's optimizer, keyed by those partitions, never by the parameter. `param._hp_mapping`
  says which slice of a parameter this process owns (None: none);
- ZeRO-3: the parameters are partitioned as well (`param.ds_id`; `param.data` is empty outside a
  gather), and so are master and moments (`param._z3_optimizer`).

An in-place edit of `param.data` therefore reaches no fp32 state under ZeRO: the next step would
start from the old master and the old moments. A restart here (1) gathers each adapter layer's
parameters (ZeRO-3; a no-op otherwise), (2) merges and re-initialises on every process and takes rank
0's re-initialised values everywhere (random re-inits must agree), (3) writes those values into this
process's slice of the fp32 master and (4) zeroes (or magnitude-prunes) its slice of every moment,
then (5) counts, over all processes, who reset a piece of each trainable restart parameter: a
parameter nobody reached raises, as does an optimizer with no moments at all.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ..adapters import adapter_layers, merge_and_reinit, reset_optimizer_state, restart_parameters
from ..adapters.optim import check_reset_mode, prune_moment_
from .distributed import collective_device, several_processes


class ResetMissedError(RuntimeError):
    """An optimizer reset touched no state of a parameter it had to reset."""


def is_sharded(params) -> bool:
    """DeepSpeed keeps these parameters' fp32 master / moments in its own partitions."""
    return any(hasattr(p, "ds_id") or hasattr(p, "_hp_mapping") for p in params)


def _is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def _process_group():
    """torch.distributed when more than one process trains, else None."""
    import torch.distributed as dist

    return dist if several_processes() else None


def _gathered(params: list[nn.Parameter], modifier_rank: int | None):
    """ZeRO-3: the full parameters inside the block (rank `modifier_rank`'s edits kept on exit)."""
    if not any(_is_zero3(p) for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def _innermost_optimizer(optimizer: Any) -> Any:
    """accelerate's wrapper -> DeepSpeed's ZeRO optimizer -> the torch optimizer that holds the state."""
    seen = set()
    while hasattr(optimizer, "optimizer") and id(optimizer) not in seen:
        seen.add(id(optimizer))
        optimizer = optimizer.optimizer
    return optimizer


def moment_keys(optimizer: Any) -> list[str]:
    """Names of the per-element state tensors (exp_avg, exp_avg_sq, ...) of the innermost optimizer."""
    keys: set[str] = set()
    for state in _innermost_optimizer(optimizer).state.values():
        keys.update(k for k, v in state.items() if torch.is_tensor(v) and v.dim() >= 1)
    return sorted(keys)


def _local_slice(param: nn.Parameter, full: torch.Tensor) -> torch.Tensor:
    """ZeRO-3: this process's partition of `full` (partitions are padded to equal size)."""
    import torch.distributed as dist

    part = param.partition_numel()
    group = param.ds_process_group
    padded = full.new_zeros(part * dist.get_world_size(group=group), dtype=torch.float32)
    padded[: full.numel()] = full.flatten()
    return padded.narrow(0, part * dist.get_rank(group=group), part)


def _local_moment(param: nn.Parameter, optimizer: Any, key: str) -> torch.Tensor | None:
    """ZeRO-1/2 (and bf16 without ZeRO): this process's slice of moment `key` of `param`, or None.

    Found from the parameter's fragment address inside its group's flat fp32 partition, not through
    DeepSpeed's own per-parameter links (`_hp_mapping.optim_fragment`): DeepSpeed makes those once,
    right after the *first* parameter group has stepped, so with several groups (LoRA+, no-decay, ...)
    every later group stays unlinked and `safe_{get,set}_full_optimizer_state` fail on it."""
    mapping = getattr(param, "_hp_mapping", None)
    if mapping is None:
        return None
    inner = _innermost_optimizer(optimizer)
    flat = inner.param_groups[mapping.param_group_index]["params"][0]
    moment = inner.state[flat][key]
    if moment.shape != flat.shape:
        raise RuntimeError(f"optimizer state {key!r} is not a flat partition of its group ({tuple(moment.shape)})")
    address = mapping.hp_fragment_address
    return moment.narrow(0, address.start, address.numel)


def full_moment(param: nn.Parameter, optimizer: Any, key: str) -> torch.Tensor:
    """The whole fp32 moment `key` of `param`, assembled from every process's slice (collective)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    if _is_zero3(param):
        return safe_get_full_optimizer_state(param, key).reshape(param.ds_shape)
    buffer = torch.zeros(param.numel(), dtype=torch.float32, device=param.device)
    local = _local_moment(param, optimizer, key)
    if local is not None:
        lp = param._hp_mapping.lp_fragment_address
        buffer.narrow(0, lp.start, lp.numel).copy_(local)
    group = _process_group()
    if group is not None:
        group.all_reduce(buffer, group=getattr(param, "_dp_group", None))
    return buffer.view(param.shape)


def _write_state(param: nn.Parameter, optimizer: Any, full: torch.Tensor, key: str | None = None) -> bool:
    """Write `full` (the whole parameter's value) into this process's slice of the fp32 master
    (key None) or of the moment `key`. Returns whether this process holds a slice."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_local_fp32_param, safe_set_local_optimizer_state

    if _is_zero3(param):
        # DeepSpeed's full-value setter narrows the unpadded value: past the end on the last rank
        # whenever numel is not a multiple of the world size. Hand it the padded local slice instead.
        local = _local_slice(param, full)
        if key is None:
            safe_set_local_fp32_param(param, local)
        else:
            safe_set_local_optimizer_state(param, local, key)
        return True
    if getattr(param, "_hp_mapping", None) is None:
        return False
    if key is None:
        safe_set_full_fp32_param(param, full)
    else:
        lp = param._hp_mapping.lp_fragment_address
        _local_moment(param, optimizer, key).copy_(full.flatten().narrow(0, lp.start, lp.numel))
    return True


@torch.no_grad()
def restart_adapters(model: nn.Module, optimizer: Any, mode: str = "full", keep: float = 0.0) -> tuple[int, int]:
    """Merge-and-reinit every adapter layer and reset its restart parameters' optimizer state, wherever
    that state lives. Every process must call it. Returns (layers restarted, moment tensors reset);
    raises ResetMissedError if a trainable restart parameter's state was reached by no process."""
    check_reset_mode(mode)
    if is_sharded(model.parameters()):
        return _restart_sharded(model, optimizer, mode, keep)
    layers = merge_and_reinit(model)
    params = restart_parameters(model)
    group = _process_group()
    if group is not None:  # DDP: every replica takes rank 0's re-initialised adapters
        for param in params:
            group.broadcast(param.data, src=0)
    touched = reset_optimizer_state(optimizer, params, mode, keep)
    if touched == 0 and any(p.requires_grad for p in params):
        raise ResetMissedError(
            f"the optimizer reset after a restart touched no state of {len(params)} restart parameters: "
            f"{type(_innermost_optimizer(optimizer)).__name__} keeps its state somewhere else"
        )
    return layers, touched


def _restart_sharded(model: nn.Module, optimizer: Any, mode: str, keep: float) -> tuple[int, int]:
    group = _process_group()
    keys = moment_keys(optimizer)
    if not keys:
        raise ResetMissedError(
            f"restart under DeepSpeed: {type(_innermost_optimizer(optimizer)).__name__} holds no moment "
            "tensors to reset (restart before the first optimizer step?)"
        )
    layers = adapter_layers(model)
    names: list[str] = []
    reached: list[int] = []
    for name, layer in layers:
        restart = layer.restart_parameters()
        with _gathered(list(layer.parameters()), modifier_rank=0):
            layer.merge_and_reinit()  # every process: W0 += ΔW, re-init, grouping/buffers move on
            for pname, param in zip(_names(layer, restart), restart):
                if group is not None:
                    group.broadcast(param.data, src=0)
                if not param.requires_grad:
                    continue
                value = param.data.detach().float()
                holds = _write_state(param, optimizer, value)
                for key in keys:
                    if mode == "full":
                        moment = torch.zeros_like(value)
                    else:  # collective: every process assembles the full moment, prunes it the same way
                        moment = prune_moment_(full_moment(param, optimizer, key).clone(), mode, keep)
                    _write_state(param, optimizer, moment, key)
                names.append(f"{name}.{pname}")
                reached.append(int(holds))
        # ZeRO-3: leaving the block broadcasts rank 0's full tensors and re-partitions the 16-bit shards.
    counts = torch.tensor(reached, dtype=torch.long, device=collective_device() if group is not None else "cpu")
    if group is not None and counts.numel():
        group.all_reduce(counts)
    missed = [n for n, c in zip(names, counts.tolist()) if c == 0]
    if missed:
        raise ResetMissedError(
            f"restart under DeepSpeed reset the master weights / optimizer state of {len(missed)} of "
            f"{len(names)} trainable restart parameters on no process, e.g. {missed[:3]}"
        )
    return len(layers), len(names) * len(keys)


def _names(layer: nn.Module, params: list[nn.Parameter]) -> list[str]:
    by_id = {id(p): n for n, p in layer.named_parameters()}
    return [by_id.get(id(p), "?") for p in params]


@torch.no_grad()
def gather_full_model(model: nn.Module, dtypes: dict[str, torch.dtype] | None = None) -> bool:
    """After training under DeepSpeed: give rank 0 a plain, full copy of every parameter (the fp32 master
    where DeepSpeed keeps one, else the gathered parameter), on the CPU, cast back to `dtypes` (what
    each parameter was before DeepSpeed touched it). Every process must call it; only rank 0's model
    changes. Returns whether this process now holds the full model."""
    group = _process_group()
    main = group is None or group.get_rank() == 0
    if not is_sharded(model.parameters()):
        return main
    from deepspeed.utils import safe_get_full_fp32_param

    dtypes = dtypes or {}
    for module_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        values = []
        with _gathered([p for _, p in own], modifier_rank=None):
            for pname, param in own:
                master = safe_get_full_fp32_param(param) if param.requires_grad else None  # collective
                if main:
                    full = master if master is not None else param.data
                    values.append(full.detach().reshape(param.data.shape).to("cpu", copy=True))
        if main:
            for (pname, param), value in zip(own, values):
                key = f"{module_name}.{pname}" if module_name else pname
                param.data = value.to(dtypes.get(key, value.dtype))
    return main

"""Run by tests/test_deepspeed.py under `torchrun --nproc_per_node 2` (gloo, CPU): a ReLoRA restart on a
tiny LLaMA wrapped by DeepSpeed ZeRO-2 (also with the optimizer offloaded) and ZeRO-3 must reach DeepSpeed's fp32 master weights and Adam
moments, give every process the same re-initialised adapters, and refuse to run when it would reach
nothing. Every check is an assert; a failure exits non-zero with the traceback on stderr."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def gathered(params):
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def full_state(param, key, optimizer):
    """The whole fp32 master (key None) or moment of `param`, from every process's slice."""
    from deepspeed.utils import safe_get_full_fp32_param

    from mora.training.zero import full_moment

    value = safe_get_full_fp32_param(param) if key is None else full_moment(param, optimizer, key)
    return value.detach().clone().reshape(-1)


def all_equal_across_ranks(tensor: torch.Tensor) -> bool:
    import torch.distributed as dist

    copies = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(copies, tensor.contiguous())
    return all(torch.equal(c, copies[0]) for c in copies)


def train_steps(engine, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, 50, (2, 9), generator=generator)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()


def check_stage(stage: int, offload: bool = False) -> None:
    import deepspeed
    import torch.distributed as dist
    from conftest import build_tiny_llama

    from mora.adapters import adapter_layers, apply_adapters, param_groups, reset_optimizer_state, restart_parameters
    from mora.adapters.optim import prune_moment_
    from mora.training.zero import ResetMissedError, gather_full_model, restart_adapters

    model = build_tiny_llama(seed=0).train()
    # Norms train too: their no-decay group comes first, so the adapters sit in a later parameter group
    # (DeepSpeed links optimizer-state fragments only for the group that stepped first).
    apply_adapters(model, {"method": "relora", "r": 2, "trainable_modules": ["norm"]})
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2), lr=1e-2)
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # offload keeps torch's AdamW: no CPU-Adam compilation here
        "steps_per_print": 10**9,
    }
    if offload:
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    layers = adapter_layers(model)
    restart = restart_parameters(model)

    # Before the first step DeepSpeed holds no moments: the restart refuses instead of doing half a job.
    try:
        restart_adapters(model, ds_optimizer)
    except ResetMissedError:
        pass
    else:
        raise AssertionError("a restart before any optimizer step did not raise")

    train_steps(engine, 2, seed=dist.get_rank())
    if stage == 2:  # our slice lookup agrees with DeepSpeed's own where DeepSpeed's links exist
        from deepspeed.utils import safe_get_full_optimizer_state

        norm = model.model.norm.weight
        assert torch.equal(full_state(norm, "exp_avg", ds_optimizer), safe_get_full_optimizer_state(norm, "exp_avg").reshape(-1))
    # The pitfall: the plain reset finds no state keyed by the parameters (it lives in flat partitions).
    assert reset_optimizer_state(ds_optimizer, restart) == 0

    expected = {}
    for name, layer in layers:
        with gathered(layer.parameters()):
            expected[name] = (layer.base.weight + layer.delta_weight()).detach().clone()
    torch.manual_seed(100 + dist.get_rank())  # the processes' random streams differ: A must come from rank 0
    n_layers, touched = restart_adapters(model, ds_optimizer, "full")
    assert (n_layers, touched) == (len(layers), 2 * len(restart)), (n_layers, touched)
    for name, layer in layers:
        with gathered(layer.parameters()):
            assert torch.allclose(layer.base.weight, expected[name], atol=1e-6), f"{name}: W0 != W0 + ΔW"
            assert torch.count_nonzero(layer.lora_B) == 0
            a_value = layer.lora_A.detach().clone().reshape(-1)
            b_value = layer.lora_B.detach().clone().reshape(-1)
        assert all_equal_across_ranks(a_value), f"{name}: processes re-drew different A"
        # The fp32 master holds the re-initialised values, the moments are zero.
        assert torch.equal(full_state(layer.lora_A, None, ds_optimizer), a_value.float()), f"{name}: master A is stale"
        assert torch.equal(full_state(layer.lora_B, None, ds_optimizer), b_value.float()), f"{name}: master B is stale"
        for param in (layer.lora_A, layer.lora_B):
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.count_nonzero(full_state(param, key, ds_optimizer)) == 0, f"{name}: {key} not reset"

    # Magnitude pruning (ReLoRA's partial reset) keeps exactly what the one-process reset keeps.
    train_steps(engine, 1, seed=10 + dist.get_rank())
    before = {(id(p), k): full_state(p, k, ds_optimizer) for p in restart for k in ("exp_avg", "exp_avg_sq")}
    restart_adapters(model, ds_optimizer, "magnitude", keep=0.25)
    kept = 0
    for param in restart:
        for key in ("exp_avg", "exp_avg_sq"):
            want = prune_moment_(before[(id(param), key)].clone(), "magnitude", 0.25)
            kept += int(torch.count_nonzero(want))
            assert torch.equal(full_state(param, key, ds_optimizer), want), f"magnitude reset differs ({key})"
    assert kept > 0, "nothing to keep: the magnitude check would be vacuous"

    # Training goes on from the restarted state, and the export gives rank 0 plain full tensors.
    train_steps(engine, 1, seed=20 + dist.get_rank())
    holds_full = gather_full_model(model)
    if holds_full:
        first = layers[0][1]
        assert first.base.weight.shape == (first.out_features, first.in_features)
        assert torch.count_nonzero(first.lora_B) > 0
    print(f"rank {dist.get_rank()}: ZeRO-{stage}{' offload' if offload else ''} restart checks passed", flush=True)


def main() -> None:
    import deepspeed
    import torch.distributed as dist

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    check_stage(2)
    check_stage(2, offload=True)
    check_stage(3)
    dist.barrier()
    dist.destroy_process_group()  # before interpreter teardown, which can abort on live gloo threads


if __name__ == "__main__":
    main()

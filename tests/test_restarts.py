"""ReLoRA / ReMoRA restarts, the optimizer-state reset that follows them, and LoRA+ parameter groups."""

import pytest
import torch
from torch import nn

from mora.adapters import (
    adapter_layers,
    apply_adapters,
    make_adapter,
    merge_and_reinit,
    param_groups,
    reset_optimizer_state,
    restart_parameters,
)


def _relerr(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
def test_relora_merge_and_reinit_keeps_outputs(dtype, tol, randomize):
    layer = make_adapter(nn.Linear(23, 37, dtype=dtype), "relora", 4)
    randomize(layer)
    x = torch.randn(6, 23, dtype=dtype)
    w0 = layer.base.weight.detach().clone()
    A_param, B_param = layer.lora_A, layer.lora_B
    A_before = layer.lora_A.detach().clone()
    with torch.no_grad():
        before = layer(x)
        dw = layer.delta_weight()
    layer.merge_and_reinit()
    with torch.no_grad():
        after = layer(x)
    assert _relerr(after, before) < tol
    torch.testing.assert_close(layer.base.weight, w0 + dw, rtol=tol, atol=tol)
    assert layer.lora_A is A_param and layer.lora_B is B_param  # the optimizer keeps them
    assert torch.count_nonzero(layer.lora_B) == 0
    assert not torch.allclose(layer.lora_A, A_before)
    assert torch.count_nonzero(layer.lora_A) == layer.lora_A.numel()
    bound = 1 / 23**0.5  # kaiming_uniform(a=sqrt(5)) on (r, k): U(-1/sqrt(k), 1/sqrt(k))
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > 0.5 * bound
    assert not layer.merged


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
def test_remora_merge_and_reinit_keeps_outputs_and_cycles(dtype, tol, randomize):
    layer = make_adapter(nn.Linear(23, 37, dtype=dtype), "remora", 2)
    M = layer.mora_M
    x = torch.randn(6, 23, dtype=dtype)
    types = [layer.sharing_type]
    for _ in range(5):
        randomize(layer)
        with torch.no_grad():
            before = layer(x)
        layer.merge_and_reinit()
        with torch.no_grad():
            after = layer(x)
        assert _relerr(after, before) < tol
        assert layer.mora_M is M
        assert torch.count_nonzero(layer.mora_M) == 0
        types.append(layer.sharing_type)
    assert types == [1, 2, 3, 4, 1, 2]
    assert int(layer.restarts) == 5


def test_remora_custom_cycle():
    layer = make_adapter(nn.Linear(16, 16), "remora", 2, cycle=(1, 2))
    seen = [layer.sharing_type]
    for _ in range(3):
        layer.merge_and_reinit()
        seen.append(layer.sharing_type)
    assert seen == [1, 2, 1, 2]
    started = make_adapter(nn.Linear(16, 16), "remora", 2, mora_type=3)
    started.merge_and_reinit()
    assert started.sharing_type == 4


def test_model_level_merge_and_reinit_keeps_logits(make_tiny_llama, randomize):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "remora", "r": 2})
    randomize(model, std=0.1)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
    assert merge_and_reinit(model) == 14
    with torch.no_grad():
        after = model(ids).logits
    assert _relerr(after, before) < 1e-5
    assert all(layer.sharing_type == 2 for _, layer in adapter_layers(model))


def test_two_remora_cycles_exceed_r_hat(randomize):
    d = 64
    layer = make_adapter(nn.Linear(d, d, bias=False, dtype=torch.float64), "remora", 2)
    assert layer.r_hat == 16 and layer.r_hat < d // 2
    w0 = layer.base.weight.detach().clone()
    for _ in range(2):
        randomize(layer, std=1.0)
        layer.merge_and_reinit()
    rank = torch.linalg.matrix_rank(layer.base.weight - w0).item()
    assert rank > layer.r_hat


def test_plain_mora_and_lora_refuse_merge_and_reinit():
    for method in ("mora", "lora", "dora"):
        layer = make_adapter(nn.Linear(16, 16), method, 2)
        with pytest.raises(ValueError, match="relora or remora|use remora"):
            layer.merge_and_reinit()


def test_remora_state_dict_restores_grouping(randomize):
    torch.manual_seed(0)
    trained = make_adapter(nn.Linear(23, 37), "remora", 2)
    for _ in range(2):
        randomize(trained)
        trained.merge_and_reinit()
    randomize(trained)
    assert trained.sharing_type == 3
    fresh = make_adapter(nn.Linear(23, 37), "remora", 2)
    assert fresh.sharing_type == 1
    fresh.load_state_dict(trained.state_dict())
    assert fresh.sharing_type == 3
    assert int(fresh.restarts) == 2
    x = torch.randn(5, 23)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x))
        torch.testing.assert_close(fresh.delta_weight(), trained.delta_weight())
    fresh.merge_and_reinit()
    assert fresh.sharing_type == 4


def test_remora_rotation_refused():
    with pytest.raises(ValueError, match="kind=sharing"):
        make_adapter(nn.Linear(16, 16), "remora", 2, kind="rotation")
    with pytest.raises(ValueError, match="kind=sharing"):
        make_adapter(nn.Linear(16, 16), "remora", 2, mora_type=6)


def test_restart_parameters(make_tiny_llama):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "relora", "r": 2})
    params = restart_parameters(model)
    layers = adapter_layers(model)
    assert len(params) == 2 * len(layers)
    assert {id(p) for p in params} == {id(l.lora_A) for _, l in layers} | {id(l.lora_B) for _, l in layers}


# -- optimizer state ------------------------------------------------------------------------------


def _adam_with_state():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(20, 10))
    b = nn.Parameter(torch.randn(30))
    other = nn.Parameter(torch.randn(8, 4))
    opt = torch.optim.AdamW([a, b, other], lr=1e-3)
    for _ in range(3):
        loss = (a.sin().sum() * 2) + (b**2).sum() + (other**3).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt, a, b, other


def test_reset_optimizer_state_full():
    opt, a, b, other = _adam_with_state()
    other_before = {k: v.clone() for k, v in opt.state[other].items()}
    steps = {id(p): opt.state[p]["step"].clone() for p in (a, b)}
    assert opt.state[a]["exp_avg"].abs().sum() > 0
    touched = reset_optimizer_state(opt, [a, b], mode="full")
    assert touched == 4
    for p in (a, b):
        assert torch.count_nonzero(opt.state[p]["exp_avg"]) == 0
        assert torch.count_nonzero(opt.state[p]["exp_avg_sq"]) == 0
        assert torch.equal(opt.state[p]["step"], steps[id(p)])
        assert opt.state[p]["step"].item() == 3
    for k, v in other_before.items():
        assert torch.equal(opt.state[other][k], v)


def test_reset_optimizer_state_magnitude_keeps_top_fraction():
    opt, a, b, other = _adam_with_state()
    before = opt.state[a]["exp_avg"].clone()
    before_sq = opt.state[a]["exp_avg_sq"].clone()
    other_before = opt.state[other]["exp_avg"].clone()
    reset_optimizer_state(opt, [a], mode="magnitude", keep=0.1)
    after = opt.state[a]["exp_avg"]
    kept = after != 0
    n = before.numel()
    assert abs(kept.sum().item() - 0.1 * n) <= 1
    # the kept entries are the largest in magnitude, unchanged
    assert torch.equal(after[kept], before[kept])
    assert before[kept].abs().min() >= before[~kept].abs().max()
    assert abs((opt.state[a]["exp_avg_sq"] != 0).sum().item() - 0.1 * n) <= 1
    assert opt.state[a]["exp_avg_sq"].max() == before_sq.max()
    assert opt.state[a]["step"].item() == 3
    assert torch.equal(opt.state[other]["exp_avg"], other_before)
    assert torch.count_nonzero(opt.state[b]["exp_avg"]) == opt.state[b]["exp_avg"].numel()


def test_reset_optimizer_state_bad_mode():
    opt, a, _, _ = _adam_with_state()
    with pytest.raises(ValueError, match="'full' or 'magnitude'"):
        reset_optimizer_state(opt, [a], mode="half")


def test_reset_then_training_continues(make_tiny_llama):
    """A full restart cycle on the tiny model: step, merge_and_reinit, reset, step again."""
    model = make_tiny_llama()
    apply_adapters(model, {"method": "relora", "r": 2})
    opt = torch.optim.AdamW(param_groups(model, 1e-2), lr=1e-2)
    ids = torch.randint(0, 50, (2, 9))
    for _ in range(2):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    merge_and_reinit(model)
    touched = reset_optimizer_state(opt, restart_parameters(model), mode="full")
    assert touched == 2 * 2 * 14
    layer = model.model.layers[0].self_attn.q_proj
    assert torch.count_nonzero(opt.state[layer.lora_B]["exp_avg"]) == 0
    loss = model(ids, labels=ids).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.count_nonzero(layer.lora_B) > 0


# -- parameter groups -----------------------------------------------------------------------------


def test_param_groups_loraplus(make_tiny_llama):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "loraplus", "r": 2, "lr_ratio": 4.0, "trainable_modules": ["norm"]})
    groups = param_groups(model, lr=1e-3, weight_decay=0.1)
    by_id = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in by_id, "a parameter is in two groups"
            by_id[id(p)] = g
    layers = adapter_layers(model)
    for _, layer in layers:
        gb, ga = by_id[id(layer.lora_B)], by_id[id(layer.lora_A)]
        assert gb["lr"] == pytest.approx(4e-3)
        assert ga["lr"] == pytest.approx(1e-3)
        assert gb["weight_decay"] == 0.1 and ga["weight_decay"] == 0.1
        assert id(layer.base.weight) not in by_id
    norm = model.model.norm.weight
    assert norm.requires_grad and norm.dim() == 1
    assert by_id[id(norm)]["weight_decay"] == 0.0
    assert by_id[id(norm)]["lr"] == pytest.approx(1e-3)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(by_id) == len(trainable) == 2 * len(layers) + 1
    assert sorted(g["lr_ratio"] for g in groups) == [1.0, 1.0, 4.0]


def test_param_groups_plain_lora_and_bias_no_decay():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

    net = Net()
    apply_adapters(net, {"method": "lora", "r": 2, "target_modules": ["q_proj"], "trainable_modules": ["head"]})
    groups = param_groups(net, lr=2e-4, weight_decay=0.05)
    decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(net.head.bias) in no_decay
    assert id(net.head.weight) in decay
    assert id(net.q_proj.lora_A) in decay and id(net.q_proj.lora_B) in decay
    assert all(g["lr"] == pytest.approx(2e-4) for g in groups)

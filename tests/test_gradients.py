"""Only the intended parameters receive gradients; DoRA's row norm is detached in backward."""

import pytest
import torch
from torch import nn

from mora.adapters import adapter_layers, apply_adapters, make_adapter


def _backward(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=ids).loss
    loss.backward()


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters()}


def _nonzero(t):
    return t is not None and torch.count_nonzero(t).item() > 0


@pytest.fixture
def ids():
    return torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))


def _assert_only(model, allowed_suffixes):
    """Every parameter whose name ends with an allowed suffix requires grad; no other one does, and
    no other one received a gradient."""
    for name, p in model.named_parameters():
        expected = any(name.endswith(s) for s in allowed_suffixes)
        assert p.requires_grad == expected, name
        if not expected:
            assert p.grad is None, name


def test_lora_grads(make_tiny_llama, ids):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "lora", "r": 2})
    _backward(model, ids)
    _assert_only(model, ("lora_A", "lora_B"))
    for _, layer in adapter_layers(model):
        assert layer.lora_A.grad is not None  # B = 0 at init, so A's gradient is zero but present
        assert torch.count_nonzero(layer.lora_A.grad) == 0
        assert _nonzero(layer.lora_B.grad)
        assert layer.base.weight.grad is None
    # with a non-zero B, A gets a gradient too
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            layer.lora_B.normal_(0, 0.1)
    _backward(model, ids)
    for _, layer in adapter_layers(model):
        assert _nonzero(layer.lora_A.grad) and _nonzero(layer.lora_B.grad)
        assert layer.base.weight.grad is None


def test_lora_second_step_gives_A_gradient(make_tiny_llama, ids):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "loraplus", "r": 2})
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    _backward(model, ids)
    opt.step()
    _backward(model, ids)
    layer = model.model.layers[0].self_attn.q_proj
    assert _nonzero(layer.lora_A.grad)


def test_asylora_frozen_A(make_tiny_llama, ids):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "asylora", "r": 2, "freeze_A": True})
    _backward(model, ids)
    _assert_only(model, ("lora_B",))
    for _, layer in adapter_layers(model):
        assert layer.lora_A.grad is None
        assert _nonzero(layer.lora_B.grad)


def test_asylora_A_trainable_by_default_and_orthonormal(make_tiny_llama, ids):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "asylora", "r": 2})
    _backward(model, ids)
    _assert_only(model, ("lora_A", "lora_B"))
    A = model.model.layers[0].mlp.down_proj.lora_A.detach()
    torch.testing.assert_close(A @ A.T, torch.eye(2), rtol=1e-5, atol=1e-5)


def test_fft_all_params(make_tiny_llama, ids):
    model = make_tiny_llama()
    model.requires_grad_(False)
    apply_adapters(model, {"method": "fft", "r": 2})
    assert not adapter_layers(model)
    _backward(model, ids)
    for name, p in model.named_parameters():
        assert p.requires_grad, name
        assert _nonzero(p.grad), name


@pytest.mark.parametrize("kind", ["sharing", "rotation", "decouple", "truncation"])
def test_mora_only_M(kind, make_tiny_llama, ids):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "mora", "r": 2, "kind": kind})
    _backward(model, ids)
    _assert_only(model, ("mora_M",))
    for _, layer in adapter_layers(model):
        assert _nonzero(layer.mora_M.grad)  # M = 0 at init, its gradient is not


def test_remora_only_M(make_tiny_llama, ids):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "remora", "r": 2})
    _backward(model, ids)
    _assert_only(model, ("mora_M",))


def test_dora_grads(make_tiny_llama, ids):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "dora", "r": 2})
    _backward(model, ids)
    _assert_only(model, ("lora_A", "lora_B", "dora_magnitude"))
    for _, layer in adapter_layers(model):
        assert layer.lora_A.grad is not None
        assert _nonzero(layer.lora_B.grad)
        assert _nonzero(layer.dora_magnitude.grad)


def test_trainable_modules(make_tiny_llama, ids):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "mora", "r": 2, "trainable_modules": ["embed_tokens"]})
    _backward(model, ids)
    _assert_only(model, ("mora_M", "embed_tokens.weight"))
    assert _nonzero(model.model.embed_tokens.weight.grad)
    assert model.lm_head.weight.grad is None


def test_dropout_only_on_the_adapter_path():
    """With dropout, the base path sees the whole input: dropped inputs still reach the output via W0."""
    layer = make_adapter(nn.Linear(16, 16, dtype=torch.float64), "lora", 2, dropout=0.9)
    layer.train()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(64, 16, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    # the base contributes W0^T 1 to every input's gradient; the adapter part is dropped for most inputs
    base_grad = layer.base.weight.sum(0).expand(64, 16)
    assert ((x.grad - base_grad).abs() < 1e-12).float().mean() > 0.5


# -- DoRA: the weight norm is detached ----------------------------------------------------------


def _dora_reference(x, w0, bias, A, B, m, s, detach):
    v = w0 + s * B @ A
    norm = v.norm(dim=1, keepdim=True)
    if detach:
        norm = norm.detach()
    return x @ (m[:, None] * v / norm).T + bias


def test_dora_gradients_match_detached_formula(randomize):
    torch.manual_seed(0)
    layer = make_adapter(nn.Linear(12, 9, dtype=torch.float64), "dora", 3, alpha=5.0)
    randomize(layer, std=0.5)
    x = torch.randn(7, 12, dtype=torch.float64)
    w = torch.randn(7, 9, dtype=torch.float64)
    (layer(x) * w).sum().backward()
    got = {n: p.grad.clone() for n, p in layer.adapter_parameters()}

    refs = {}
    for detach in (True, False):
        A = layer.lora_A.detach().clone().requires_grad_(True)
        B = layer.lora_B.detach().clone().requires_grad_(True)
        m = layer.dora_magnitude.detach().clone().requires_grad_(True)
        y = _dora_reference(x, layer.base.weight, layer.base.bias, A, B, m, 5.0 / 3, detach)
        (y * w).sum().backward()
        refs[detach] = {"lora_A": A.grad, "lora_B": B.grad, "dora_magnitude": m.grad}

    for name in ("lora_A", "lora_B", "dora_magnitude"):
        torch.testing.assert_close(got[name], refs[True][name], rtol=1e-10, atol=1e-12)
    # the test can tell detached from not: A's and B's gradients differ without the detach
    assert (refs[True]["lora_A"] - refs[False]["lora_A"]).abs().max() > 1e-3
    assert (refs[True]["lora_B"] - refs[False]["lora_B"]).abs().max() > 1e-3

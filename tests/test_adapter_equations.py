"""Eq. 3 for every method: with random adapter weights, `layer(x) - base(x) == x @ delta_weight().T`."""

import pytest
import torch
from torch import nn

from mora.adapters import make_adapter
from runner import adapter_methods

R = 2

# (method, options): every registered adapter method as its YAML sets it, and the variants of their options
METHODS = [(m, {}) for m in adapter_methods()] + [
    ("lora", {"rslora": True, "alpha": 7.0}),
    ("lora", {"init": "orthogonal"}),
    ("loraplus", {"lr_ratio": 2.0}),
    ("asylora", {"freeze_A": True}),
    ("dora", {"rslora": True}),
    ("mora", {"mora_type": 1}),
    ("mora", {"mora_type": 2}),
    ("mora", {"mora_type": 3}),
    ("mora", {"mora_type": 4}),
    ("mora", {"kind": "rotation"}),
    ("mora", {"kind": "decouple"}),
    ("mora", {"kind": "truncation"}),
    ("mora", {"kind": "rotation", "overflow": "fold"}),
    ("mora", {"kind": "decouple", "overflow": "fold"}),
    ("remora", {"mora_type": 3, "cycle": (3, 1)}),
]

# (out_features d, in_features k)
SHAPES = [
    (16, 16),  # square, divisible by r̂
    (40, 12),  # d > k: rotation tiles its flat output up to d
    (12, 40),  # d < k: rotation truncates (or folds) its flat output
    (37, 23),  # nothing divisible by r̂, wrap padding
    (3, 5),  # tiny, d < r̂
    (5, 3),  # tiny, k < r̂
]


def _ids(item):
    method, opts = item
    return method + "".join(f"-{k}={v}" for k, v in opts.items())


def _layer(d, k, method, opts, dtype=torch.float64):
    base = nn.Linear(k, d, bias=True, dtype=dtype)
    with torch.no_grad():
        base.bias.normal_()
    return make_adapter(base, method, R, **opts)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("method_opts", METHODS, ids=_ids)
def test_eq3_forward_equals_delta_weight(method_opts, shape, randomize):
    method, opts = method_opts
    d, k = shape
    layer = _layer(d, k, method, opts)
    randomize(layer)
    x = torch.randn(4, 3, k, dtype=torch.float64)

    dw = layer.delta_weight()
    assert dw.shape == (d, k)
    assert dw.dtype == torch.float64
    assert dw.abs().max() > 1e-3, "random adapter weights must give a non-zero ΔW"

    with torch.no_grad():
        got = layer(x) - layer.base(x)
        want = x @ dw.T
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method_opts", METHODS, ids=_ids)
def test_eq3_delta_is_linear_in_x(method_opts, randomize):
    """ΔW x must not depend on the batch layout (leading dims) and must be exactly linear."""
    method, opts = method_opts
    layer = _layer(37, 23, method, opts)
    randomize(layer)
    x1 = torch.randn(5, 23, dtype=torch.float64)
    x2 = torch.randn(5, 23, dtype=torch.float64)
    with torch.no_grad():
        f = lambda x: layer(x) - layer.base(x)  # noqa: E731
        lhs = f(2.0 * x1 - 3.0 * x2)
        rhs = 2.0 * f(x1) - 3.0 * f(x2)
        single = torch.stack([f(x1[i]) for i in range(5)])
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(single, f(x1), rtol=1e-12, atol=1e-12)


def test_lora_delta_weight_formula(randomize):
    """LoRA: ΔW = (alpha / r) B A, rsLoRA: (alpha / sqrt(r)) B A."""
    for rslora, scale in ((False, 12.0 / 4), (True, 12.0 / 2)):
        layer = make_adapter(nn.Linear(9, 7, dtype=torch.float64), "lora", 4, alpha=12.0, rslora=rslora)
        randomize(layer)
        want = scale * layer.lora_B @ layer.lora_A
        torch.testing.assert_close(layer.delta_weight(), want, rtol=1e-12, atol=1e-12)


def test_dora_delta_weight_formula(randomize):
    """DoRA: W0 + ΔW = m * (W0 + s B A) / ||W0 + s B A||_row."""
    layer = make_adapter(nn.Linear(9, 7, dtype=torch.float64), "dora", 3, alpha=6.0)
    randomize(layer)
    w0 = layer.base.weight
    v = w0 + 2.0 * layer.lora_B @ layer.lora_A
    want = layer.dora_magnitude[:, None] * v / v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(w0 + layer.delta_weight(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_eq3_remora_after_each_restart(shape, randomize):
    """After every merge-and-reinit the new grouping still satisfies Eq. 3."""
    d, k = shape
    layer = _layer(d, k, "remora", {})
    seen = []
    for _ in range(5):
        randomize(layer)
        seen.append(layer.sharing_type)
        x = torch.randn(6, k, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(layer(x) - layer.base(x), x @ layer.delta_weight().T, rtol=1e-10, atol=1e-10)
        layer.merge_and_reinit()
    assert seen == [1, 2, 3, 4, 1]


def test_eq3_with_dropout_in_eval_mode(randomize):
    """Dropout only acts in training; in eval mode Eq. 3 holds, in train mode it does not."""
    layer = _layer(16, 16, "lora", {"dropout": 0.5})
    randomize(layer)
    x = torch.randn(8, 16, dtype=torch.float64)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x) - layer.base(x), x @ layer.delta_weight().T, rtol=1e-10, atol=1e-10)
        layer.train()
        diff = (layer(x) - layer.base(x) - x @ layer.delta_weight().T).abs().max()
    assert diff > 1e-3


def test_fft_returns_the_trainable_base():
    base = nn.Linear(6, 4)
    base.requires_grad_(False)
    out = make_adapter(base, "fft", 8)
    assert out is base
    assert all(p.requires_grad for p in out.parameters())

"""Bad options fail early with a ValueError that says what to change."""

import pytest
import torch
from torch import nn

from mora.adapters import apply_adapters, available_methods, config_from_dict, load_adapter, make_adapter, save_adapter
from mora.adapters.config import option_names


@pytest.mark.parametrize("method", available_methods())
@pytest.mark.parametrize("r", [0, -4, 2.5, "8", True, None])
def test_bad_r(method, r):
    with pytest.raises(ValueError, match=r"r must be a positive integer.*set method\.r >= 1"):
        make_adapter(nn.Linear(8, 8), method, r)


def test_unknown_method():
    with pytest.raises(ValueError, match=r"unknown method 'vera'; choose one of \[.*'mora'.*\]"):
        make_adapter(nn.Linear(8, 8), "vera", 8)
    with pytest.raises(ValueError, match="no 'method' key"):
        config_from_dict({"r": 8})


def test_unknown_kind():
    with pytest.raises(ValueError, match=r"unknown kind 'spiral'; choose one of \('auto', 'sharing', 'rotation'"):
        make_adapter(nn.Linear(8, 8), "mora", 2, kind="spiral")
    with pytest.raises(ValueError, match="mora_type must be one of"):
        make_adapter(nn.Linear(8, 8), "mora", 2, mora_type=5)


@pytest.mark.parametrize("method,key", [("lora", "kind"), ("mora", "alpha"), ("dora", "lr_ratio"), ("mora", "typo")])
def test_unknown_option_key(method, key):
    with pytest.raises(ValueError, match=rf"unknown option\(s\) \['{key}'\]; allowed: \["):
        make_adapter(nn.Linear(8, 8), method, 2, **{key: 1})


@pytest.mark.parametrize("method", [m for m in available_methods() if "alpha" in option_names(m)])
@pytest.mark.parametrize("alpha", [0, -1.0])
def test_bad_alpha(method, alpha):
    with pytest.raises(ValueError, match="alpha must be > 0"):
        make_adapter(nn.Linear(8, 8), method, 2, alpha=alpha)


@pytest.mark.parametrize(
    "method,opts,phrase",
    [
        ("loraplus", {"lr_ratio": 0}, "lr_ratio"),
        ("lora", {"init": "gaussian"}, "init must be one of"),
        ("lora", {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ("mora", {"overflow": "wrap"}, "overflow must be one of"),
        ("relora", {"merge_every": 0}, "merge_every must be a positive"),
        ("remora", {"optimizer_reset": "half"}, "optimizer_reset must be 'full' or 'magnitude'"),
        ("remora", {"optimizer_keep": 1.5}, r"optimizer_keep must be in \[0, 1\]"),
        ("remora", {"cycle": (1, 6)}, "cycle must list sharing types"),
        ("remora", {"cycle": (2, 3)}, "not in cycle"),
        ("lora", {"target_modules": [3]}, "must hold strings"),
        ("lora", {"target_modules": []}, "target_modules is empty"),
    ],
)
def test_bad_options(method, opts, phrase):
    with pytest.raises(ValueError, match=phrase):
        make_adapter(nn.Linear(8, 8), method, 2, **opts)


def test_target_modules_match_nothing(make_tiny_llama):
    model = make_tiny_llama()
    with pytest.raises(ValueError, match=r"target_modules \['nope'\] match no nn.Linear.*named like \[.*'q_proj'"):
        apply_adapters(model, {"method": "lora", "r": 2, "target_modules": ["nope"]})
    # nothing was changed on failure
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    assert all(p.requires_grad for p in model.parameters())


def test_trainable_modules_match_nothing(make_tiny_llama):
    with pytest.raises(ValueError, match=r"trainable_modules \['embeddings'\] match no module"):
        apply_adapters(make_tiny_llama(), {"method": "mora", "r": 2, "trainable_modules": ["embeddings"]})


def test_apply_twice(make_tiny_llama):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "mora", "r": 2})
    with pytest.raises(ValueError, match="already has adapters"):
        apply_adapters(model, {"method": "mora", "r": 2})


@pytest.mark.parametrize("kind", [{"mora_type": 1}, {"mora_type": 4}, {"kind": "rotation"}, {"kind": "decouple"}])
def test_wrap_padding_impossible(kind):
    # d = 200, k = 2, r = 8: r̂ = round(sqrt(202 * 8)) = 40, pad = 40 - 2 = 38 > k = 2
    with pytest.raises(ValueError, match=r"wrap padding needs \d+ extra inputs but the layer has only 2.*lower r"):
        make_adapter(nn.Linear(2, 200), "mora", 8, **kind)


@pytest.mark.parametrize("kind", [{"mora_type": 2}, {"mora_type": 3}, {"kind": "truncation"}])
def test_kinds_without_padding_accept_the_same_layer(kind):
    """The error message suggests these kinds: they must indeed work on that layer."""
    layer = make_adapter(nn.Linear(2, 200, dtype=torch.float64), "mora", 8, **kind)
    assert layer.r_hat == 40
    with torch.no_grad():
        layer.mora_M.normal_()
    x = torch.randn(3, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x) - layer.base(x), x @ layer.delta_weight().T)


def test_remora_cycle_with_modulo_type_checks_padding():
    with pytest.raises(ValueError, match="wrap padding"):
        make_adapter(nn.Linear(2, 200), "remora", 8, mora_type=2, cycle=(2, 1))
    make_adapter(nn.Linear(2, 200), "remora", 8, mora_type=2, cycle=(2, 3))


def test_orthogonal_init_rank_too_large():
    with pytest.raises(ValueError, match="orthogonal init needs r <= in_features.*lower r"):
        make_adapter(nn.Linear(4, 16), "asylora", 8)


def test_not_a_linear():
    with pytest.raises(TypeError, match="wraps nn.Linear"):
        make_adapter(nn.Conv1d(4, 4, 1), "lora", 2)


def test_save_adapter_without_adapters(make_tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="no adapters"):
        save_adapter(make_tiny_llama(), tmp_path)
    model = make_tiny_llama()
    apply_adapters(model, {"method": "fft", "r": 2})
    with pytest.raises(ValueError, match="save_pretrained"):
        save_adapter(model, tmp_path)


def test_load_adapter_missing_dir(make_tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="not an adapter checkpoint"):
        load_adapter(make_tiny_llama(), tmp_path / "missing")

"""Merging, unmerging, merge-and-unload into a plain HF checkpoint, adapter checkpoints, adapter dtype."""

import pytest
import torch
from torch import nn

from mora.adapters import (
    AdapterLayer,
    adapter_config,
    adapter_layers,
    apply_adapters,
    load_adapter,
    make_adapter,
    merge_and_reinit,
    merge_and_unload,
    save_adapter,
)
from runner import adapter_methods

# every registered adapter method as its YAML sets it, and the variants of their options
METHODS = [(m, {}) for m in adapter_methods()] + [
    ("lora", {"rslora": True}),
    ("asylora", {"freeze_A": True}),
    ("mora", {"mora_type": 1}),
    ("mora", {"mora_type": 2}),
    ("mora", {"mora_type": 3}),
    ("mora", {"mora_type": 4}),
    ("mora", {"kind": "rotation"}),
    ("mora", {"kind": "decouple"}),
    ("mora", {"kind": "truncation"}),
    ("mora", {"kind": "rotation", "overflow": "fold"}),
    ("mora", {"kind": "decouple", "overflow": "fold"}),
]


def _ids(item):
    method, opts = item
    return method + "".join(f"-{k}={v}" for k, v in opts.items())


@pytest.mark.parametrize("shape", [(37, 23), (24, 24), (12, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("method_opts", METHODS, ids=_ids)
def test_merge_unmerge_round_trip(method_opts, shape, randomize, relerr):
    method, opts = method_opts
    d, k = shape
    base = nn.Linear(k, d)
    layer = make_adapter(base, method, 2, **opts)
    randomize(layer)
    w0 = base.weight.detach().clone()
    x = torch.randn(5, k)
    with torch.no_grad():
        before = layer(x)
        assert relerr(before, base(x)) > 1e-2  # the adapter changes the output

        layer.merge()
        assert layer.merged
        assert relerr(base.weight, w0) > 1e-2  # ΔW went into the base weight
        assert relerr(layer(x), before) < 1e-5
        assert relerr(base(x), before) < 1e-5  # the base alone now carries ΔW
        layer.merge()  # merging twice must not add ΔW twice
        assert relerr(layer(x), before) < 1e-5

        layer.unmerge()
        assert not layer.merged
        assert relerr(base.weight, w0) < 1e-5
        assert relerr(layer(x), before) < 1e-5
        layer.unmerge()  # a second unmerge is a no-op
        assert relerr(base.weight, w0) < 1e-5


@pytest.mark.parametrize(
    "method,opts",
    [("lora", {}), ("dora", {}), ("mora", {"kind": "rotation"}), ("mora", {"kind": "sharing"})],
    ids=["lora", "dora", "mora-rotation", "mora-sharing"],
)
def test_merge_and_unload_save_pretrained(method, opts, make_tiny_llama, randomize, relerr, tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_tiny_llama()
    plain_keys = set(model.state_dict())
    apply_adapters(model, {"method": method, "r": 2, **opts})
    randomize(model, std=0.1)
    ids = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        want = model(ids).logits
        assert relerr(want, make_tiny_llama()(ids).logits) > 1e-3

    merged = merge_and_unload(model)
    assert merged is model
    assert not adapter_layers(model)
    assert adapter_config(model) is None
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())
    assert set(model.state_dict()) == plain_keys
    with torch.no_grad():
        assert relerr(model(ids).logits, want) < 1e-5

    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        got = reloaded(ids).logits
    assert relerr(got, want) < 1e-5


@pytest.mark.parametrize(
    "method,opts",
    [
        ("lora", {"rslora": True}),
        ("dora", {}),
        ("asylora", {"freeze_A": True}),
        ("mora", {"kind": "rotation"}),
        ("mora", {"mora_type": 3}),
        ("mora", {"kind": "truncation", "trainable_modules": ["embed_tokens"]}),
        ("remora", {"cycle": (1, 2)}),
    ],
    ids=["lora-rslora", "dora", "asylora-frozenA", "mora-rotation", "mora-type3", "mora-trunc+embed", "remora"],
)
def test_save_load_adapter_round_trip(method, opts, make_tiny_llama, randomize, relerr, tmp_path):
    model = make_tiny_llama()
    apply_adapters(model, {"method": method, "r": 2, **opts})
    randomize(model, std=0.1)
    if opts.get("trainable_modules"):
        with torch.no_grad():
            model.model.embed_tokens.weight.normal_()
    ids = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        want = model(ids).logits
    save_adapter(model, tmp_path / "adapter")
    peft_layout = method not in ("mora", "remora")  # peft has the others' method; MoRA's files are our own
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file() == peft_layout
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() == peft_layout
    assert (tmp_path / "adapter" / "mora_bench_adapter.safetensors").is_file() != peft_layout

    fresh = make_tiny_llama()
    with torch.no_grad():
        assert relerr(fresh(ids).logits, want) > 1e-3
    load_adapter(fresh, tmp_path / "adapter")
    assert adapter_config(fresh).to_dict() == adapter_config(model).to_dict()
    with torch.no_grad():
        got = fresh(ids).logits
    assert relerr(got, want) < 1e-6
    if method == "asylora":
        assert not fresh.model.layers[0].self_attn.q_proj.lora_A.requires_grad


@pytest.mark.parametrize("method", ["relora", "remora"])
def test_save_load_adapter_after_restarts(method, make_tiny_llama, randomize, relerr, tmp_path):
    """After merge-and-reinit the trained update partly lives in the base weights; the adapter
    checkpoint must still reproduce the model when loaded into the original base."""
    model = make_tiny_llama()
    apply_adapters(model, {"method": method, "r": 2})
    for _ in range(2):
        randomize(model, std=0.1)
        merge_and_reinit(model)
    randomize(model, std=0.1)
    ids = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        want = model(ids).logits
    save_adapter(model, tmp_path)
    fresh = make_tiny_llama()
    load_adapter(fresh, tmp_path)
    if method == "remora":
        assert fresh.model.layers[1].mlp.down_proj.sharing_type == 3
    with torch.no_grad():
        assert relerr(fresh(ids).logits, want) < 1e-6


def test_load_adapter_shape_mismatch_names_the_layer(make_tiny_llama, tmp_path):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "mora", "r": 2})
    save_adapter(model, tmp_path)
    other = make_tiny_llama(intermediate_size=48)
    mismatch = r"layer 'model\.layers\.0\.mlp\.\w+_proj': checkpoint was saved for \(out, in\)"
    with pytest.raises(ValueError, match=mismatch):
        load_adapter(other, tmp_path)
    assert adapter_layers(other) == [], "a failed load must leave the model as it was"


def test_load_adapter_method_mismatch_names_the_method(make_tiny_llama, tmp_path):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "mora", "r": 2})
    save_adapter(model, tmp_path)
    other = make_tiny_llama()
    apply_adapters(other, {"method": "lora", "r": 2})
    with pytest.raises(ValueError, match=r"'method': \('mora', 'lora'\)"):
        load_adapter(other, tmp_path)


def test_load_adapter_kind_mismatch_names_the_option(make_tiny_llama, tmp_path):
    model = make_tiny_llama()
    apply_adapters(model, {"method": "mora", "r": 2, "kind": "rotation"})
    save_adapter(model, tmp_path)
    other = make_tiny_llama()
    apply_adapters(other, {"method": "mora", "r": 2, "kind": "sharing"})
    with pytest.raises(ValueError, match=r"'kind': \('rotation', 'sharing'\)"):
        load_adapter(other, tmp_path)


def test_load_adapter_not_a_checkpoint(make_tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="not an adapter checkpoint: mora_bench_adapter.json is missing"):
        load_adapter(make_tiny_llama(), tmp_path)


# -- dtype ------------------------------------------------------------------------------------------

DTYPE_METHODS = [
    ("lora", {}),
    ("dora", {}),
    ("mora", {"mora_type": 1}),
    ("mora", {"kind": "rotation"}),
    ("mora", {"kind": "truncation"}),
    ("remora", {}),
]


@pytest.mark.parametrize("method_opts", DTYPE_METHODS, ids=_ids)
def test_adapter_weights_are_fp32_on_a_bf16_base(method_opts, randomize):
    method, opts = method_opts
    base = nn.Linear(23, 37, dtype=torch.bfloat16)
    layer = make_adapter(base, method, 2, **opts)
    params = dict(layer.adapter_parameters())
    assert params
    assert all(p.dtype == torch.float32 for p in params.values()), {n: p.dtype for n, p in params.items()}
    assert base.weight.dtype == torch.bfloat16
    randomize(layer, std=0.1)
    x = torch.randn(4, 23, dtype=torch.bfloat16)
    with torch.no_grad():
        out = layer(x)
        assert out.dtype == torch.bfloat16
        assert layer.delta_weight().dtype == torch.float32
        # the bf16 output agrees with an fp32 evaluation of the same weights
        ref = x.float() @ (base.weight.float() + layer.delta_weight().float()).T + base.bias.float()
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 3e-2


def test_fp32_adapter_keeps_a_value_bf16_would_round():
    torch.manual_seed(0)
    layer = make_adapter(nn.Linear(64, 64, bias=False, dtype=torch.bfloat16), "mora", 2)
    with torch.no_grad():
        layer.mora_M.fill_(1.0 + 2.0**-12)  # not representable in bf16
    assert layer.mora_M.dtype == torch.float32
    assert layer.mora_M[0, 0].item() == 1.0 + 2.0**-12
    assert torch.tensor(1.0 + 2.0**-12, dtype=torch.bfloat16).item() == 1.0


# DoRA's merge writes round(m V / ||V||) from fp32 directly (one rounding by construction), not W0 + ΔW.
@pytest.mark.parametrize("method_opts", [m for m in DTYPE_METHODS if m[0] != "dora"], ids=_ids)
def test_merge_into_bf16_rounds_once(method_opts, randomize):
    """merge = round(W0 + ΔW) computed in fp32, not round(W0 + round(ΔW)); unmerge likewise."""
    method, opts = method_opts
    torch.manual_seed(1)
    base = nn.Linear(40, 24, bias=False, dtype=torch.bfloat16)
    layer = make_adapter(base, method, 2, **opts)
    randomize(layer, std=0.05)
    w0 = base.weight.detach().clone()
    with torch.no_grad():
        delta = layer.delta_weight()
        want = (w0.float() + delta).to(torch.bfloat16)
        twice = w0 + delta.to(torch.bfloat16)  # the double rounding this must not do
        layer.merge()
    assert torch.equal(base.weight, want)
    assert not torch.equal(want, twice)  # the probe can tell the two apart
    with torch.no_grad():
        layer.unmerge()
        delta_after = layer.delta_weight()
    assert torch.equal(base.weight, (want.float() - delta_after).to(torch.bfloat16))

"""Parameter budget on the LLaMA-2-7B layer set, built on the meta device (nothing allocated)."""

import warnings

import pytest
import torch

from mora.adapters import apply_adapters, budget_report

N_LAYERS = 32
HIDDEN, INTER, VOCAB = 4096, 11008, 32000
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
# parameters of LLaMA-2-7B (untied embeddings): 6,738,415,616
LLAMA7B_PARAMS = (
    2 * VOCAB * HIDDEN
    + HIDDEN
    + N_LAYERS * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER + 2 * HIDDEN)
)


def llama7b_meta():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=VOCAB,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return model


def _apply(model, cfg):
    """apply_adapters, returning (report, budget warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = apply_adapters(model, cfg)
    budget_warnings = [w for w in caught if "LoRA's parameters" in str(w.message)]
    return report, budget_warnings


def _all_meta(model):
    tensors = list(model.parameters()) + list(model.buffers())
    return all(t.device.type == "meta" for t in tensors)


def test_llama7b_meta_model_allocates_nothing():
    model = llama7b_meta()
    assert _all_meta(model)
    assert sum(p.numel() for p in model.parameters()) == LLAMA7B_PARAMS == 6_738_415_616


@pytest.mark.parametrize("r", [8, 256])
def test_lora_budget_exact(r):
    model = llama7b_meta()
    report, warned = _apply(model, {"method": "lora", "r": r})
    assert _all_meta(model)
    assert not warned
    for name in ATTN:
        assert report.layers[name] == N_LAYERS
        assert report.adapter[name] == N_LAYERS * (HIDDEN + HIDDEN) * r
        assert report.lora[name] == report.adapter[name]
    for name in MLP:
        assert report.adapter[name] == N_LAYERS * (HIDDEN + INTER) * r
    assert report.ratio == 1.0
    assert report.adapter_total == N_LAYERS * (4 * 8192 + 3 * 15104) * r
    assert report.other == {}
    assert report.total_params == LLAMA7B_PARAMS + report.adapter_total


@pytest.mark.parametrize(
    "kind,r,r_attn,r_mlp",
    [
        ("sharing", 8, 256, 348),
        ("rotation", 8, 256, 348),
        ("sharing", 256, 1448, 1966),
        ("rotation", 256, 1448, 1966),
    ],
)
def test_mora_budget_within_one_percent(kind, r, r_attn, r_mlp):
    model = llama7b_meta()
    report, warned = _apply(model, {"method": "mora", "r": r, "kind": kind})
    assert _all_meta(model)
    assert not warned, [str(w.message) for w in warned]
    for name in ATTN:
        assert report.layers[name] == N_LAYERS
        assert report.adapter[name] == N_LAYERS * r_attn * r_attn
    for name in MLP:
        assert report.layers[name] == N_LAYERS
        assert report.adapter[name] == N_LAYERS * r_mlp * r_mlp
    assert report.adapter_total == N_LAYERS * (4 * r_attn**2 + 3 * r_mlp**2)
    assert report.lora_total == N_LAYERS * (4 * 8192 + 3 * 15104) * r
    assert abs(report.ratio - 1.0) < 0.01
    assert report.ratio == report.adapter_total / report.lora_total
    assert report.other == {}


def test_mora_r8_per_type_numbers_from_the_spec():
    """q/k/v/o: 256^2 = 65,536 per layer (LoRA's budget exactly); gate/up/down: 348^2 = 121,104 vs 120,832."""
    model = llama7b_meta()
    report, _ = _apply(model, {"method": "mora", "r": 8})
    assert report.adapter["q_proj"] // N_LAYERS == 256 * 256 == 65_536
    assert report.lora["q_proj"] // N_LAYERS == 65_536
    assert report.adapter["down_proj"] // N_LAYERS == 121_104
    assert report.lora["down_proj"] // N_LAYERS == 120_832
    assert report.adapter_total == 20_014_592


def test_dora_warns_budget_off():
    model = llama7b_meta()
    report, warned = _apply(model, {"method": "dora", "r": 8})
    assert len(warned) == 1
    assert "more than 1%" in str(warned[0].message)
    assert report.adapter["q_proj"] == N_LAYERS * (8192 * 8 + HIDDEN)
    assert report.adapter["down_proj"] == N_LAYERS * (15104 * 8 + HIDDEN)
    assert report.ratio > 1.01
    assert _all_meta(model)


@pytest.mark.parametrize("method", ["loraplus", "asylora", "relora", "remora"])
def test_lora_and_mora_variants_do_not_warn(method):
    model = llama7b_meta()
    report, warned = _apply(model, {"method": method, "r": 8})
    assert not warned
    assert abs(report.ratio - 1.0) < 0.01
    assert _all_meta(model)


def test_asylora_frozen_A_counts_only_B():
    model = llama7b_meta()
    report, warned = _apply(model, {"method": "asylora", "r": 8, "freeze_A": True})
    assert report.adapter["q_proj"] == N_LAYERS * HIDDEN * 8
    assert report.adapter["down_proj"] == N_LAYERS * HIDDEN * 8
    assert len(warned) == 1  # half of LoRA's budget


def test_fft_counts_every_parameter():
    model = llama7b_meta()
    for p in model.parameters():
        p.requires_grad_(False)
    report, warned = _apply(model, {"method": "fft", "r": 8})
    assert not warned
    assert all(p.requires_grad for p in model.parameters())
    assert report.adapter_total == 0
    assert report.ratio is None
    assert report.trainable_total == report.total_params == LLAMA7B_PARAMS
    assert report.other["embed_tokens"] == VOCAB * HIDDEN
    assert report.other["q_proj"] == N_LAYERS * HIDDEN * HIDDEN


def test_trainable_modules_reported_as_other():
    model = llama7b_meta()
    report, _ = _apply(model, {"method": "mora", "r": 8, "trainable_modules": ["embed_tokens", "lm_head"]})
    assert report.other == {"embed_tokens": VOCAB * HIDDEN, "lm_head": VOCAB * HIDDEN}
    assert report.trainable_total == 20_014_592 + 2 * VOCAB * HIDDEN
    assert model.model.embed_tokens.weight.requires_grad
    assert not model.model.layers[0].self_attn.q_proj.base.weight.requires_grad


def test_budget_report_matches_apply_and_counts_only_trainable():
    model = llama7b_meta()
    report, _ = _apply(model, {"method": "mora", "r": 8, "target_modules": ["q_proj"]})
    assert set(report.adapter) == {"q_proj"}
    again = budget_report(model)
    assert again.to_dict() == report.to_dict()
    assert again.trainable_total == N_LAYERS * 65_536
    text = str(again)
    assert "q_proj" in text and "2,097,152" in text and "k_proj" not in text

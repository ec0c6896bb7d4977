"""Shared fixtures: offline settings, a tiny random LLaMA built from a config, adapter randomisation."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"

import pytest
import torch

# The tensors here are tiny: one thread avoids OpenMP spin-waiting, which on a loaded 2-core machine
# made a tiny LLaMA forward ~100x slower than single-threaded.
torch.set_num_threads(1)

TINY_LLAMA = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=50,
    max_position_embeddings=64,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


def build_tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY_LLAMA, **overrides})
    model = LlamaForCausalLM(config)
    return model.eval()


@pytest.fixture
def make_tiny_llama():
    """Factory: `make_tiny_llama(seed=0, **config_overrides)` -> a fresh tiny LlamaForCausalLM in eval mode.
    The same seed gives the same weights, so two calls give two identical, independent models."""
    return build_tiny_llama


@pytest.fixture
def tiny_llama():
    return build_tiny_llama()


@torch.no_grad()
def randomize_adapter(layer, std: float = 0.2) -> None:
    """Give every adapter parameter of one layer random non-zero values (magnitudes stay positive)."""
    for name, param in layer.adapter_parameters():
        if "magnitude" in name:
            param.uniform_(0.5, 1.5)
        else:
            param.normal_(0.0, std)


@torch.no_grad()
def randomize_model_adapters(model, std: float = 0.2) -> None:
    from mora.adapters import adapter_layers

    layers = adapter_layers(model)
    assert layers, "model has no adapter layers"
    for _, layer in layers:
        randomize_adapter(layer, std)


@pytest.fixture
def randomize():
    """`randomize(layer_or_model, std=0.2)`: random non-zero adapter weights."""

    def _randomize(obj, std: float = 0.2):
        if hasattr(obj, "adapter_parameters"):
            randomize_adapter(obj, std)
        else:
            randomize_model_adapters(obj, std)

    return _randomize


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b must not be all zeros)."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item()
    assert scale > 0, "reference tensor is all zeros; the comparison would be meaningless"
    return (a - b).abs().max().item() / scale


@pytest.fixture
def relerr():
    return rel_err


@pytest.fixture(scope="session")
def shm_op():
    """DeepSpeed's CPU comm op compiles on first use (~1 min, once per machine): build it once here
    rather than in two racing ranks."""
    import subprocess
    import sys

    from runner import ROOT, deepspeed_cpu_env

    code = "import importlib; importlib.import_module('deepspeed.comm.torch').build_shm_op()"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=deepspeed_cpu_env(), check=True, capture_output=True,
                   timeout=900)

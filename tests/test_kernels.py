"""The fused adapter paths (mora.kernels) against the layers' reference paths, on the CPU in float64.

Both formulations of every fused Function run here: the eager one (buffer-reusing GEMMs) and the
functional one that torch.compile traces. The GPU agreement check in bf16 is bench/check_fast.py.
"""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mora import kernels
from mora.adapters import apply_adapters, make_adapter
from mora.adapters.config import config_class
from mora.kernels import fast_path, force_functional
from runner import adapter_methods

ROOT = Path(__file__).resolve().parents[1]

# Every registered method whose layer declares a fused path, as its YAML sets it, and option variants.
METHODS = [(m, {}) for m in adapter_methods() if "fused_forward" in vars(config_class(m).layer_class)] + [
    ("lora", {"rslora": True, "alpha": 3.0}),
    ("asylora", {"freeze_A": True}),
    ("mora", {"kind": "sharing"}),
    ("mora", {"mora_type": 2}),
    ("mora", {"mora_type": 3}),
    ("mora", {"mora_type": 4}),
    ("mora", {"kind": "rotation"}),
    ("mora", {"kind": "decouple"}),
    ("mora", {"kind": "truncation"}),
]
SHAPES = [(16, 16), (24, 40), (40, 24), (50, 130), (130, 50), (37, 37), (96, 20), (20, 96)]
RANKS = [1, 3, 8]


def _layer(method, opts, d, k, r, bias, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(k, d, bias=bias, dtype=torch.float64)
    try:
        layer = make_adapter(base, method, r, **opts)
    except ValueError:
        return None
    with torch.no_grad():
        for name, p in layer.adapter_parameters():
            if name == "dora_magnitude":
                p.uniform_(0.5, 2.0)
            else:
                p.normal_(0, 0.3)
    return layer


def _run(layer, x, gy, fast, functional=False):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    before = kernels.fused_calls()
    with fast_path("always" if fast else "off"), force_functional(functional):
        y = layer(x)
    took = kernels.fused_calls() - before
    y.backward(gy)
    grads = {n: p.grad.clone() for n, p in layer.adapter_parameters() if p.requires_grad}
    return y.detach(), x.grad, grads, took


def check_close(a, b, what):
    assert a.shape == b.shape, what
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), f"{what}: max abs err {(a - b).abs().max().item():.3g}"


def _compare(layer, lead=(3, 5), expect_fast=True):
    torch.manual_seed(7)
    x = torch.randn(*lead, layer.in_features, dtype=torch.float64)
    gy = torch.randn(*lead, layer.out_features, dtype=torch.float64)
    ref = _run(layer, x, gy, fast=False)
    assert ref[3] == 0
    for functional in (False, True):
        out = _run(layer, x, gy, fast=True, functional=functional)
        assert out[3] == (1 if expect_fast else 0), "fast path taken?"
        tag = f"{layer.config.method} {layer.extra_repr()} functional={functional}"
        check_close(out[0], ref[0], f"output {tag}")
        check_close(out[1], ref[1], f"grad x {tag}")
        assert out[2].keys() == ref[2].keys()
        for name in ref[2]:
            check_close(out[2][name], ref[2][name], f"grad {name} {tag}")


@pytest.mark.parametrize("method,opts", METHODS, ids=lambda v: v if isinstance(v, str) else str(v))
def test_fused_matches_reference(method, opts):
    ran = 0
    for (d, k), r, bias in itertools.product(SHAPES, RANKS, (False, True)):
        layer = _layer(method, opts, d, k, r, bias)
        if layer is None:
            continue
        _compare(layer)
        ran += 1
    assert ran >= 10


@pytest.mark.parametrize("kind", ["rotation", "decouple"])
def test_block_kinds_layouts(kind):
    """Truncated outputs with a straddling block, unused wrapped block, tiled outputs, k < r̂."""
    seen = set()
    for d, k, r in [(64, 200, 4), (200, 64, 4), (30, 30, 8), (33, 47, 4), (47, 33, 4), (11, 90, 2), (90, 11, 2)]:
        layer = _layer("mora", {"kind": kind}, d, k, r, bias=False)
        if layer is None:
            continue
        plan = layer.scheme.plan
        seen.add((plan.tile, plan.n_batch < plan.used))  # (tiled?, any block outside the batched GEMM?)
        _compare(layer, lead=(4,))
    assert len(seen) >= 3


def test_fold_overflow_keeps_reference():
    layer = _layer("mora", {"kind": "rotation", "overflow": "fold"}, 24, 100, 2, bias=False)
    assert layer.n_blocks * layer.r_hat > layer.out_features
    _compare(layer, expect_fast=False)


def test_partial_grads_and_no_input_grad():
    for method, opts in METHODS:
        layer = _layer(method, opts, 40, 24, 3, bias=True)
        if layer is None:
            continue
        x = torch.randn(6, 24, dtype=torch.float64)  # no grad wanted for x
        with fast_path("always"):
            y = layer(x)
        y.square().sum().backward()
        ref = _layer(method, opts, 40, 24, 3, bias=True)
        ref.fast_path = False
        ref(x).square().sum().backward()
        for (name, p), (_, q) in zip(layer.adapter_parameters(), ref.adapter_parameters()):
            if p.requires_grad:
                check_close(p.grad, q.grad, f"{method} {name}")


def test_auto_mode_keeps_cpu_on_reference():
    layer = _layer("lora", {}, 16, 16, 2, bias=False)
    kernels.reset_counts()
    with fast_path("auto"):
        layer(torch.randn(2, 16, dtype=torch.float64))
    assert kernels.path_counts() == {"lora": {"reference": 1}}


def test_layer_switch_and_unsupported_inputs():
    layer = _layer("lora", {"dropout": 0.1}, 16, 16, 2, bias=False)
    x = torch.randn(2, 16, dtype=torch.float64)
    with fast_path("always"):
        assert not kernels.supported(layer.train(), x)  # active dropout
        assert kernels.supported(layer.eval(), x)
        layer.fast_path = False
        assert not kernels.supported(layer, x)
        layer.fast_path = None
        assert not kernels.supported(layer, x.float())  # dtype mismatch
        layer.merge()
        assert not kernels.supported(layer, x)


def test_dora_norm_cache_follows_weight_edits():
    layer = _layer("dora", {}, 24, 40, 4, bias=False)
    x = torch.randn(5, 40, dtype=torch.float64)
    with fast_path("always"):
        layer(x)
        with torch.no_grad():
            layer.base.weight.mul_(1.5)
        fast = layer(x)
    layer.fast_path = False
    check_close(fast, layer(x), "dora after editing W0")


@pytest.mark.filterwarnings("ignore:.*trains")
def test_tiny_llama_end_to_end(make_tiny_llama):
    ids = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(1))
    for method, opts in METHODS:
        losses, grads = [], []
        for mode in ("off", "always"):
            model = make_tiny_llama(seed=3).double().train()
            apply_adapters(model, {"method": method, "r": 4, **opts})
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.requires_grad and "magnitude" not in name:
                        p.normal_(0, 0.05)
            with fast_path(mode):
                loss = model(ids, labels=ids).loss
            loss.backward()
            losses.append(loss.detach())
            grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        check_close(losses[1], losses[0], f"{method} loss")
        for name in grads[0]:
            check_close(grads[1][name], grads[0][name], f"{method} {name}")


def test_step_bench_cpu_mode(tmp_path):
    """bench/step_bench.py in its CPU mode: small shapes, every method, a table and a results file."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "bench" / "step_bench.py"), "--cpu", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "frozen base" in proc.stdout and "mora rotation" in proc.stdout
    assert (tmp_path / "results.jsonl").is_file()


_INTERP_SCRIPT = r"""
import itertools, os, sys
import torch
from torch import nn
import triton, triton.language as tl

@triton.jit
def _probe(x_ptr, n):
    for i in tl.range(tl.program_id(0), n, 2):
        tl.store(x_ptr + i, i)
try:
    _probe[(2,)](torch.zeros(4), 4)
except Exception as exc:  # this Triton/numpy pair's interpreter cannot run the kernel's loop
    print("INTERPRETER-UNSUPPORTED", exc)
    sys.exit(0)

from mora import kernels
from mora.adapters import make_adapter
from mora.kernels import fast_path, fused_gemm as fg
fg.usable = lambda x2, w: True  # the interpreter runs on the CPU
fg.set_gather(True)
METHODS = [("lora", {}), ("lora", {"rslora": True}), ("asylora", {"freeze_A": True}), ("dora", {}),
           ("mora", {"kind": "sharing"}), ("mora", {"mora_type": 2}), ("mora", {"mora_type": 3}),
           ("mora", {"mora_type": 4})]
worst, ran = 0.0, 0
for (method, opts), (d, k), r, bias in itertools.product(
        METHODS, [(16, 16), (24, 40), (40, 24), (48, 128), (8, 96)], [1, 3, 8], (False, True)):
    torch.manual_seed(0)
    try:
        layer = make_adapter(nn.Linear(k, d, bias=bias), method, r, **opts)
    except ValueError:
        continue
    with torch.no_grad():
        for name, p in layer.adapter_parameters():
            (p.uniform_(0.5, 2.0) if name == "dora_magnitude" else p.normal_(0, 0.3))
    x, gy = torch.randn(3, 5, k), torch.randn(3, 5, d)
    res = []
    for mode in ("off", "always"):
        layer.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        before = fg.launches[0]
        with fast_path(mode):
            y = layer(xx)
        y.backward(gy)
        if mode == "always":
            assert fg.launches[0] - before == 2, (method, opts, fg.launches[0] - before)
        res.append([y.detach(), xx.grad] + [p.grad for _, p in layer.adapter_parameters() if p.requires_grad])
    for a, b in zip(res[1], res[0]):
        err = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
        assert err < 1e-5, (method, opts, d, k, r, bias, err)
        worst = max(worst, err)
    ran += 1
print("OK", ran, worst)
"""


def test_triton_gemm_in_interpreter():
    """The Triton GEMM (fused_gemm.py) through every Function that uses it, run by Triton's CPU interpreter
    against the reference path (fp32). Skipped where Triton is not installed (CPU-only torch)."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", MORA_TRITON_CFG="32,32,16,2,4,2,1,0",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _INTERP_SCRIPT], capture_output=True, text=True, timeout=600,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if "INTERPRETER-UNSUPPORTED" in proc.stdout:
        pytest.skip(proc.stdout.strip()[:200])
    assert proc.stdout.strip().startswith("OK"), proc.stdout[-2000:]


def test_triton_gemm_never_on_cpu():
    """Without a CUDA device of compute capability >= 9 the Triton GEMM is never chosen."""
    from mora.kernels import fused_gemm

    x = torch.randn(4, 16)
    assert not fused_gemm.usable(x, torch.randn(16, 16))


# -- mixed precision: bf16 base and activations, fp32 adapter weights (docs/precision.md) -----------


def _mixed_run(layer, x, gy, fast, autocast):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    kernels.reset_counts()
    with fast_path("always" if fast else "off"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    counts = kernels.path_counts()
    y.float().backward(gy)
    grads = {n: p.grad for n, p in layer.adapter_parameters() if p.requires_grad}
    return y.detach().double(), x.grad.double(), grads, counts


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("method,opts", METHODS, ids=lambda v: v if isinstance(v, str) else str(v))
@pytest.mark.parametrize("autocast", [False, True], ids=["bf16", "bf16-autocast"])
def test_fused_mixed_precision_matches_reference(method, opts, autocast):
    """Fused and reference paths on a bf16 base with fp32 adapters, autocast on or off: the fused path
    runs, gradients land in fp32 on the fp32 weights, and both paths sit at bf16 distance of an fp64
    evaluation of the same weights (the fused one no further than 2x the reference, or 1e-2)."""
    torch.manual_seed(3)
    layer = _layer(method, opts, 40, 56, 4, bias=True)
    wide = _layer(method, opts, 40, 56, 4, bias=True)  # the same weights in fp64
    layer.base.to(torch.bfloat16)
    layer.base.requires_grad_(False)
    with torch.no_grad():
        for (_, p), (_, q) in zip(layer.adapter_parameters(), wide.adapter_parameters()):
            p.data = q.data.float()  # fp32 adapters, as the layer makes them on a bf16 base
        wide.base.weight.copy_(layer.base.weight.double())
        wide.base.bias.copy_(layer.base.bias.double())
    x = torch.randn(3, 5, 56, dtype=torch.bfloat16)
    gy = torch.randn(3, 5, 40)
    ref = _mixed_run(layer, x, gy, fast=False, autocast=autocast)
    out = _mixed_run(layer, x, gy, fast=True, autocast=autocast)
    exact = _run(wide, x.double(), gy.double(), fast=False)
    assert out[3][method].get("fused") == 1 and "reference" not in out[3][method], out[3]
    assert ref[3][method] == {"reference": 1}
    assert all(g.dtype == torch.float32 for g in out[2].values())
    for what, i in (("output", 0), ("grad x", 1)):
        assert _rel(out[i], exact[i]) <= max(2 * _rel(ref[i], exact[i]), 1e-2), what
    for name in exact[2]:
        assert _rel(out[2][name], exact[2][name]) <= max(2 * _rel(ref[2][name], exact[2][name]), 1e-2), name

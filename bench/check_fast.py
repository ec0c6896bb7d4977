#!/usr/bin/env python
"""Agreement check: the fused adapter paths (mora.kernels) against the reference path, in bf16.

Three layouts: all-bf16 layers; and, as `mora.train` runs them (docs/precision.md), a bf16 base with
fp32 adapter weights, without autocast ("mixed") and under bf16 autocast ("autocast"), each against
its own reference path in the same layout as the yardstick.

For every method/kind, many (d, k, r) shapes (LLaMA-2-7B's and odd ones) and token counts, and random
(nonzero) adapter weights, it compares against the reference path run in float64 on the same device:
the output, dL/dx and every adapter gradient, as ||t - t64|| / ||t64||. The bf16 reference path's own
error is the yardstick. A case passes when the fused error <= max(2 x reference error, 8e-3). Both
formulations are checked (eager, and the functional one torch.compile traces), and with --compile a
few layers also run under torch.compile.

    PYTHONPATH=. python bench/check_fast.py [--device cuda] [--out DIR] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mora import kernels  # noqa: E402
from mora.adapters import make_adapter  # noqa: E402
from mora.kernels import fast_path, force_functional  # noqa: E402
from mora.kernels import fused_gemm  # noqa: E402

METHODS = [
    ("lora", {}),
    ("dora", {}),
    ("mora-sharing", {"method": "mora", "kind": "sharing"}),
    ("mora-type2", {"method": "mora", "mora_type": 2}),
    ("mora-type3", {"method": "mora", "mora_type": 3}),
    ("mora-type4", {"method": "mora", "mora_type": 4}),
    ("mora-rotation", {"method": "mora", "kind": "rotation"}),
    ("mora-decouple", {"method": "mora", "kind": "decouple"}),
    ("mora-truncation", {"method": "mora", "kind": "truncation"}),
]
LLAMA_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (d, k): q/k/v/o, gate/up, down
ODD_SHAPES = [(200, 96), (96, 200), (130, 50), (64, 64), (33, 47), (300, 1000), (1000, 300)]
TOLERANCE = 8e-3


def _cases(quick: bool, llama: bool = True):
    llama_ranks = (8,) if quick else (8, 256)
    for (label, opts), (d, k), r in itertools.product(METHODS, LLAMA_SHAPES if llama else [], llama_ranks):
        yield label, opts, d, k, r, False, (2, 100)
    odd_ranks = (2,) if quick else (2, 8)
    for (label, opts), (d, k), r, bias in itertools.product(METHODS, ODD_SHAPES, odd_ranks, (False, True)):
        if quick and bias:
            continue
        yield label, opts, d, k, r, bias, (3, 37)


def _build(opts, d, k, r, bias, device, seed):
    opts = dict(opts)
    method = opts.pop("method", None)
    torch.manual_seed(seed)
    base = nn.Linear(k, d, bias=bias, dtype=torch.float64, device=device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = make_adapter(base, method, r, **opts)
    except ValueError:
        return None
    with torch.no_grad():
        for name, p in layer.adapter_parameters():
            if name == "dora_magnitude":
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
            elif name == "lora_B":
                p.normal_(0, 0.02)
            elif name == "mora_M":
                p.normal_(0, 0.02)
    return layer


def _run(layer, x, gy, mode, functional=False, triton=False, autocast=False):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    before = kernels.fused_calls()
    launched = fused_gemm.launches[0]
    with fast_path(mode), force_functional(functional), fused_gemm.enabled(triton, gather=triton):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):  # forward only, as the Trainer
            y = layer(x)
        y.backward(gy.to(y.dtype))
    took = kernels.fused_calls() - before
    if triton and fused_gemm.launches[0] == launched:
        took = -1  # the Triton GEMM does not apply here (shape, device or kind)
    tensors = {"out": y.detach(), "grad_x": x.grad}
    for name, p in layer.adapter_parameters():
        if p.requires_grad:
            tensors[f"grad_{name}"] = p.grad
    return tensors, took


def _mixed(layer64, dtype):
    """The layer as mora.train holds it: the frozen base in `dtype`, the adapter weights in fp32."""
    layer = copy.deepcopy(layer64)
    layer.base.to(dtype)
    for _, p in layer.adapter_parameters():
        p.data = p.data.float()
    return layer


def _rel(a, b):
    a, b = a.double(), b.double()
    den = b.norm().item()
    return (a - b).norm().item() / den if den > 0 else (a - b).norm().item()


def _compare(got, ref, ref16):
    """(all pass, the failing or else the worst (tensor, fused err, reference err, ok))."""
    rows = []
    for key in ref:
        err, base = _rel(got[key], ref[key]), _rel(ref16[key], ref[key])
        rows.append((key, err, base, math.isfinite(err) and err <= max(2.0 * base, TOLERANCE)))
    bad = [row for row in rows if not row[3]]
    return not bad, bad[0] if bad else max(rows, key=lambda row: row[1] / max(row[2], 1e-12))


def run_check(device: str = "cuda", quick: bool = False, compile_cases: bool = False, log=print, llama: bool = True) -> bool:
    dtype = torch.bfloat16
    all_ok, count, t0 = True, 0, time.time()
    summary: dict[str, list] = {}
    log(f"# fused-path agreement check on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}), "
        f"bf16 vs float64 reference; pass: rel err <= max(2 x bf16 reference-path err, {TOLERANCE})")
    log(f"{'method':<16}{'d':>6}{'k':>6}{'r':>5}{'bias':>5} {'formulation':<12}{'worst tensor':<18}"
        f"{'fused err':>10}{'ref err':>10}  ok")
    for i, (label, opts, d, k, r, bias, lead) in enumerate(_cases(quick, llama)):
        layer64 = _build(opts if "method" in opts else {"method": label, **opts}, d, k, r, bias, device, seed=i)
        if layer64 is None:
            continue
        layer16 = copy.deepcopy(layer64).to(dtype)
        gen = torch.Generator(device=device).manual_seed(1000 + i)
        x = torch.randn(*lead, k, device=device, dtype=torch.float64, generator=gen)
        gy = torch.randn(*lead, d, device=device, dtype=torch.float64, generator=gen)
        ref, _ = _run(layer64, x, gy, "off")
        ref16, _ = _run(layer16, x.to(dtype), gy.to(dtype), "off")
        variants = [("triton", False, True), ("eager", False, False), ("functional", True, False)]
        for tag, functional, triton in variants:
            got, took = _run(layer16, x.to(dtype), gy.to(dtype), "always", functional, triton)
            if took == -1:
                continue
            label_t = f"{label}+triton" if triton else label
            ok, (key, err, base, _) = _compare(got, ref, ref16)
            ok = ok and took == 1
            all_ok &= ok
            count += 1
            summary.setdefault(label_t, []).append((err, base, ok))
            if not ok or (d, k) in LLAMA_SHAPES:
                log(f"{label:<16}{d:>6}{k:>6}{r:>5}{int(bias):>5} {tag:<12}{key:<18}{err:>10.2e}{base:>10.2e}  "
                    f"{'yes' if ok else 'NO'}{'' if took else ' (fused path not taken)'}")
        mixed = _mixed(layer64, dtype)
        for tag, autocast in (("mixed", False), ("autocast", True)):
            ref_mixed, _ = _run(mixed, x.to(dtype), gy, "off", autocast=autocast)
            got, took = _run(mixed, x.to(dtype), gy, "always", autocast=autocast)
            ok, (key, err, base, _) = _compare(got, ref, ref_mixed)
            ok = ok and took == 1 and all(t.dtype == torch.float32 for n, t in got.items() if n.startswith("grad_") and n != "grad_x")
            all_ok &= ok
            count += 1
            summary.setdefault(f"{label}+{tag}", []).append((err, base, ok))
            if not ok or (d, k) in LLAMA_SHAPES:
                log(f"{label:<16}{d:>6}{k:>6}{r:>5}{int(bias):>5} {tag:<12}{key:<18}{err:>10.2e}{base:>10.2e}  "
                    f"{'yes' if ok else 'NO'}{'' if took else ' (fused path not taken)'}")
        del layer64, layer16, mixed
    if compile_cases and device == "cuda":
        # (1000, 300): the cuBLAS formulations (300 is no multiple of 8); (1000, 304): the Triton GEMM
        compiled_cases = [(c, 1000, 300) for c in METHODS[:3] + METHODS[6:7] + METHODS[8:9]]
        compiled_cases += [(c, 1000, 304) for c in METHODS[:4]]
        for (label, opts), d, k in compiled_cases:
            r = 8
            launched = fused_gemm.launches[0]
            layer64 = _build(opts if "method" in opts else {"method": label, **opts}, d, k, r, False, device, 99)
            layer16 = copy.deepcopy(layer64).to(dtype)
            x = torch.randn(4, 64, k, device=device, dtype=torch.float64)
            gy = torch.randn(4, 64, d, device=device, dtype=torch.float64)
            ref, _ = _run(layer64, x, gy, "off")
            ref16, _ = _run(layer16, x.to(dtype), gy.to(dtype), "off")
            torch._dynamo.reset()
            compiled = torch.compile(layer16)
            layer16.zero_grad(set_to_none=True)
            xc = x.to(dtype).requires_grad_(True)
            with fast_path("always"), fused_gemm.enabled(True, gather=True):
                y = compiled(xc)
            y.backward(gy.to(dtype))
            got = {"out": y.detach(), "grad_x": xc.grad}
            for name, p in layer16.adapter_parameters():
                if p.requires_grad:
                    got[f"grad_{name}"] = p.grad
            ok, (key, err, base, _) = _compare(got, ref, ref16)
            tri = fused_gemm.launches[0] > launched
            label_t = f"{label}+triton" if tri else label
            all_ok &= ok
            count += 1
            summary.setdefault(label_t, []).append((err, base, ok))
            log(f"{label_t:<16}{d:>6}{k:>6}{r:>5}{0:>5} {'compiled':<12}{key:<18}{err:>10.2e}{base:>10.2e}  "
                f"{'yes' if ok else 'NO'}")
    log("")
    log(f"{'method':<22}{'compared':>9}{'max fused err':>15}{'max ref err':>13}{'max fused/ref':>15}  all pass")
    for label, rows in summary.items():
        ratio = max(e / max(b, 1e-12) for e, b, _ in rows)
        log(f"{label:<22}{len(rows):>9}{max(e for e, _, _ in rows):>15.2e}{max(b for _, b, _ in rows):>13.2e}"
            f"{ratio:>15.2f}  {'yes' if all(ok for _, _, ok in rows) else 'NO'}")
    log(f"agreement check: {count} comparisons in {time.time() - t0:.0f} s: {'ALL PASS' if all_ok else 'FAILURES'}")
    return all_ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write check.txt here")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also check a few layers under torch.compile")
    parser.add_argument("--no-llama", action="store_true", help="skip the LLaMA-sized shapes (CPU smoke runs)")
    args = parser.parse_args(argv)
    lines = []

    def log(line=""):
        print(line, flush=True)
        lines.append(line)

    ok = run_check(args.device, args.quick, args.compile, log, llama=not args.no_llama)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "check.txt").write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

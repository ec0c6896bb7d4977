#!/usr/bin/env python
"""Kernel benchmark: the fused Triton GEMM (mora/kernels/fused_gemm.py) against cuBLAS, on the LLaMA-2-7B
projection shapes (8192 tokens), forward (x W^T) and input gradient (gy W), per tile configuration.

Rows: cuBLAS alone (the frozen base's GEMM, the floor), the cuBLAS formulation of LoRA r8 the fused
path replaces (u = x A^T, E = u (sB)^T, E.addmm_(x, W^T), i.e. the adapter term written then read by
the GEMM), and the Triton kernel without epilogue, with the rank-8 term, with the rank-256 term and
with sharing's gather (r̂ = 348 / 1966). Each result is checked against a float64 product first.

    PYTHONPATH=. python bench/gemm_bench.py [--configs all|default] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mora.kernels import fused_gemm as fg  # noqa: E402

CANDIDATES = [
    (128, 256, 64, 8, 8, 3, True, False),
    (128, 256, 64, 8, 8, 3, False, False),
    (128, 128, 64, 8, 8, 4, True, False),
    (128, 128, 64, 8, 4, 4, True, False),
    (128, 256, 64, 8, 8, 4, True, False),
    (256, 128, 64, 8, 8, 3, True, False),
]
# Warp-specialised configurations (tl.range(..., warp_specialize=True)): the first of them, (128, 128, 64, 8, 4,
# 3, True, True), hung on the H200 on 2026-12-01 (compile or run; the call ran out its 590 s). Only with --ws.
WS_CANDIDATES = [(128, 128, 64, 8, 4, 3, True, True), (128, 256, 64, 8, 8, 3, True, True)]
SHAPES = [("qkvo", 4096, 4096), ("gate/up", 11008, 4096), ("down", 4096, 11008)]  # (d, k)


def run_kernel(a, b, b_kn, u=None, v=None, g=None, i1=None, i2=None, config=None):
    """The kernel with exactly this configuration (no fallback to smaller tiles)."""
    return fg._launch(a, b, b_kn, u, v, g, i1, i2, None, None, config)


def bench(fn, ms=60):
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=ms, return_mode="median")


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default="all")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--ws", action="store_true", help="also the warp-specialised configurations (one hung once)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    M = args.tokens
    configs = (CANDIDATES + (WS_CANDIDATES if args.ws else [])) if args.configs == "all" else [fg.CONFIG]
    rows = []

    def log(*parts):
        print(*parts, flush=True)

    for name, d, k in SHAPES:
        W = torch.randn(d, k, device=dev, dtype=dt) * 0.02
        x = torch.randn(M, k, device=dev, dtype=dt)
        gy = torch.randn(M, d, device=dev, dtype=dt)
        for direction in ("fwd", "dgrad"):
            a, n_out = (x, d) if direction == "fwd" else (gy, k)
            b_kn = direction == "dgrad"
            flops = 2 * M * d * k
            ref_mm = (lambda: torch.mm(x, W.t())) if not b_kn else (lambda: torch.mm(gy, W))
            t_cublas = bench(ref_mm)
            # the cuBLAS LoRA r8 formulation the fused kernel replaces (eager path of lora.py)
            A = torch.randn(8, k if not b_kn else d, device=dev, dtype=dt) * 0.02
            V = torch.randn(8, n_out, device=dev, dtype=dt) * 0.02
            u = torch.mm(a, A.t())

            def lora_cublas():
                e = torch.mm(u, V)
                return e.addmm_(x, W.t()) if not b_kn else e.addmm_(gy, W)

            t_lora_cublas = bench(lora_cublas)
            log(f"{name:8} {direction:5} cuBLAS {t_cublas * 1e3:7.1f} us ({flops / t_cublas / 1e9:5.0f} TFLOP/s)  "
                f"cuBLAS addmm onto u V: {t_lora_cublas * 1e3:7.1f} us")
            rows.append(dict(shape=name, dir=direction, impl="cublas", us=t_cublas * 1e3))
            rows.append(dict(shape=name, dir=direction, impl="cublas lora8 addmm (u mm excluded)",
                             us=t_lora_cublas * 1e3))
            exact = (a.double() @ (W.double().t() if not b_kn else W.double()))
            exact_lr = exact + u.double() @ V.double()
            for ci, cfg in enumerate(configs):
                try:
                    out = run_kernel(a, W, b_kn, config=cfg)
                    e0 = rel(out, exact)
                    t_plain = bench(lambda: run_kernel(a, W, b_kn, config=cfg))
                    out = run_kernel(a, W, b_kn, u=u, v=V, config=cfg)
                    e1 = rel(out, exact_lr)
                    t_lr = bench(lambda: run_kernel(a, W, b_kn, u=u, v=V, config=cfg))
                except Exception as exc:  # a config may not fit (shared memory) or may not compile
                    log(f"   cfg{ci} {cfg}: FAILED {type(exc).__name__}: {str(exc)[:160]}")
                    continue
                log(f"   cfg{ci} {cfg}: plain {t_plain * 1e3:7.1f} us ({t_plain / t_cublas:5.3f} x cuBLAS, err {e0:.1e})"
                    f"  +lowrank8 {t_lr * 1e3:7.1f} us ({t_lr / t_cublas:5.3f}, err {e1:.1e})")
                rows.append(dict(shape=name, dir=direction, impl=f"triton cfg{ci}", cfg=cfg, us=t_plain * 1e3, err=e0))
                rows.append(dict(shape=name, dir=direction, impl=f"triton cfg{ci} +lr8", cfg=cfg, us=t_lr * 1e3, err=e1))
            # the default configuration with the larger epilogues
            cfg = fg.CONFIG
            try:
                u256 = torch.randn(M, 256, device=dev, dtype=dt)
                V256 = torch.randn(256, n_out, device=dev, dtype=dt) * 0.02
                out = run_kernel(a, W, b_kn, u=u256, v=V256, config=cfg)
                e2 = rel(out, exact + u256.double() @ V256.double())
                t256 = bench(lambda: run_kernel(a, W, b_kn, u=u256, v=V256, config=cfg))
                rh = 348 if d == k else 1966
                g = torch.randn(M, 352 if rh == 348 else 1968, device=dev, dtype=dt)[:, :rh]
                i1 = (torch.arange(n_out, device=dev) % rh).to(torch.int32)
                i2 = torch.where(torch.arange(n_out, device=dev) < 100, torch.arange(n_out, device=dev) + 7,
                                 -1).to(torch.int32)
                out = run_kernel(a, W, b_kn, g=g, i1=i1, i2=i2 if b_kn else None, config=cfg)
                expect = exact + g.double()[:, i1.long()]
                if b_kn:
                    expect = expect + torch.where(i2[None] >= 0, g.double()[:, i2.clamp_min(0).long()], 0.0)
                e3 = rel(out, expect)
                tg = bench(lambda: run_kernel(a, W, b_kn, g=g, i1=i1, i2=i2 if b_kn else None, config=cfg))
                log(f"   default {cfg}: +lowrank256 {t256 * 1e3:7.1f} us ({t256 / t_cublas:5.3f}, err {e2:.1e})  "
                    f"+gather r̂ {rh} {tg * 1e3:7.1f} us ({tg / t_cublas:5.3f}, err {e3:.1e})")
                rows.append(dict(shape=name, dir=direction, impl="triton default +lr256", us=t256 * 1e3, err=e2))
                rows.append(dict(shape=name, dir=direction, impl="triton default +gather", us=tg * 1e3, err=e3))
            except Exception as exc:
                log(f"   default epilogues FAILED {type(exc).__name__}: {str(exc)[:200]}")
        del W, x, gy
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gemm_bench.json").write_text(json.dumps(rows, indent=1))
    # per config: total over the six GEMMs, relative to cuBLAS's total
    total_cublas = sum(r["us"] for r in rows if r["impl"] == "cublas")
    log(f"\ntotal over 6 GEMMs: cuBLAS {total_cublas:.0f} us")
    for ci in range(len(configs)):
        for tag in ("", " +lr8"):
            t = [r["us"] for r in rows if r["impl"] == f"triton cfg{ci}{tag}"]
            if len(t) == 6:
                log(f"  cfg{ci}{tag:6} {configs[ci]}: {sum(t):.0f} us = {sum(t) / total_cublas:.3f} x cuBLAS")
    return 0


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print(f"gemm_bench {time.time() - t0:.0f} s")
    sys.exit(rc)

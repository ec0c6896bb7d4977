#!/usr/bin/env python
"""Training-step benchmark of every adapter method against the frozen base, in one command.

GPU (the setup of shared/spec/methods.md): 4 random LLaMA-2-7B decoder layers (transformers'
LlamaDecoderLayer, SDPA attention), bf16, 8192 tokens per step (4 x 2048), forward + backward + AdamW,
adapters on all 7 projections. Each configuration builds fresh layers, runs a few warm-up steps
(compilation happens there), then times `--steps` steps with CUDA events; the median is reported.

    PYTHONPATH=. python bench/step_bench.py [--check] [--out DIR]      # H200: the full table
    PYTHONPATH=. python bench/step_bench.py --cpu                      # small shapes, any machine

Rows: frozen base (eager and torch.compile), full fine-tuning, peft LoRA / DoRA, and ours (mora.adapters
with the fused paths of mora.kernels, picked automatically on CUDA): LoRA, DoRA, MoRA sharing, rotation,
decouple, truncation, at r 8 and r 256, eager and compiled. Ratios: to the faster frozen base of this
run, and to peft's LoRA at the same r (its faster mode). Targets (issue 8) are evaluated at the end
against the compiled frozen base. Results go to DIR/results.jsonl (one line per configuration, written
as the run goes) and DIR/table.md; `--budget-s` stops starting new configurations in time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mora import kernels  # noqa: E402
from mora.kernels import fused_gemm  # noqa: E402
from mora.adapters import adapter_layers, apply_adapters  # noqa: E402

TRITON_DEFAULT = fused_gemm.set_enabled(True)  # MORA_TRITON=0 switches the Triton GEMM off for every row
fused_gemm.set_enabled(TRITON_DEFAULT)
GATHER_DEFAULT = fused_gemm.gather_on()  # MORA_TRITON_GATHER=1: sharing's gather epilogue in every row
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GiB = 1024**3


@dataclass
class Config:
    family: str  # frozen | fft | peft | ours | cublas (ours, Triton GEMM off) | gather (ours, sharing's opt-in
    # Triton gather epilogue on) | plain (ours, fused paths off)
    method: str  # display name
    r: int | None
    compiled: bool
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        rank = f" r{self.r}" if self.r else ""
        return f"{self.family}:{self.method}{rank}:{'compiled' if self.compiled else 'eager'}"


OURS = [
    ("lora", {"method": "lora"}),
    ("dora", {"method": "dora"}),
    ("mora sharing", {"method": "mora", "kind": "sharing"}),
    ("mora rotation", {"method": "mora", "kind": "rotation"}),
    ("mora decouple", {"method": "mora", "kind": "decouple"}),
    ("mora truncation", {"method": "mora", "kind": "truncation"}),
]


def alpha_for(r: int) -> float:
    return 16.0 if r <= 8 else 128.0  # the paper's settings: 16 at r 8, 128 at r 256


def plan_configs(args) -> list[Config]:
    """Every configuration, in the order they run: what the targets need first."""
    lo, hi = args.ranks
    compile_ok = not args.no_compile
    out: list[Config] = [Config("frozen", "frozen base", None, False)]
    if compile_ok:
        out.append(Config("frozen", "frozen base", None, True))
    ours = dict(OURS)

    def o(name, r, compiled):
        return Config("ours", name, r, compiled, ours[name])

    first = [o("lora", lo, True), o("mora sharing", lo, True), o("mora rotation", lo, True),
             o("dora", lo, True), o("mora sharing", hi, True)] if compile_ok else []
    out += first
    if args.triton_off:  # the same fused paths with the Triton GEMM off (cuBLAS formulations), right after
        for name, r, compiled in [("lora", lo, True), ("mora sharing", lo, True), ("dora", lo, True),
                                  ("mora sharing", hi, True), ("lora", lo, False), ("mora sharing", lo, False)]:
            if compiled and not compile_ok:
                continue
            out.append(Config("cublas", name, r, compiled, ours[name]))
        for r in (lo, hi):
            out.append(Config("gather", "mora sharing", r, True, ours["mora sharing"]))
    out += [Config("peft", "peft lora", lo, False)]
    if compile_ok:
        out += [Config("peft", "peft lora", lo, True)]
    for r in (lo, hi):
        for name, _ in OURS:
            for compiled in ((False, True) if compile_ok else (False,)):
                cfg = o(name, r, compiled)
                if cfg.name not in {c.name for c in out}:
                    out.append(cfg)
    out += [Config("peft", "peft dora", lo, False), Config("peft", "peft lora", hi, False),
            Config("peft", "peft dora", hi, False), Config("fft", "full fine-tuning", None, False)]
    if args.plain:
        for name in ("lora", "dora", "mora sharing", "mora rotation"):
            for compiled in ((False, True) if compile_ok else (False,)):
                out.append(Config("plain", name, lo, compiled, ours[name]))
    if args.only:
        pattern = re.compile(args.only)
        out = [c for c in out if pattern.search(c.name)]
    return out


# -- model --------------------------------------------------------------------------------------------


class Stack(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, h, cos, sin):
        for layer in self.layers:
            h = layer(h, position_embeddings=(cos, sin))
            if isinstance(h, tuple):
                h = h[0]
        return h


def llama_config(args):
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        num_hidden_layers=args.layers,
        max_position_embeddings=max(4096, args.seq),
        rms_norm_eps=1e-5,
        vocab_size=32000,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def build(args, device, dtype, seed=0):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    cfg = llama_config(args)
    torch.manual_seed(seed)
    layers = []
    for i in range(args.layers):
        with torch.device(device):
            layers.append(LlamaDecoderLayer(cfg, i).to(dtype))
    stack = Stack(layers).train()
    with torch.device(device):
        rope = LlamaRotaryEmbedding(cfg)
    h = torch.randn(args.batch, args.seq, args.hidden, device=device, dtype=dtype)
    pos = torch.arange(args.seq, device=device).unsqueeze(0).expand(args.batch, -1)
    with torch.no_grad():
        cos, sin = rope(h, pos)
    return stack, h, cos, sin


@torch.no_grad()
def randomise_adapters(stack):
    """Small nonzero adapter weights (B and M start at zero; timing zeros flatters GEMMs)."""
    for name, p in stack.named_parameters():
        if p.requires_grad and any(t in name for t in ("lora_B", "mora_M")):
            p.normal_(0, 1e-3)


def apply_method(cfg: Config, stack):
    if cfg.family == "frozen":
        stack.requires_grad_(False)
    elif cfg.family == "fft":
        stack.requires_grad_(True)
    elif cfg.family == "peft":
        from peft import LoraConfig, inject_adapter_in_model

        pcfg = LoraConfig(r=cfg.r, lora_alpha=alpha_for(cfg.r), lora_dropout=0.0, target_modules=list(TARGETS),
                          use_dora=cfg.method == "peft dora")
        stack = inject_adapter_in_model(pcfg, stack)
        for name, p in stack.named_parameters():
            p.requires_grad_("lora_" in name)
        randomise_adapters(stack)
    else:
        stack.requires_grad_(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            options = dict(cfg.options)
            if options["method"] in ("lora", "dora"):
                options["alpha"] = alpha_for(cfg.r)
            apply_adapters(stack, {**options, "r": cfg.r})
        if cfg.family == "plain":
            for _, layer in adapter_layers(stack):
                layer.fast_path = False
        randomise_adapters(stack)
    return stack


# -- one configuration ------------------------------------------------------------------------------


def run_config(cfg: Config, args, device, dtype) -> dict:
    t_start = time.time()
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    stack, h, cos, sin = build(args, device, dtype)
    stack = apply_method(cfg, stack)
    params = [p for p in stack.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device == "cuda") if params else None
    if cfg.compiled:
        for layer in stack.layers:
            layer.compile()
    h.requires_grad_(True)
    gout = torch.randn_like(h) * 1e-2
    kernels.reset_counts()
    launched = fused_gemm.launches[0]
    fused_gemm.set_enabled(TRITON_DEFAULT and cfg.family != "cublas")  # every configuration sets both
    fused_gemm.set_gather(GATHER_DEFAULT or cfg.family == "gather")

    def step():
        out = stack(h, cos, sin)
        out.backward(gout)
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        h.grad = None

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.time()
    step()
    sync()
    first_s = time.time() - t0
    for _ in range(args.warmup - 1):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(args.steps)]
        for start, end in events:
            start.record()
            step()
            end.record()
        sync()
        times = [start.elapsed_time(end) for start, end in events]
        peak = torch.cuda.max_memory_allocated() / GiB
    else:
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
        peak = None
    fused = kernels.path_counts()
    triton_launches = fused_gemm.launches[0] - launched
    graph_breaks = sum(counters["graph_break"].values())
    graphs = counters["stats"].get("unique_graphs", 0)
    state_bytes = sum(p.numel() * p.element_size() * 4 for p in params)  # param, grad, 2 AdamW moments
    profile = None
    if args.profile and re.search(args.profile, cfg.name) and cuda:
        profile = profile_steps(step)
    del stack, opt, h, gout, params
    return {
        "name": cfg.name, "family": cfg.family, "method": cfg.method, "r": cfg.r,
        "mode": "compiled" if cfg.compiled else "eager",
        "ms": statistics.median(times), "ms_min": min(times), "ms_max": max(times), "steps": len(times),
        "peak_gib": peak, "trainable": trainable, "adapter_state_gib": state_bytes / GiB,
        "first_step_s": first_s, "wall_s": time.time() - t_start, "fused_calls": fused, "profile": profile,
        "graphs": graphs, "graph_breaks": graph_breaks, "triton_launches": triton_launches,
    }


def profile_steps(step, n=2) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=28, max_name_column_width=70)


# -- reporting -----------------------------------------------------------------------------------------


def _best(results, **match):
    rows = [r for r in results if r.get("ms") and all(r.get(k) == v for k, v in match.items())]
    return min(rows, key=lambda r: r["ms"]) if rows else None


def table(results, env) -> str:
    frozen_e = _best(results, family="frozen", mode="eager")
    frozen_c = _best(results, family="frozen", mode="compiled")
    frozen = _best(results, family="frozen")
    order = {"frozen": 0, "fft": 1, "peft": 2, "ours": 3, "cublas": 4, "gather": 5, "plain": 6}
    rows = sorted(results, key=lambda r: (order[r["family"]], r["r"] or 0, r["method"], r["mode"]))
    lines = [
        "| method | r | mode | ms/step | x frozen | x compiled frozen | x peft LoRA | peak GiB | mem limit GiB | "
        "trainable | first step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.get("ms"):
            lines.append(f"| {label(r)} | {r['r'] or '-'} | {r['mode']} | {r.get('error', 'not run')[:60]} "
                         "| | | | | | | |")
            continue
        peft = _best(results, family="peft", method="peft lora", r=r["r"]) if r["r"] else None
        ref_frozen = frozen_c if r["mode"] == "compiled" and frozen_c else frozen_e
        limit = mem_limit(r, ref_frozen)
        mem_ok = "" if limit is None or r["peak_gib"] is None else (" ok" if r["peak_gib"] <= limit else " OVER")
        peak = "" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        lim = "" if limit is None else f"{limit:.2f}"
        lines.append(
            f"| {label(r)} | {r['r'] or '-'} | {r['mode']} | {r['ms']:.1f} | "
            f"{_ratio(r, frozen)} | {_ratio(r, frozen_c)} | {_ratio(r, peft)} | "
            f"{peak} | {lim}{mem_ok} | {r['trainable']:,} | {r['first_step_s']:.1f} |"
        )
    return "\n".join(lines)


def label(r) -> str:
    if r["family"] == "ours":
        return f"ours {r['method']}"
    if r["family"] == "cublas":
        return f"ours {r['method']} (Triton GEMM off)"
    if r["family"] == "gather":
        return f"ours {r['method']} (Triton gather epilogue, opt-in)"
    if r["family"] == "plain":
        return f"plain-torch {r['method']} (fused paths off)"
    return r["method"]


def _ratio(r, ref) -> str:
    return f"{r['ms'] / ref['ms']:.3f}" if ref else ""


def mem_limit(r, frozen) -> float | None:
    """Frozen base's peak (same mode) + adapter and optimizer state + 10 % of the frozen peak."""
    if r["family"] not in ("ours", "cublas", "gather", "plain") or not frozen or frozen.get("peak_gib") is None:
        return None
    return frozen["peak_gib"] * 1.10 + r["adapter_state_gib"]


TARGET_LIST = [
    ("ours LoRA r8", "lora", "lo", 1.05),
    ("ours MoRA sharing r8", "mora sharing", "lo", 1.05),
    ("ours MoRA sharing r256", "mora sharing", "hi", 1.08),
    ("ours MoRA rotation r8", "mora rotation", "lo", 1.12),
    ("ours DoRA r8", "dora", "lo", 1.25),
]


def targets(results, ranks) -> list[str]:
    frozen_c = _best(results, family="frozen", mode="compiled") or _best(results, family="frozen")
    lines = ["| target | best ms (mode) | x compiled frozen | goal | status |", "|---|---|---|---|---|"]
    if not frozen_c:
        return lines + ["| (no frozen base measured) | | | | |"]
    for title, method, which, goal in TARGET_LIST:
        r = ranks[0] if which == "lo" else ranks[1]
        best = _best(results, family="ours", method=method, r=r)
        if not best:
            lines.append(f"| {title} <= {goal} | not run | | {goal} | not measured |")
            continue
        ratio = best["ms"] / frozen_c["ms"]
        lines.append(f"| {title} <= {goal} | {best['ms']:.1f} ({best['mode']}) | {ratio:.3f} | {goal} | "
                     f"{'met' if ratio <= goal else 'missed'} |")
    over = []
    checked = 0
    for r in results:
        if r["family"] != "ours" or not r.get("ms") or r.get("peak_gib") is None:
            continue
        frozen = _best(results, family="frozen", mode=r["mode"]) or frozen_c
        limit = mem_limit(r, frozen)
        checked += 1
        if limit is not None and r["peak_gib"] > limit:
            over.append(f"{label(r)} r{r['r']} {r['mode']} {r['peak_gib']:.2f} > {limit:.2f}")
    status = "met" if checked and not over else ("missed: " + "; ".join(over) if over else "not measured")
    lines.append(f"| peak memory <= frozen (same mode) + adapter/optimizer state + 10 % | {checked} configs | | | "
                 f"{status} |")
    return lines


def write_outputs(out_dir: Path, results, env, ranks, final=False) -> str:
    text = [f"# step_bench ({env['date']})", "", f"device: {env['device']}; torch {env['torch']}, transformers "
            f"{env['transformers']}, peft {env['peft']}, triton {env['triton']}", f"command: `{env['command']}`",
            f"setup: {env['setup']}", f"{env.get('triton_gemm', '')}", "", table(results, env), "", "## targets (ratio to the compiled frozen base)", "",
            *targets(results, ranks)]
    if not final:
        text.insert(2, "(partial: the run is still going)")
    body = "\n".join(text) + "\n"
    (out_dir / "table.md").write_text(body)
    return body


def environment(args, device) -> dict:
    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:
            return "absent"

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    tokens = args.batch * args.seq
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": name,
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "peft": version("peft"),
        "triton": version("triton"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "setup": f"{args.layers} LLaMA decoder layers (hidden {args.hidden}, intermediate {args.intermediate}, "
                 f"{args.heads} heads), {args.batch}x{args.seq} = {tokens} tokens/step, {args.dtype}, fwd+bwd+AdamW, "
                 f"median of {args.steps} steps after {args.warmup} warm-up",
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="small shapes on the CPU, eager only (a smoke run)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "out"))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=480.0, help="start no configuration past this many seconds")
    p.add_argument("--only", default=None, help="regex on configuration names (family:method rR:mode)")
    p.add_argument("--ranks", default=None, help="low,high ranks (default 8,256; CPU 2,8)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--plain", action="store_true", help="also time our layers with the fused paths off")
    p.add_argument("--triton-off", action="store_true",
                   help="also time a few of ours with the Triton GEMM off, and sharing with its opt-in gather epilogue")
    p.add_argument("--profile", default=None, help="regex: profile matching configurations (profiles.txt)")
    p.add_argument("--check", action="store_true", help="run the fused-path agreement check first")
    p.add_argument("--check-compile", action="store_true", help="the check also runs a few layers compiled")
    args = p.parse_args(argv)
    if args.cpu:
        defaults = dict(hidden=32, intermediate=86, heads=2, layers=4, batch=2, seq=16, steps=3, warmup=1,
                        dtype="float32", ranks="2,8")
        args.no_compile = True
    else:
        defaults = dict(hidden=4096, intermediate=11008, heads=32, layers=4, batch=4, seq=2048, steps=15, warmup=3,
                        dtype="bfloat16", ranks="8,256")
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.ranks = tuple(int(v) for v in str(args.ranks).split(","))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    dtype = getattr(torch, args.dtype)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.cpu:
        kernels.set_fast_path("always")  # exercise the fused Functions on the CPU too
        torch.set_num_threads(1)  # tiny shapes: threads only add noise
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch._dynamo.config.cache_size_limit = 64
    env = environment(args, device)
    if device == "cuda":
        fused_gemm.usable(torch.empty(8, 8, device=device, dtype=dtype), torch.empty(8, 8, device=device, dtype=dtype))
        env["triton_gemm"] = (f"Triton GEMM {'on' if TRITON_DEFAULT and fused_gemm.HAVE_TRITON else 'off'}, "
                              f"config {fused_gemm.CONFIG}")
    print(f"step_bench on {env['device']}: {env['setup']}", flush=True)
    if args.check:
        sys.path.insert(0, str(ROOT / "bench"))
        from check_fast import run_check

        lines = []

        def log(line=""):
            print(line, flush=True)
            lines.append(line)

        try:
            ok = run_check(device, quick=args.cpu, compile_cases=args.check_compile, log=log, llama=not args.cpu)
        except Exception:  # a crashing check must not cost the benchmark; it is reported as a failure
            log(traceback.format_exc())
            ok = False
        (out_dir / "check.txt").write_text("\n".join(lines) + "\n")
        print(f"agreement check: {'ALL PASS' if ok else 'FAILURES'} ({time.time() - t0:.0f} s)", flush=True)
    configs = plan_configs(args)
    results: list[dict] = []
    jsonl = out_dir / "results.jsonl"
    jsonl.write_text("")
    profiles = out_dir / "profiles.txt"
    estimates = {"eager": 6.0 if device == "cuda" else 0.5, "compiled": 45.0}
    for cfg in configs:
        elapsed = time.time() - t0
        mode = "compiled" if cfg.compiled else "eager"
        if elapsed + estimates[mode] > args.budget_s:
            print(f"skip {cfg.name}: {elapsed:.0f} s elapsed, ~{estimates[mode]:.0f} s needed, budget {args.budget_s:.0f} s",
                  flush=True)
            results.append({"name": cfg.name, "family": cfg.family, "method": cfg.method, "r": cfg.r, "mode": mode,
                            "error": "skipped (time budget)"})
            continue
        try:
            res = run_config(cfg, args, device, dtype)
            estimates[mode] = max(estimates[mode] * 0.5, 0.7 * estimates[mode] + 0.3 * res["wall_s"])
            if mode == "compiled":
                estimates[mode] = max(estimates[mode], res["wall_s"])
        except Exception as exc:  # keep going: one broken configuration must not lose the table
            traceback.print_exc()
            res = {"name": cfg.name, "family": cfg.family, "method": cfg.method, "r": cfg.r, "mode": mode,
                   "error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        profile = res.pop("profile", None)
        if profile:
            with profiles.open("a") as fh:
                fh.write(f"\n===== {cfg.name}: {res.get('ms', 0):.2f} ms/step =====\n{profile}\n")
        results.append(res)
        with jsonl.open("a") as fh:
            fh.write(json.dumps(res) + "\n")
        if res.get("ms"):
            print(f"{cfg.name:<44} {res['ms']:8.2f} ms  peak {res['peak_gib'] or 0:6.2f} GiB  trainable "
                  f"{res['trainable']:>12,}  first step {res['first_step_s']:5.1f} s  fused {res['fused_calls']}  "
                  f"graphs {res['graphs']} breaks {res['graph_breaks']} triton {res['triton_launches']}",
                  flush=True)
        else:
            print(f"{cfg.name:<44} {res['error']}", flush=True)
        write_outputs(out_dir, results, env, args.ranks)
    body = write_outputs(out_dir, results, env, args.ranks, final=True)
    print()
    print(body)
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

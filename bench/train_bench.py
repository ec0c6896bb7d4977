"""End-to-end training benchmark: `mora.train` as users run it, beside peft + the plain HF Trainer.

Every "ours" row is `mora.train.train(cfg)` on a config composed by Hydra (results store in a temp
dir, `train.save_model=false`), so it takes exactly the path a user's run takes: the Trainer, the
precision policy (bf16 base, fp32 adapters, bf16 autocast), the fused adapter paths and, compiled,
`train.compile=true`. Each "peft" row builds the same model, tokenizer and packed data with the same
builders and seed, wraps it with peft (fp32 adapter weights, its default) and trains it with a plain
`transformers.Trainer` at the same batch, precision and step count; compiled, its blocks are compiled
the same way (per decoder layer). The frozen base (forward + backward to the inputs, no trainable
weight) is timed by a plain loop as the floor. No side builds a KV cache (`use_cache` off, as in
`mora.train`), and Dynamo is reset between rows: a compiled block guards on the cache's per-layer
state, and a row that exhausts the recompile limit leaves later rows running eager. Both sides are
timed by the same Trainer callback (`mora.training.speed.Throughput`: optimizer steps after the first,
synchronised). Tokens/s is taken
from the median step (a one-off stall, seen once per run on the eager LoRA r8 path, is not the steady
state); the mean over the timed steps is kept beside it (`tokens_per_second_mean`).

    python bench/train_bench.py                      # LLaMA-2-7B shape, 32 layers, 4 x 2048 tokens
    python bench/train_bench.py --preset tiny        # a CPU smoke run of the same code

Model FLOPs per token (for MFU): 4 N + 12 L h s, N = parameters of the Linear layers (head
included), forward 2 N plus the input gradients 2 N (a frozen base has no weight gradients; the
adapters' own FLOPs are not counted), and attention's 12 L h s (PaLM's term: forward and backward of
QK^T and AV). MFU = that x tokens/s / 989.4 TFLOP/s (H100/H200 SXM dense bf16 datasheet).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PEAK_BF16 = 989.4e12
PRESETS = {
    # LLaMA-2-7B's architecture, bf16 base, 2048-token packed sequences, 4 per step.
    "7b": dict(model="llama2_7b_random", seq=2048, micro=4, steps=8, extra=[]),
    # The same code on a CPU in a minute: a tiny LLaMA, 64-token sequences.
    "tiny": dict(
        model="llama2_7b_random",
        seq=64,
        micro=2,
        steps=3,
        extra=[
            "model.tokenizer.vocab_size=512",
            "model.network.hidden_size=64",
            "model.network.num_layers=2",
            "model.network.num_heads=4",
            "model.network.intermediate_size=128",
            "model.network.max_position=128",
        ],
    ),
}


@dataclass
class Row:
    name: str
    overrides: list[str] = field(default_factory=list)
    peft: dict | None = None  # peft LoraConfig options for the peft + Trainer twin, if peft has the method
    floor: bool = False


ROWS = [
    Row("frozen base", floor=True),
    Row("LoRA r8", ["method=lora", "method.r=8", "method.alpha=16"], {"r": 8, "lora_alpha": 16}),
    Row("DoRA r8", ["method=dora", "method.r=8", "method.alpha=16"], {"r": 8, "lora_alpha": 16, "use_dora": True}),
    Row("MoRA rotation r8", ["method=mora", "method.r=8", "method.kind=rotation"]),
    Row("MoRA sharing r256", ["method=mora", "method.r=256", "method.kind=sharing"]),
    Row("LoRA r256", ["method=lora", "method.r=256", "method.alpha=128"], {"r": 256, "lora_alpha": 128}),
]
TARGETS = [  # (what, row, mode-free reference, at least)
    ("ours LoRA r8 >= 1.10x peft LoRA r8", ("ours", "LoRA r8"), ("peft", "LoRA r8"), 1.10),
    ("ours DoRA r8 >= 1.5x peft DoRA r8", ("ours", "DoRA r8"), ("peft", "DoRA r8"), 1.5),
    ("ours MoRA rotation r8 >= 0.95x peft LoRA r8", ("ours", "MoRA rotation r8"), ("peft", "LoRA r8"), 0.95),
    ("ours MoRA sharing r256 >= 0.90x frozen floor", ("ours", "MoRA sharing r256"), ("floor", "frozen base"), 0.90),
]
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def overrides(preset: dict, corpus: str, cache: str, runs: str, compiled: bool) -> list[str]:
    return [
        "experiment_name=train_bench",
        f"model={preset['model']}",
        f"model.tokenizer.files={corpus}",
        "data=c4_local",
        f"data.builder.source={corpus}",
        f"data.builder.max_length={preset['seq']}",
        "eval=none",
        "logger=none",
        f"paths.runs_dir={runs}",
        f"paths.cache_dir={cache}",
        "train.lr=1e-4",
        f"train.max_steps={preset['steps']}",
        f"train.batch_size={preset['micro']}",
        f"train.micro_batch_size={preset['micro']}",
        "train.precision=bf16",
        "train.progress_bar=false",
        "train.save_every=1000000",
        "train.save_model=false",
        f"train.compile={str(compiled).lower()}",
        *preset["extra"],
    ]


def compose(args: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=args)


def build_base(cfg):
    """Data and model exactly as mora.train builds them (mora.builders.build_parts)."""
    from mora.builders import build_parts

    parts = build_parts(cfg)
    return parts.task, parts.model


def flops_per_token(model, seq: int) -> float:
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    c = model.config
    return 4 * linear + 12 * c.num_hidden_layers * c.hidden_size * seq


def free() -> None:
    """Between rows: memory back, and Dynamo's caches emptied, so that no row inherits another's compiled
    code or its recompile count (Dynamo keeps both per code object, shared by every model in the process)."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_ours(cfg) -> dict:
    from mora.train import train

    metrics = train(cfg)
    return {**metrics["throughput"], "paths": metrics.get("kernels"), "trainable": metrics["budget"].get("trainable_total")}


def run_peft(cfg, options: dict, compiled: bool, out: str) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from mora.training.speed import Throughput, compile_blocks, without_kv_cache

    task, model = build_base(cfg)
    model = get_peft_model(model, LoraConfig(target_modules=TARGET_MODULES, lora_dropout=0.0, **options))
    if compiled:
        compile_blocks(model)
    metrics: dict = {}
    args = TrainingArguments(
        output_dir=out,
        max_steps=cfg.train.max_steps,
        per_device_train_batch_size=cfg.train.micro_batch_size,
        learning_rate=cfg.train.lr,
        bf16=True,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        include_num_input_tokens_seen="all",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=task.train_dataset(),
        data_collator=task.collator(),
        callbacks=[Throughput(metrics)],
    )
    with without_kv_cache(model):  # as mora.train does: no side builds a KV cache it never reads
        trainer.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del trainer, model
    return {**metrics["throughput"], "trainable": trainable, "optimizer": args.optim}


def run_floor(cfg, compiled: bool) -> dict:
    """Forward + backward to the inputs through the frozen base: no trainable weight, no optimizer."""
    from mora.training.speed import compile_blocks

    task, model = build_base(cfg)
    model.config.use_cache = False  # as mora.train does while training
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).requires_grad_(False).train()
    model.enable_input_require_grads()
    if compiled:
        compile_blocks(model)
    rows, collate = task.train_dataset(), task.collator()
    micro, steps = cfg.train.micro_batch_size, cfg.train.max_steps
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds = tokens = 0.0
    recent = []
    for step in range(steps):
        batch = {k: v.to(device) for k, v in collate([rows[(step * micro + i) % len(rows)] for i in range(micro)]).items()}
        if device == "cuda":
            torch.cuda.synchronize()
        begun = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if step:
            recent.append(time.perf_counter() - begun)
            seconds += recent[-1]
            tokens += batch["input_ids"].numel()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "steps_timed": steps - 1,
        "seconds_per_step": seconds / (steps - 1),
        "tokens_per_second": tokens / seconds,
        "peak_memory_gib": peak,
        "trainable": 0,
        "last_step_seconds": recent,
    }


def by_median_step(result: dict) -> dict:
    """tokens/s from the median timed step; the mean-based figure kept as tokens_per_second_mean."""
    steps = sorted(result.get("last_step_seconds") or [])
    if steps:
        per_step = result["tokens_per_second"] * result["seconds_per_step"]
        result["tokens_per_second_mean"] = result["tokens_per_second"]
        result["median_step_seconds"] = steps[len(steps) // 2]
        result["tokens_per_second"] = per_step / result["median_step_seconds"]
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| side | row | mode | tokens/s | median s/step | MFU | peak GiB | trainable | adapter paths |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['side']} | {r['row']} | {r['mode']} | failed: {r['error'][:80]} | | | | | |")
            continue
        peak = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") is not None else "-"
        lines.append(
            f"| {r['side']} | {r['row']} | {r['mode']} | {r['tokens_per_second']:,.0f} | "
            f"{r.get('median_step_seconds', r['seconds_per_step']):.3f} | "
            f"{r['mfu']:.1%} | {peak} | {r.get('trainable') or 0:,} | {r.get('paths') or ''} |"
        )
    return "\n".join(lines)


def best(results, side, row):
    """The faster mode's tokens/s of (side, row): each side in the mode it runs best."""
    found = [r for r in results if r["side"] == side and r["row"] == row and "error" not in r]
    return max(found, key=lambda r: r["tokens_per_second"]) if found else None


def targets(results: list[dict]) -> list[str]:
    out = []
    for what, (side, row), (ref_side, ref_row), need in TARGETS:
        a, b = best(results, side, row), best(results, ref_side, ref_row)
        if a is None or b is None:
            out.append(f"- {what}: not measured")
            continue
        ratio = a["tokens_per_second"] / b["tokens_per_second"]
        verdict = "met" if ratio >= need else "MISSED"
        out.append(f"- {what}: {ratio:.3f} ({a['mode']} vs {b['mode']}) {verdict}")
    for row in ROWS:
        a, b = best(results, "ours", row.name), best(results, "peft", row.name)
        if a and b and a.get("peak_memory_gib") is not None:
            verdict = "met" if a["peak_memory_gib"] <= b["peak_memory_gib"] else "MISSED"
            out.append(
                f"- peak memory ours <= peft, {row.name}: {a['peak_memory_gib']:.1f} vs {b['peak_memory_gib']:.1f} GiB {verdict}"
            )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="7b")
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--only", default=None, help="comma-separated row names")
    p.add_argument("--sides", default="floor,ours,peft")
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "*.txt"))
    p.add_argument("--cache", default=str(ROOT / ".cache" / "mora"))
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "out"))
    p.add_argument("--budget-s", type=float, default=540.0, help="start no row past this many seconds")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: list[dict] = []
    sides = args.sides.split(",")
    rows = [r for r in ROWS if not args.only or r.name in args.only.split(",")]
    for mode in args.modes.split(","):
        if "ours" in sides:  # untimed: first-use costs (kernel JIT, allocator, cuBLAS handles) stay out of every row
            with tempfile.TemporaryDirectory() as runs:
                warm = [*overrides(preset, args.corpus, args.cache, runs, mode == "compiled"), *ROWS[1].overrides]
                run_ours(compose([*warm, "train.max_steps=2"]))
            free()
        for row in rows:
            for side in sides:
                if (side == "floor") != row.floor or (side == "peft" and not row.peft):
                    continue
                if time.time() - started > args.budget_s:
                    print(f"budget spent: {side} {row.name} {mode} not run", flush=True)
                    continue
                with tempfile.TemporaryDirectory() as runs:
                    cfg = compose([*overrides(preset, args.corpus, args.cache, runs, mode == "compiled"), *row.overrides])
                    t0 = time.time()
                    try:
                        if side == "floor":
                            result = run_floor(cfg, mode == "compiled")
                        elif side == "ours":
                            result = run_ours(cfg)
                        else:
                            result = run_peft(cfg, row.peft, mode == "compiled", runs)
                    except Exception as exc:  # a row that fails is reported, the others still run
                        result = {"error": f"{type(exc).__name__}: {exc}"}
                    result.update(side=side, row=row.name, mode=mode, wall_s=time.time() - t0)
                if "error" not in result:
                    by_median_step(result)
                    result["mfu"] = flops_per_token_cached(cfg) * result["tokens_per_second"] / PEAK_BF16
                results.append(result)
                print(json.dumps(result), flush=True)
                with open(out / "train_bench.jsonl", "a") as handle:
                    handle.write(json.dumps(result) + "\n")
                free()
    report = "\n".join([table(results), "", *targets(results)])
    (out / "train_bench.md").write_text(report + "\n")
    print(report)
    return 0


_FLOPS: dict = {}


def flops_per_token_cached(cfg) -> float:
    """FLOPs per token of the preset's architecture (a meta-device model: nothing allocated)."""
    key = (cfg.model.network.hidden_size, cfg.model.network.num_layers, cfg.data.builder.max_length)
    if key not in _FLOPS:
        from transformers import LlamaConfig, LlamaForCausalLM

        n = cfg.model.network
        with torch.device("meta"):
            model = LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=cfg.model.tokenizer.vocab_size,
                    hidden_size=n.hidden_size,
                    intermediate_size=n.intermediate_size,
                    num_hidden_layers=n.num_layers,
                    num_attention_heads=n.num_heads,
                    num_key_value_heads=n.num_heads,
                )
            )
        _FLOPS[key] = flops_per_token(model, cfg.data.builder.max_length)
    return _FLOPS[key]


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Data-parallel scaling of the 250M from-scratch MoRA run under DeepSpeed ZeRO-2, 1 GPU vs N GPUs.

The run's own training path, minus Hydra and the data pipeline: the paper's 250M LLaMA (hidden 768,
24 layers, 16 heads, FFN 2560, vocab 32100 (T5), 512 tokens; conf/model/llama_250m.yaml) built from a
config, MoRA sharing at r 128 on all 7 projections with embeddings / norms / lm_head trainable
(conf/experiment/c4_pretrain_250m.yaml), the run's AdamW groups and schedule handed to the HF Trainer
with DeepSpeed ZeRO-2 bf16 (conf/train/deepspeed/zero2.yaml, "auto" values filled by the Trainer), on
random tokens. For each process count the script launches `torchrun --nproc_per_node N` on itself,
times `--steps` steps after `--warmup` (same micro-batch per GPU: weak scaling), then runs one ReMoRA
merge-and-reinit under ZeRO-2 and checks that DeepSpeed's fp32 master and Adam moments of M were reset.

    PYTHONPATH=. python3 bench/ddp_scaling.py --nprocs 1,2 --out $OUT/ddp_scaling.json      # GPUs
    PYTHONPATH=. python3 bench/ddp_scaling.py --cpu --tiny --nprocs 1,2                     # CPU, gloo

Prints tokens/s per process count, the scaling ratio (tokens/s on N / tokens/s on 1; target >= 1.8
for N = 2) and the peak memory (max over ranks of torch.cuda.max_memory_allocated), and writes them
as JSON. Needs torch, transformers, accelerate, deepspeed, pyyaml; no Hydra, no tokenizer, no data.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 1024**3
MODEL_250M = dict(hidden_size=768, num_layers=24, num_heads=16, intermediate_size=2560, vocab=32100, seq=512)
MODEL_TINY = dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, vocab=256, seq=32)
TARGET_SCALING = 1.8


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nprocs", default="1,2", help="process counts to measure, e.g. 1,2 (default) or 1,2,4")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per GPU per step (default 64; tiny: 4)")
    p.add_argument("--mora-r", dest="r", type=int, default=None, help="MoRA rank (default 128; tiny: 8)")
    p.add_argument("--zero", type=int, default=2, choices=(2, 3), help="ZeRO stage (conf/train/deepspeed/zeroN.yaml)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default bf16 on GPU, fp32 on CPU")
    p.add_argument("--cpu", action="store_true", help="run on the CPU with gloo (checks the script anywhere)")
    p.add_argument("--tiny", action="store_true", help="a tiny LLaMA instead of the 250M one")
    p.add_argument("--out", default=None, help="JSON file (default: $OUT/ddp_scaling.json, else bench/results/ddp_scaling.json)")
    p.add_argument("--timeout-s", type=int, default=900, help="per launch")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: JSON path of one launch
    args = p.parse_args(argv)
    args.micro_batch = args.micro_batch or (4 if args.tiny else 64)
    args.r = args.r or (8 if args.tiny else 128)
    args.precision = args.precision or ("fp32" if args.cpu else "bf16")
    return args


# -- one launch (every rank runs this) ---------------------------------------------------------------


class RandomTokens:
    """Row i: `seq` uniform token ids from a generator seeded by i (same rows whatever the world size)."""

    def __init__(self, rows: int, seq: int, vocab: int):
        self.rows, self.seq, self.vocab = rows, seq, vocab

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i: int):
        import torch

        ids = torch.randint(0, self.vocab, (self.seq,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids.clone()}


def build_model(shape: dict, r: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mora.adapters import apply_adapters

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_heads"],
        max_position_embeddings=shape["seq"],
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # ReMoRA = MoRA sharing (type 1) + merge-and-reinit: identical steps until the one restart at the end.
    method = {
        "method": "remora",
        "r": r,
        "kind": "sharing",
        "mora_type": 1,
        "merge_every": 10**9,  # the restart below is triggered by the bench, after the timed steps
        "trainable_modules": ["embed_tokens", ".*norm", "lm_head"],
    }
    report = apply_adapters(model, method)
    return model, report


def worker(args: argparse.Namespace) -> None:
    import torch
    import yaml
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from mora.adapters import restart_parameters
    from mora.training.distributed import init_deepspeed_state, keeping_optimizer
    from mora.training.optim import build_optimizer, build_scheduler
    from mora.training.zero import restart_adapters

    torch.set_num_threads(1 if args.cpu else torch.get_num_threads())
    shape = MODEL_TINY if args.tiny else MODEL_250M
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    model, report = build_model(shape, args.r)
    train_cfg = SimpleNamespace(
        optimizer="adamw", lr=5e-4, weight_decay=0.0, adam_betas=(0.9, 0.999), adam_eps=1e-8,
        schedule="constant", warmup_steps=0, min_lr_ratio=0.0, max_steps=args.warmup + args.steps + 2,
    )
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, 0, 0, train_cfg.max_steps)
    ds_config = yaml.safe_load((ROOT / "conf" / "train" / "deepspeed" / f"zero{args.zero}.yaml").read_text())
    extra = init_deepspeed_state()
    targs = TrainingArguments(
        output_dir=str(Path(args.worker).parent / f"trainer-{world}"),
        max_steps=train_cfg.max_steps,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=1,
        learning_rate=train_cfg.lr,
        max_grad_norm=1.0,
        logging_steps=1 if args.cpu else 5,  # a loss every few steps (one sync each)
        save_strategy="no",
        bf16=args.precision == "bf16",
        seed=0,
        data_seed=0,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=not args.cpu,
        disable_tqdm=True,
        deepspeed=ds_config,
        **extra,
    )
    timed_from, timed_to = args.warmup, args.warmup + args.steps
    record: dict = {"step_end": {}, "losses": {}, "restart": {}}

    def sync():
        if torch.cuda.is_available() and not args.cpu:
            torch.cuda.synchronize()

    class Clock(TrainerCallback):
        """Step-end timestamps; the restart runs at the end of the last timed step, after this."""

        def on_train_begin(self, a, state, control, **kw):
            sync()
            if torch.cuda.is_available() and not args.cpu:
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, a, state, control, **kw):
            sync()
            record["step_end"][state.global_step] = time.perf_counter()

    class Restart(TrainerCallback):
        """One ReMoRA merge-and-reinit under ZeRO after the timed steps, then a check that it reached
        DeepSpeed's fp32 master copy and the Adam moments of every M (on every rank's slices)."""

        def on_step_end(self, a, state, control, model=None, optimizer=None, **kw):
            if state.global_step != timed_to:
                return
            from deepspeed.utils import safe_get_full_fp32_param

            from mora.training.zero import full_moment

            sync()
            start = time.perf_counter()
            layers, touched = restart_adapters(model, optimizer, "full", 0.0)
            sync()
            seconds = time.perf_counter() - start
            worst = 0.0
            for param in restart_parameters(model)[:8]:
                for value in (
                    safe_get_full_fp32_param(param),
                    full_moment(param, optimizer, "exp_avg"),
                    full_moment(param, optimizer, "exp_avg_sq"),
                ):
                    worst = max(worst, float(value.abs().max()))
            record["restart"] = {"layers": layers, "moments_reset": touched, "seconds": seconds, "max_abs_after": worst}

    class Losses(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                record["losses"][state.global_step] = logs["loss"]

    trainer_cls = keeping_optimizer(Trainer)
    rows = train_cfg.max_steps * args.micro_batch * world
    trainer = trainer_cls(
        model=model,
        args=targs,
        train_dataset=RandomTokens(rows, shape["seq"], shape["vocab"]),
        optimizers=(optimizer, scheduler),
        callbacks=[Clock(), Restart(), Losses()],
    )
    trainer.train()

    import torch.distributed as dist

    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and not args.cpu else 0
    peak_reserved = torch.cuda.max_memory_reserved() if torch.cuda.is_available() and not args.cpu else 0
    peaks = [peak, peak_reserved]
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, peaks)
    else:
        gathered = [peaks]
    ends = record["step_end"]
    steps = [ends[s] - ends[s - 1] for s in range(timed_from + 1, timed_to + 1)]
    seconds = ends[timed_to] - ends[timed_from]
    tokens = args.steps * args.micro_batch * shape["seq"] * world
    if rank == 0:
        out = {
            "world_size": world,
            "device": "cpu" if args.cpu else torch.cuda.get_device_name(0),
            "tokens_per_s": tokens / seconds,
            "tokens_per_step": args.micro_batch * shape["seq"] * world,
            "step_ms_median": 1000 * statistics.median(steps),
            "step_ms_mean": 1000 * seconds / args.steps,
            "peak_mem_gib_max": max(g[0] for g in gathered) / GiB,
            "peak_reserved_gib_max": max(g[1] for g in gathered) / GiB,
            "peak_mem_gib_per_rank": [g[0] / GiB for g in gathered],
            "trainable_params": report.trainable_total,
            "total_params": report.total_params,
            "losses": {str(k): v for k, v in sorted(record["losses"].items())},
            "restart": record["restart"],
        }
        Path(args.worker).write_text(json.dumps(out, indent=2))
        print(f"[world {world}] {out['tokens_per_s']:,.0f} tokens/s, step {out['step_ms_median']:.1f} ms, "
              f"peak {out['peak_mem_gib_max']:.2f} GiB, restart {record['restart']}", flush=True)


# -- the driver ------------------------------------------------------------------------------------


def launch(args: argparse.Namespace, nproc: int, out_dir: Path) -> dict:
    result_path = out_dir / f"world{nproc}.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__]
    cmd += [f"--steps={args.steps}", f"--warmup={args.warmup}", f"--micro-batch={args.micro_batch}", f"--mora-r={args.r}"]
    cmd += [f"--zero={args.zero}", f"--precision={args.precision}", f"--worker={result_path}"]
    cmd += ["--cpu"] if args.cpu else []
    cmd += ["--tiny"] if args.tiny else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if args.cpu:
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    else:
        env.setdefault("DS_ACCELERATOR", "cuda")
    print(f"== {nproc} process(es): {' '.join(cmd[3:6])} ...", flush=True)
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.timeout_s)
    if proc.returncode != 0 or not result_path.is_file():
        return {"world_size": nproc, "error": f"launch exited {proc.returncode}", "wall_s": time.time() - start}
    result = json.loads(result_path.read_text())
    result["wall_s"] = time.time() - start
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    out = Path(args.out) if args.out else (
        Path(os.environ["OUT"]) / "ddp_scaling.json" if os.environ.get("OUT") else ROOT / "bench" / "results" / "ddp_scaling.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    nprocs = [int(n) for n in args.nprocs.split(",")]
    runs = [launch(args, n, out.parent) for n in nprocs]
    base = next((r for r in runs if r.get("world_size") == 1 and "tokens_per_s" in r), None)
    for r in runs:
        if base and "tokens_per_s" in r:
            r["scaling_vs_1"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["efficiency"] = r["scaling_vs_1"] / r["world_size"]
    summary = {
        "model": "tiny" if args.tiny else "llama_250m",
        "method": f"mora sharing r={args.r}, embeddings/norms/lm_head trainable",
        "zero_stage": args.zero,
        "precision": args.precision,
        "micro_batch_per_gpu": args.micro_batch,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "target_scaling_2": TARGET_SCALING,
        "runs": runs,
    }
    two = next((r for r in runs if r.get("world_size") == 2 and "scaling_vs_1" in r), None)
    if two:
        summary["scaling_2_vs_1"] = two["scaling_vs_1"]
        summary["meets_target"] = two["scaling_vs_1"] >= TARGET_SCALING
    out.write_text(json.dumps(summary, indent=2))
    print(f"\n{'procs':>5} {'tokens/s':>12} {'step ms':>9} {'scaling':>8} {'peak GiB':>9} {'restart':>8}")
    for r in runs:
        if "error" in r:
            print(f"{r['world_size']:>5} {r['error']}")
            continue
        restart_ok = r["restart"].get("max_abs_after") == 0.0
        print(f"{r['world_size']:>5} {r['tokens_per_s']:>12,.0f} {r['step_ms_median']:>9.1f} "
              f"{r.get('scaling_vs_1', float('nan')):>8.3f} {r['peak_mem_gib_max']:>9.2f} {'ok' if restart_ok else 'FAILED':>8}")
    if two:
        print(f"scaling 2 vs 1: {two['scaling_vs_1']:.3f} (target >= {TARGET_SCALING}): {'ok' if summary['meets_target'] else 'BELOW TARGET'}")
    print(f"wrote {out}")
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

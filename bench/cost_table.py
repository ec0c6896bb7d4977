"""Paper-scale smoke and cost table: every paper experiment's cost classes for a few optimizer steps on
one GPU through `mora.train`, with the experiment's own architecture, sequence length, micro batch,
precision and DeepSpeed choice, on random weights and a locally trained tokenizer of the paper's
vocabulary size (no hub).

The data are full-length packed rows of local text (`data=c4_local` at the experiment's max_length),
so each step costs what a step of full-length sequences costs: an upper bound for Tulu / MetaMath,
whose real rows are often shorter (the builders pad a batch to its longest row). Rows of one cost
class are measured once: LoRA+, AsyLoRA and ReLoRA train the LoRA layer (ReLoRA adds a merge every
1-2k steps, negligible), and the Tulu / BioMed / Finance runs share one shape (2048 tokens, micro 4).

Each run takes 3 optimizer steps of 2 micro-batches (the experiment's micro batch), the first
untimed; a paper step is projected as accumulation x (seconds per timed step / 2), where
accumulation = global batch / micro batch. `docs/cost.md` is written from this script's output.

    python bench/cost_table.py [--only tulu_2048] [--budget-s 540]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from train_bench import PRESETS, ROOT, compose, free

SEVEN_B = ["model=llama2_7b_random"]
FFT_FP32 = ["method=fft", "model.network.dtype=float32", "train.gradient_checkpointing=true"]
R8, R256 = ["method.r=8"], ["method.r=256"]
FINE_TUNING_ROWS = {
    "FFT (fp32 master, checkpointing)": FFT_FP32,
    "LoRA r8 (= LoRA+, AsyLoRA, ReLoRA)": ["method=lora", *R8, "method.alpha=16"],
    "DoRA r8": ["method=dora", *R8, "method.alpha=16"],
    "MoRA r8 (rotation)": ["method=mora", *R8, "method.kind=rotation"],
    "LoRA r256 (= LoRA+, AsyLoRA, ReLoRA)": ["method=lora", *R256, "method.alpha=128"],
    "DoRA r256": ["method=dora", *R256, "method.alpha=128"],
    "MoRA r256 (sharing)": ["method=mora", *R256, "method.kind=sharing"],
}
UUID_ROWS = {k: v for k, v in FINE_TUNING_ROWS.items() if k.split()[0] in ("FFT", "LoRA", "MoRA")}
PRETRAINING_ROWS = {
    "LoRA r128": ["method=lora", "method.r=128", "method.alpha=128"],
    "MoRA r128 (sharing)": ["method=mora", "method.r=128", "method.kind=sharing"],
    "ReLoRA r128": ["method=relora", "method.r=128", "method.alpha=128"],
    "ReMoRA r128": ["method=remora", "method.r=128"],
}


@dataclass
class Shape:
    """One measured configuration shape and the paper experiments that share it."""

    name: str
    experiment: str
    covers: list[str]
    model: list[str]
    rows: dict[str, list[str]]
    packed: bool = True  # full-length rows of local text; False: the experiment's own data (UUID pairs)


SHAPES = [
    Shape("tulu_2048", "tulu_mmlu", ["tulu_mmlu", "biomed_cpt", "finance_cpt"], SEVEN_B, FINE_TUNING_ROWS),
    Shape("metamath_512", "metamath_gsm8k", ["metamath_gsm8k"], SEVEN_B, FINE_TUNING_ROWS),
    Shape("uuid", "uuid_memorization", ["uuid_memorization"], SEVEN_B, UUID_ROWS, packed=False),
    Shape("c4_250m", "c4_pretrain_250m", ["c4_pretrain_250m"], ["model=llama_250m_local"], PRETRAINING_ROWS),
    Shape("c4_1b", "c4_pretrain_1b", ["c4_pretrain_1b"], ["model=llama_1b_local"], PRETRAINING_ROWS),
]


def run(shape: Shape, row: list[str], corpus: str, cache: str, extra: list[str]) -> dict:
    from mora.train import train

    paper = compose([f"experiment={shape.experiment}"])
    micro = int(paper.train.micro_batch_size)
    data = ["data=c4_local", f"data.builder.source={corpus}"]
    if shape.packed:
        data.append(f"data.builder.max_length={paper.data.builder.max_length}")
    with tempfile.TemporaryDirectory() as runs:
        cfg = compose(
            [
                f"experiment={shape.experiment}",
                *shape.model,
                f"model.tokenizer.files={corpus}",
                *(data if shape.packed else []),
                "eval=none",
                "eval.metric=null",
                "eval.steps=[]",
                "logger=none",
                f"paths.runs_dir={runs}",
                f"paths.cache_dir={cache}",
                "train.max_steps=3",
                "train.epochs=null",
                "train.warmup_steps=0",
                f"train.batch_size={2 * micro}",
                "train.progress_bar=false",
                "train.save_every=1000000",
                "train.save_model=false",
                *row,
                *extra,
            ]
        )
        metrics = train(cfg)
    speed = metrics["throughput"]
    accumulation = int(paper.train.batch_size) // micro
    return {
        "micro_batch": micro,
        "seq": int(cfg.data.builder.max_length) if shape.packed else None,
        "global_batch": int(paper.train.batch_size),
        "paper_step_s": accumulation * speed["seconds_per_step"] / 2,
        "tokens_per_second": speed["tokens_per_second"],
        "peak_memory_gib": speed["peak_memory_gib"],
        "trainable": metrics["budget"]["trainable_total"],
        "paths": metrics.get("kernels"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help="comma-separated shape names, run in that order")
    p.add_argument("--rows", default=None, help="comma-separated row-name prefixes")
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "*.txt"))
    p.add_argument("--cache", default=str(ROOT / ".cache" / "mora"))
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "out"))
    p.add_argument("--budget-s", type=float, default=540.0, help="start no run past this many seconds")
    p.add_argument("--tiny", action="store_true", help="tiny shapes: a CPU smoke run of the same code")
    args = p.parse_args(argv)
    extra = PRESETS["tiny"]["extra"] if args.tiny else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    by_name = {shape.name: shape for shape in SHAPES}
    for shape in [by_name[n] for n in args.only.split(",")] if args.only else SHAPES:  # in the order given
        for name, row in shape.rows.items():
            if args.rows and not any(name.startswith(prefix) for prefix in args.rows.split(",")):
                continue
            record = {"shape": shape.name, "covers": shape.covers, "row": name, "overrides": row}
            if time.time() - started > args.budget_s:
                record["error"] = "not run: time budget spent"
            else:
                t0 = time.time()
                try:
                    record.update(run(shape, row, args.corpus, args.cache, extra))
                except torch.cuda.OutOfMemoryError as exc:
                    record["error"] = f"out of memory on one GPU: {str(exc).splitlines()[0]}"
                except Exception as exc:  # reported; the other rows still run
                    record["error"] = f"{type(exc).__name__}: {exc}"
                record["wall_s"] = time.time() - t0
            print(json.dumps(record), flush=True)
            with open(out / "cost.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            free()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Issue 18's DeepSpeed runs on 1 and 2 GPUs, all through the real entry point (`torchrun -m mora.train`,
one launch through the `deepspeed` launcher), each launch's raw record written as soon as it ends.

Phases (`--phases`, in this order; one GPU call of <= 10 minutes each):

- `c4`: the 1.3B from-scratch LLaMA (`experiment=c4_pretrain_1b model=llama_1b_local data=c4_local`:
  random init, the local corpus, a byte-level BPE of 32100 tokens trained on it) with ReMoRA r 128
  under ZeRO-2, bf16: 300 steps of 32 x 512 tokens, a merge-and-reinit every 100 steps (two inside the
  run), perplexity at 100/200/300, the final checkpoint kept. Then the merged model, reloaded by plain
  `transformers`, against DeepSpeed's own consolidation of that checkpoint's shards (`zero_to_fp32`,
  the adapters unmerged) on a fixed batch; then 30 steps of the same run on 1 GPU for the scaling.
- `ft_mora`, `ft_fft`: LLaMA-2 7B's shape with random weights (`model=llama2_7b_random`) fine-tuned
  on Tulu-v2-schema chats cut from the local corpus, 2048 tokens each (the Tulu fixture's chats are
  35-77 tokens with the 32000-token BPE), 8 x 2048 tokens a step, under ZeRO-3, bf16; MoRA r 256
  (sharing, lr 5e-5) or FFT (lr 2e-5, activation checkpointing). 10 undisturbed steps on 2 GPUs; the
  same run again with SIGTERM sent to rank 1 after the 4th logged step (it must stop every rank,
  checkpoint and exit); the relaunch (through the `deepspeed` launcher) resumes and must end with the
  undisturbed loss; then 6 steps on 1 GPU for the scaling.

Every launch's tokens/s and per-rank peak memory come from the run's own metrics.json (`Throughput`:
steps after the first, evaluations, restarts and checkpoint writes not timed); scaling = tokens/s on 2
GPUs / tokens/s on 1 GPU at the same global batch and micro batch (target >= 1.8).

    # GPU machine (wheels in .whl/, the corpus and the BPE cache in .carry/; see docs/deepspeed.md)
    python3 bench/ds_2gpu.py --phases c4 --corpus '.carry/data/*.txt' --cache .carry/cache --out $OUT --budget-s 540
    # CPU, 2 gloo processes, toy sizes: checks every step of the plan; its numbers mean nothing
    python bench/ds_2gpu.py --cpu --tiny --corpus '../shared/data/*.txt' --out bench/out/ds_2gpu

Writes ds_2gpu.jsonl (one record per launch or check), ds_2gpu.log (every launch's output) and
ds_2gpu_summary.json into --out; prints the summary. A launch that would start with less than
--min-launch-s of the budget left is recorded as not run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASES = ("c4", "ft_mora", "ft_fft")
TARGET_SCALING = 1.8
RESUME_TOL = 1e-3  # relative |final loss resumed - undisturbed|; CPU measures ~0, GPU reductions may differ
LOGIT_TOL = 1e-4  # max |merged - unmerged logits| / max |logits|, both in fp32
LOSS_LINE = re.compile(r"""['"]loss['"]:""")  # the HF Trainer's per-step log dict (train.log_every=1)


# -- what each phase runs -----------------------------------------------------------------------------

def c4_overrides(args: argparse.Namespace) -> dict[str, str]:
    o = {
        "experiment": "c4_pretrain_1b", "model": "llama_1b_local", "data": "c4_local", "data.builder.source": args.corpus,
        "method": "remora", "method.merge_every": "100", "method.rewarm_steps": "20",
        "train/deepspeed": "zero2", "train.max_steps": "300", "train.batch_size": "32", "train.micro_batch_size": "16",
        "train.warmup_steps": "20", "train.save_every": "300", "train.keep_checkpoints": "true",
        "eval.steps": "[100,200,300]", "eval.metric.max_sequences": "256",
    }
    if args.tiny:
        o.update({
            "model.network.max_position": "64", "data.builder.max_length": "64", "method.r": "8",
            "method.merge_every": "2", "method.rewarm_steps": "1", "train.max_steps": "6", "train.batch_size": "8",
            "train.micro_batch_size": "4", "train.warmup_steps": "1", "train.save_every": "6",
            "eval.steps": "[2,6]", "eval.metric.max_sequences": "16", "eval.metric.batch_size": "8",
        })
    return {**o, **common(args)}


def c4_one_gpu(args: argparse.Namespace) -> dict[str, str]:
    """The same run for its speed alone: no merge, evaluation, checkpoint or saved model."""
    return {**c4_overrides(args), "train.max_steps": "4" if args.tiny else "30", "eval.steps": "[]",
            "train.save_every": "1000000", "train.keep_checkpoints": "false", "train.save_model": "false"}


FT_METHODS = {
    "ft_mora": {"method": "mora", "method.r": "256", "method.kind": "sharing", "train.lr": "5e-5"},
    "ft_fft": {"method": "fft", "train.lr": "2e-5", "train.gradient_checkpointing": "true"},
}


def ft_overrides(args: argparse.Namespace, phase: str, data: Path) -> dict[str, str]:
    o = {
        "experiment": "tulu_mmlu", "model": "llama2_7b_random", "data.builder.source": str(data),
        "data.builder.max_length": "2048", "train/deepspeed": "zero3", "train.epochs": "null",
        "train.max_steps": "10", "train.batch_size": "8", "train.micro_batch_size": "4", "train.warmup_steps": "2",
        "train.save_every": "1000000", "train.save_model": "false", **FT_METHODS[phase],
    }
    if args.tiny:
        o.update({"model.network.max_position": "128", "data.builder.max_length": "128", "train.max_steps": "8"})
        if phase == "ft_mora":
            o["method.r"] = "16"
    return {**o, **common(args)}


def common(args: argparse.Namespace) -> dict[str, str]:
    o = {"logger": "none", "train.log_every": "1", "train.progress_bar": "true", "paths.cache_dir": args.cache,
         "model.tokenizer.files": args.corpus}
    if args.tiny:
        o.update({"model.network.hidden_size": "32", "model.network.num_layers": "2", "model.network.num_heads": "4",
                  "model.network.intermediate_size": "64", "model.tokenizer.vocab_size": "512"})
    return o


def write_long_chats(corpus: str, path: Path, rows: int, max_length: int) -> Path:
    """Tulu-v2-schema chats cut from the local text: a user turn of max_length / 2 characters and a reply
    of 8 x max_length characters, so that the reply starts inside the first max_length tokens and every
    chat is cut at max_length (the builder keeps the first max_length tokens): full-length rows, as in
    the paper's 2048-token Tulu runs."""
    files = sorted(glob.glob(corpus))
    if not files:
        raise SystemExit(f"--corpus {corpus!r} matches no file")
    text = "".join(Path(f).read_text(errors="replace") for f in files)
    user, reply = max_length // 2, 8 * max_length
    if len(text) < user + reply:
        raise SystemExit(f"--corpus holds {len(text)} characters; chats of {max_length} tokens need {user + reply}")
    out = []
    for i in range(rows):
        start = (i * (user + reply)) % (len(text) - user - reply)
        messages = [
            {"role": "user", "content": "Continue this text:\n\n" + text[start : start + user]},
            {"role": "assistant", "content": text[start + user : start + user + reply]},
        ]
        out.append(json.dumps({"dataset": "local_text", "id": f"local_{i}", "messages": messages}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return path


# -- launching ----------------------------------------------------------------------------------------

def child_env(args: argparse.Namespace) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if args.cpu:
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    else:  # NVLink multicast stays off on the shared hosts (KINDS.md)
        env.setdefault("DS_ACCELERATOR", "cuda")
        env.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(nproc: int, overrides: dict[str, str], launcher: str) -> tuple[list[str], str]:
    """(argv, the command line as a user types it)."""
    cli = [f"{k}={v}" for k, v in overrides.items()]
    if launcher == "deepspeed":
        port = _free_port()
        argv = [sys.executable, "-m", "deepspeed.launcher.runner", f"--num_gpus={nproc}", f"--master_port={port}",
                "--module", "mora.train", *cli]
        shown = f"deepspeed --num_gpus {nproc} --master_port {port} --module mora.train"
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "mora.train", *cli]
        shown = f"torchrun --standalone --nproc_per_node {nproc} -m mora.train"
    return argv, shown + " " + " ".join(f"'{c}'" if any(ch in c for ch in "*[]") else c for c in cli)


def rank_pid(root_pid: int, rank: int) -> int | None:
    """The process below `root_pid` (a launcher) whose environment says RANK=`rank`."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    todo = list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
        todo.extend(children.get(pid, []))
    return None


class Plan:
    """Runs launches under one time budget and writes each record as it ends."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.records_path = self.out / "ds_2gpu.jsonl"
        self.log_path = self.out / "ds_2gpu.log"
        self.deadline = time.time() + args.budget_s
        self.runs = Path(args.runs_dir)
        self.summary: dict[str, Any] = {"tiny": args.tiny, "cpu": args.cpu, "phases": {}}

    def remaining(self) -> float:
        return self.deadline - time.time()

    def record(self, rec: dict) -> dict:
        with self.records_path.open("a") as handle:
            handle.write(json.dumps(rec) + "\n")
        return rec

    def launch(self, phase: str, name: str, nproc: int, overrides: dict[str, str], runs_dir: Path,
               launcher: str = "torchrun", on_line: Callable[[str, subprocess.Popen], None] | None = None) -> dict:
        argv, shown = command(nproc, {**overrides, "paths.runs_dir": str(runs_dir)}, launcher)
        rec: dict[str, Any] = {"name": name, "phase": phase, "nproc": nproc, "launcher": launcher, "command": shown}
        if self.remaining() < self.args.min_launch_s:
            rec["error"] = f"not run: {self.remaining():.0f} s of the budget left"
            print(f"== {name}: {rec['error']}", flush=True)
            return self.record(rec)
        print(f"== {name}: {shown}", flush=True)
        start = time.time()
        text: list[str] = []
        with self.log_path.open("a") as log:
            log.write(f"\n== {name}: {shown}\n")
            log.flush()
            proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(self.args), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)

            def pump() -> None:
                for line in proc.stdout:
                    log.write(line)
                    text.append(line)
                    if on_line is not None:
                        on_line(line, proc)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                rec["rc"] = proc.wait(timeout=max(1.0, self.remaining()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rec["rc"] = proc.wait()
                rec["error"] = "killed: the time budget ran out"
            reader.join(timeout=30)
        rec["wall_s"] = round(time.time() - start, 1)
        output = "".join(text)
        rec["restarts"] = sorted({int(s) for s in re.findall(r"restart at step (\d+):", output)})
        rec["resumed_from"] = (re.findall(r"resuming from (checkpoint-\d+)", output) or [None])[-1]
        found = sorted(Path(runs_dir).rglob("metrics.json"))
        if found:
            metrics = json.loads(found[-1].read_text())
            rec["run_dir"] = str(found[-1].parent)
            rec["checkpoints"] = {  # what a relaunch would resume from: file -> bytes
                str(f.relative_to(found[-1].parent / "checkpoints")): f.stat().st_size
                for f in sorted((found[-1].parent / "checkpoints").rglob("*")) if f.is_file()
            }
            for key in ("status", "train_loss", "throughput", "evals", "error", "budget"):
                if key in metrics:
                    rec[key if key != "error" else "run_error"] = metrics[key]
        print(f"   rc {rec.get('rc')}, {rec['wall_s']} s, status {rec.get('status')}, "
              f"tokens/s {((rec.get('throughput') or {}).get('tokens_per_second'))}", flush=True)
        return self.record(rec)


def tokens_per_s(rec: dict) -> float | None:
    return (rec.get("throughput") or {}).get("tokens_per_second")


def scaling(two: dict, one: dict) -> dict:
    a, b = tokens_per_s(two), tokens_per_s(one)
    out = {"tokens_per_s_2": a, "tokens_per_s_1": b, "target": TARGET_SCALING}
    if a and b:
        out.update(ratio=a / b, meets_target=a / b >= TARGET_SCALING)
    return out


# -- checks -------------------------------------------------------------------------------------------

def merged_agreement(run_dir: Path, rows: int = 2, seq: int = 64, seed: int = 0) -> dict:
    """Logits on a fixed batch of the merged model, loaded by plain transformers, vs the trained model as
    DeepSpeed's shards hold it: `zero_to_fp32` assembles the final checkpoint's fp32 masters and frozen
    weights (DeepSpeed's own code, not ours), loaded into the same architecture with the run's adapters
    unmerged. Both in fp32."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    from mora.adapters import apply_adapters
    from mora.training.callbacks import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise RuntimeError(f"{run_dir}: no complete checkpoint (run with train.keep_checkpoints=true)")
    config = json.loads((run_dir / "config.json").read_text())
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with device:  # a 1.3B model's random init is slow on the CPU; its values are replaced right after
        unmerged = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run_dir / "merged"), dtype=torch.float32)
    with warnings.catch_warnings():  # the run warned about its parameter budget already
        warnings.filterwarnings("ignore", message=".*not at equal budget")
        apply_adapters(unmerged, config["method"])
    missing, unexpected = unmerged.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"the consolidated checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    del state
    ids = torch.randint(0, unmerged.config.vocab_size, (rows, seq), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a = unmerged.eval()(input_ids=ids.to(device)).logits.float().cpu()
        del unmerged
        merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged", dtype=torch.float32).to(device)
        b = merged.eval()(input_ids=ids.to(device)).logits.float().cpu()
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    return {
        "checkpoint": checkpoint.name,
        "batch": [rows, seq],
        "max_abs_logit": scale,
        "max_abs_diff": diff,
        "relative": diff / scale,
        "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "tolerance": LOGIT_TOL,
        "ok": diff / scale <= LOGIT_TOL,
    }


def final_loss(rec: dict) -> float | None:
    curve = rec.get("train_loss") or []
    return curve[-1][1] if curve else None


# -- phases -------------------------------------------------------------------------------------------

def phase_c4(plan: Plan) -> dict:
    args = plan.args
    base = plan.runs / "c4"
    two = plan.launch("c4", "c4 zero2 2 procs", args.nproc, c4_overrides(args), base / "two")
    out: dict[str, Any] = {"run": two.get("run_dir"), "status": two.get("status"), "restarts": two.get("restarts"),
                           "final_loss": final_loss(two), "evals": two.get("evals"),
                           "peak_memory_gib_per_rank": (two.get("throughput") or {}).get("peak_memory_gib_per_rank")}
    if two.get("status") == "completed" and plan.remaining() > args.min_launch_s:
        try:
            check = merged_agreement(Path(two["run_dir"]), seq=64 if args.tiny else 256)
        except Exception as exc:  # recorded, the plan goes on
            check = {"error": f"{type(exc).__name__}: {exc}"}
        plan.record({"name": "c4 merged vs sharded logits", "phase": "c4", **check})
        out["merged_vs_sharded"] = check
    one = plan.launch("c4", "c4 zero2 1 proc", 1, c4_one_gpu(args), base / "one")
    out["scaling"] = scaling(two, one)
    return out


def phase_ft(plan: Plan, phase: str) -> dict:
    args = plan.args
    base = plan.runs / phase
    data = write_long_chats(args.corpus, plan.runs / "tulu_long.jsonl", 64 if args.tiny else 128,
                            128 if args.tiny else 2048)
    overrides = ft_overrides(args, phase, data)
    steps = int(overrides["train.max_steps"])
    undisturbed = plan.launch(phase, f"{phase} zero3 2 procs", args.nproc, overrides, base / "undisturbed")

    state = {"logged": 0, "signalled_after": None, "pid": None}

    def sigterm_rank1(line: str, proc: subprocess.Popen) -> None:
        if not LOSS_LINE.search(line):
            return
        state["logged"] += 1
        if state["signalled_after"] is None and state["logged"] >= args.signal_after:
            pid = rank_pid(proc.pid, 1)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                state.update(signalled_after=state["logged"], pid=pid)

    if undisturbed.get("status") == "completed":
        stopped = plan.launch(phase, f"{phase} zero3 2 procs, SIGTERM to rank 1", args.nproc, overrides,
                              base / "preempted", on_line=sigterm_rank1)
        plan.record({"name": f"{phase} SIGTERM sent", "phase": phase, **state})
        resumed = plan.launch(phase, f"{phase} zero3 2 procs, relaunched", args.nproc, overrides, base / "preempted",
                              launcher="deepspeed")
    else:  # the preemption test needs the undisturbed curve; the budget goes to the 1-GPU launch
        stopped = resumed = {"error": "not run: the undisturbed 2-process run did not complete"}
    one = plan.launch(phase, f"{phase} zero3 1 proc", 1, {**overrides, "train.max_steps": "4" if args.tiny else "6"}, base / "one")

    stop_step = None
    match = re.search(r"at step (\d+)", str(stopped.get("run_error", "")))
    if match:
        stop_step = int(match.group(1))
    a, b = final_loss(undisturbed), final_loss(resumed)
    preemption = {
        "sigterm_after_logged_steps": state["signalled_after"],
        "launch_rc": stopped.get("rc"),
        "status_after_sigterm": stopped.get("status"),
        "stopped_at_step": stop_step,
        "resumed_from": resumed.get("resumed_from"),
        "status_after_relaunch": resumed.get("status"),
        "final_loss_undisturbed": a,
        "final_loss_resumed": b,
        "relative_difference": abs(a - b) / abs(a) if a is not None and b is not None else None,
        "tolerance": RESUME_TOL,
    }
    preemption["ok"] = bool(
        stop_step is not None and 0 < stop_step < steps and resumed.get("status") == "completed"
        and resumed.get("resumed_from") == f"checkpoint-{stop_step}"
        and preemption["relative_difference"] is not None and preemption["relative_difference"] <= RESUME_TOL
    )
    return {
        "status": undisturbed.get("status"),
        "final_loss": a,
        "step_seconds": (undisturbed.get("throughput") or {}).get("seconds_per_step"),
        "peak_memory_gib_per_rank": (undisturbed.get("throughput") or {}).get("peak_memory_gib_per_rank"),
        "peak_memory_gib_1_proc": (one.get("throughput") or {}).get("peak_memory_gib"),
        "preemption": preemption,
        "scaling": scaling(undisturbed, one),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "*.txt"), help="text files (glob)")
    p.add_argument("--cache", default=".cache/mora", help="paths.cache_dir (the BPE tokenizers are cached there)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "out" / "ds_2gpu"))
    p.add_argument("--runs-dir", default=None, help="where the runs go (default: a runs/ folder beside --out's files "
                                                       "on CPU, /tmp/ds_2gpu_runs on the GPU machine)")
    p.add_argument("--nproc", type=int, default=2, help="processes (GPUs) of the multi-process launches")
    p.add_argument("--budget-s", type=float, default=540, help="stop launching once this many seconds have passed")
    p.add_argument("--min-launch-s", type=float, default=30, help="start no launch with less budget than this left")
    p.add_argument("--signal-after", type=int, default=4, help="SIGTERM to rank 1 after this many logged steps")
    p.add_argument("--cpu", action="store_true", help="gloo on the CPU (DS_ACCELERATOR=cpu)")
    p.add_argument("--tiny", action="store_true", help="toy model sizes (with --cpu: checks the plan, no numbers)")
    args = p.parse_args(argv)
    args.phases = [x for x in args.phases.split(",") if x]
    unknown = [x for x in args.phases if x not in PHASES]
    if unknown:
        p.error(f"unknown phases {unknown}; choose from {PHASES}")
    if args.runs_dir is None:
        args.runs_dir = str(Path(args.out) / "runs") if args.cpu else "/tmp/ds_2gpu_runs"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = Plan(args)
    if not args.cpu:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                             capture_output=True, text=True)
        plan.summary["gpus"] = gpu.stdout.strip().splitlines()
    for phase in args.phases:
        plan.summary["phases"][phase] = phase_c4(plan) if phase == "c4" else phase_ft(plan, phase)
        (plan.out / "ds_2gpu_summary.json").write_text(json.dumps(plan.summary, indent=2))
    print(json.dumps(plan.summary, indent=2))
    if args.cpu:
        print("(CPU: the tokens/s, scaling and memory above say nothing about GPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

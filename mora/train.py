"""Hydra entry point: compose a run, check it, build it, train it, record it.

    python -m mora.train experiment=uuid_mini method=mora method.r=8

Everything that can be wrong with a config is checked before the run directory is created, so a bad
config costs no compute and leaves nothing in the results store.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import kernels
from .adapters import AdapterConfig, apply_adapters, config_from_dict, merge_and_unload, save_adapter
from .builders import build, check_targets
from .evaluate import evaluate_run, wants_evaluation
from .data.registry import provenance
from .evaluation.spectrum import SNAPSHOT_NAME, save_snapshot
from .identity import code_version
from .runs import CONFIG_NAME, STATUS_COMPLETED, STATUS_FAILED, RunDir, read_json, share_files
from .safe_load import check_checkpoint, weights_only
from .schema import check_config, set_or_add_overrides
from .training.callbacks import RestartCallback, RunRecorder, discard_torn_checkpoints, last_complete_checkpoint
from .training.distributed import (
    check_deepspeed_config,
    ensure_single_process_env,
    init_deepspeed_state,
    is_main_process,
    keeping_optimizer,
    quiet_unused_deepspeed,
    shutdown,
    strip_launcher_args,
    world_size,
)
from .training.finite import stopping_on_nonfinite_loss
from .training.optim import build_optimizer, build_scheduler
from .training.precision import check_trainable_precision
from .training.preemption import EXIT_CTRL_C, STATUS_INTERRUPTED, GracefulStop, RunInterrupted
from .training.speed import Throughput, compile_backend, compile_blocks, without_kv_cache
from .training.wandb_log import WandbLogger
from .training.zero import gather_full_model

log = logging.getLogger("mora")


def run_summary(cfg: DictConfig, method_cfg: AdapterConfig) -> dict[str, Any]:
    """Flat keys that identify a run in tables and dashboards."""
    return {
        "experiment": cfg.experiment_name,
        "task": cfg.data.name,
        "model": cfg.model.name,
        "method": cfg.method.method,
        "rank": method_cfg.r if method_cfg.layer_class is not None else None,
        "kind": getattr(method_cfg, "kind", None),  # as validated: `auto` resolved
        "lr": cfg.train.lr,
        "seed": cfg.seed,
        "max_steps": cfg.train.max_steps,
    }


def grad_accumulation(train_cfg: DictConfig) -> int:
    """Steps of accumulation so that micro-batch x processes x accumulation = the global batch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = train_cfg.micro_batch_size * world
    if train_cfg.batch_size % per_step:
        raise ValueError(
            f"train.batch_size={train_cfg.batch_size} is not a multiple of train.micro_batch_size="
            f"{train_cfg.micro_batch_size} x {world} process(es); change one of them"
        )
    return train_cfg.batch_size // per_step


def set_max_steps(train_cfg: DictConfig, rows) -> None:
    """Table 5 gives epochs: with `train.epochs` set, max_steps = epochs x ceil(rows / batch_size)."""
    epochs, steps = train_cfg.get("epochs"), train_cfg.max_steps
    if (epochs is None) == (steps is None):
        raise ValueError(f"set exactly one of train.max_steps ({steps}) and train.epochs ({epochs})")
    if epochs is None:
        return
    if not hasattr(rows, "__len__"):
        raise ValueError("train.epochs needs a dataset of known size; this one streams: set train.max_steps")
    train_cfg.max_steps = int(epochs) * math.ceil(len(rows) / train_cfg.batch_size)
    log.info("%s epochs of %d rows at batch %d: %d steps", epochs, len(rows), train_cfg.batch_size, train_cfg.max_steps)


def checkpointing_args(enabled: bool) -> dict[str, Any]:
    """Activation checkpointing for TrainingArguments, under the name this transformers uses (5.2x
    renames gradient_checkpointing to activation_checkpointing); non-reentrant, so gradients reach the
    adapters even though the frozen embeddings' outputs do not require grad."""
    from dataclasses import fields

    from transformers import TrainingArguments

    name = "activation_checkpointing"
    if name not in {f.name for f in fields(TrainingArguments)}:
        name = "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}} if enabled else {}


def evaluate_after_training(cfg: DictConfig) -> bool:
    """The benchmark asks to be scored right after training (conf/benchmark: after_training)."""
    bench = cfg.get("benchmark")
    return bool(bench) and bool(bench.get("after_training")) and wants_evaluation(bench)


def import_trainer() -> type:
    """transformers' Trainer, imported with WANDB_MODE hidden: with WANDB_MODE=offline (the Makefile's
    and CI's setting) transformers prints "[INFO] Running in WANDB offline mode" when it imports its
    integrations, whatever the run logs to. conf/logger/wandb.yaml reads the variable itself."""
    mode = os.environ.pop("WANDB_MODE", None)
    try:
        from transformers import Trainer
    finally:
        if mode is not None:
            os.environ["WANDB_MODE"] = mode
    return Trainer


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("mora", "transformers"):
        logging.getLogger(name).addHandler(handler)
    return handler


def _detach_log_file(handler: logging.Handler | None) -> None:
    if handler is None:
        return
    for name in ("mora", "transformers"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or skip) the run `cfg` describes; returns its metrics."""
    with contextlib.ExitStack() as held:  # the run's lock, released however training ends
        return _train(cfg, held)


def _train(cfg: DictConfig, held: contextlib.ExitStack) -> dict[str, Any]:
    from transformers import TrainingArguments, set_seed

    check_config(cfg)
    container = OmegaConf.to_container(cfg, resolve=True)
    method_cfg: AdapterConfig = config_from_dict(container["method"])
    run = RunDir(cfg.paths.runs_dir, cfg.experiment_name, container)
    if (run.path / CONFIG_NAME).is_file():  # a relaunch: the store's record of the run is data, checked
        check_targets(read_json(run.path / CONFIG_NAME), f"run {run.path}")
    stale = run.stale()  # recorded by other code: trained afresh, the old record moved aside
    if run.finished and not stale:
        log.info("run %s is already finished (%s): skipping it", run.id, run.path)
        if evaluate_after_training(cfg):
            evaluate_run(run.path, cfg.benchmark, container)
        return run.metrics()
    Trainer = import_trainer()
    accumulation = grad_accumulation(cfg.train)
    ds_config = container["train"].get("deepspeed")
    if ds_config is not None:
        check_deepspeed_config(ds_config, cfg.train, world_size(), accumulation)
        ensure_single_process_env()
    else:
        quiet_unused_deepspeed()
    main_process = is_main_process()  # with several processes only rank 0 writes the run's record

    set_seed(cfg.seed)
    tokenizer = build(cfg, "model.tokenizer")
    task = build(cfg, "data.builder", tokenizer=tokenizer)
    evaluator = build(cfg, "eval.metric") if cfg.eval.metric else None
    model = build(cfg, "model.network", tokenizer=tokenizer)
    report = apply_adapters(model, method_cfg)
    log.info("%s", report)
    check_trainable_precision(model, cfg.train.precision, ds_config)
    backend = compile_backend(cfg.train.compile)
    training_mode = contextlib.ExitStack()  # from here until trainer.train returns (the Trainer may also set it)
    training_mode.enter_context(without_kv_cache(model))
    train_rows = task.train_dataset()
    set_max_steps(cfg.train, train_rows)
    restarts = method_cfg.restart_options()
    if ds_config is None and torch.cuda.is_available():  # where the Trainer would put it; lets AdamW fuse
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(
        optimizer, cfg.train, restarts.merge_every if restarts else 0, restarts.rewarm_steps if restarts else 0
    )

    # Everything is checked: from here on the run is recorded, by one process at a time.
    if main_process:
        if stale:
            run.set_aside()
        held.enter_context(run.claimed())
        if run.finished and not run.stale() and world_size() == 1:  # finished by another process while this one got ready
            log.info("run %s was finished meanwhile (%s): skipping it", run.id, run.path)
            return run.metrics()
        run.write_config()
    run.path.mkdir(parents=True, exist_ok=True)
    handler = _attach_log_file(run.path / "train.log") if main_process else None
    if main_process and cfg.benchmark.get("spectrum") and not (run.path / SNAPSHOT_NAME).is_file():
        save_snapshot(model, run.path / SNAPSHOT_NAME)  # ΔW = final - these, for the spectrum
        share_files(run.path / SNAPSHOT_NAME)
    if main_process:
        discard_torn_checkpoints(run.checkpoints)  # left by a process killed while writing them
    resume = None if stale else last_complete_checkpoint(run.checkpoints)
    if resume:
        check_checkpoint(resume, f"run {run.path}")
    previous = (run.metrics() or {}) if resume else {}
    metrics: dict[str, Any] = {
        "experiment": cfg.experiment_name,
        "summary": run_summary(cfg, method_cfg),
        "budget": report.to_dict(),
        "results_versions": run.versions,
        "code": code_version(),
        "data": provenance(task),
        "evals": previous.get("evals", []),
        "wall_seconds_before": previous.get("wall_seconds", 0.0),
    }
    log.info("run %s -> %s%s", run.id, run.path, f" (resuming from {resume.name})" if resume else "")

    wandb_cb = None
    if cfg.logger.get("wandb") and main_process:
        wandb_cb = WandbLogger(
            OmegaConf.to_container(cfg.logger.wandb, resolve=True), str(run.path), run.id, metrics["summary"], cfg.get("artifact")
        )

    def evaluate(m):
        return evaluator(m, tokenizer, task)

    recorder = RunRecorder(
        run, metrics, evaluate if evaluator else None, list(cfg.eval.steps), wandb_cb.log_eval if wandb_cb else None
    )
    stopper = GracefulStop()  # SIGTERM / preemption / Ctrl-C: checkpoint at the end of the step, stop
    # Throughput first: its step timing ends before the recorder evaluates or a checkpoint is written.
    callbacks = [Throughput(metrics), recorder, stopper] + ([wandb_cb] if wandb_cb else [])
    if restarts:
        callbacks.append(RestartCallback(restarts.merge_every, restarts.optimizer_reset, restarts.optimizer_keep))
    ds_args = init_deepspeed_state() if ds_config is not None else {}
    args = TrainingArguments(
        output_dir=str(run.checkpoints),
        max_steps=cfg.train.max_steps,
        per_device_train_batch_size=cfg.train.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=cfg.train.lr,
        max_grad_norm=cfg.train.max_grad_norm,
        logging_steps=cfg.train.log_every,
        save_strategy="steps",
        save_steps=cfg.train.save_every,
        save_total_limit=cfg.train.save_total_limit,
        bf16=cfg.train.precision == "bf16",
        use_cpu=cfg.train.precision == "bf16" and not torch.cuda.is_available(),  # bf16 autocast on the CPU
        **checkpointing_args(cfg.train.gradient_checkpointing),
        include_num_input_tokens_seen="all",
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not cfg.train.progress_bar,
        deepspeed=OmegaConf.to_container(cfg.train.deepspeed, resolve=True) if cfg.train.deepspeed else None,
        **ds_args,
    )
    trainer_cls = stopping_on_nonfinite_loss(keeping_optimizer(Trainer) if ds_config is not None else Trainer)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}  # before DeepSpeed casts them
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_rows,
        data_collator=task.collator(),
        optimizers=(optimizer, scheduler),
        callbacks=callbacks,
    )
    if not cfg.train.progress_bar:  # quiet: one line per evaluation, no per-step log dicts or bars
        from transformers.trainer_callback import PrinterCallback
        from transformers.utils import logging as hf_logging

        trainer.remove_callback(PrinterCallback)
        hf_logging.disable_progress_bar()
    if backend:
        blocks = compile_blocks(model, backend)
        log.info("train.compile: %d blocks compiled with %s (the first steps include compilation)", blocks, backend)
    kernels.reset_counts()
    try:
        with stopper.installed(), weights_only(), training_mode:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        stopper.raise_if_stopped(run.checkpoints)
        metrics["kernels"] = kernels.path_counts()
        log.info("adapter paths: %s", kernels.path_counts() or "no adapter layers")
        if ds_config is not None and cfg.train.save_model:
            gather_full_model(model, dtypes)  # every process takes part; rank 0 ends with the full model
        if main_process and cfg.train.save_model:
            if method_cfg.layer_class is not None:
                save_adapter(model, run.path / "adapter")
            merged = merge_and_unload(model)
            merged.save_pretrained(run.path / "merged")
            tokenizer.save_pretrained(run.path / "merged")
            share_files(run.path / "adapter", run.path / "merged")
    except BaseException as exc:
        status = STATUS_INTERRUPTED if isinstance(exc, (RunInterrupted, KeyboardInterrupt)) else STATUS_FAILED
        if isinstance(exc, KeyboardInterrupt) and main_process:
            discard_torn_checkpoints(run.checkpoints)  # the one a second Ctrl-C cut short, if it did
        recorder.finish(status, error=f"{type(exc).__name__}: {exc}")
        log.error("run %s %s: %s: %s", run.id, status, type(exc).__name__, exc)
        _detach_log_file(handler)
        raise
    recorder.finish(STATUS_COMPLETED)
    if not main_process:
        return metrics
    if evaluate_after_training(cfg):
        try:
            evaluate_run(run.path, cfg.benchmark, container, wandb_cb.log_summary if wandb_cb else None)
        except BaseException as exc:
            log.error("run %s trained, but its evaluation failed: %s: %s", run.id, type(exc).__name__, exc)
            if wandb_cb:
                wandb_cb.finish({"final/" + k: v for k, v in metrics.get("final", {}).items()})
            _detach_log_file(handler)
            raise
    if wandb_cb:
        wandb_cb.finish({"final/" + k: v for k, v in metrics.get("final", {}).items()})
    if not cfg.train.keep_checkpoints:
        shutil.rmtree(run.checkpoints, ignore_errors=True)
    log.info("run %s finished: %s", run.id, run.metrics_path)
    _detach_log_file(handler)
    return run.metrics()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    torch.set_num_threads(int(cfg.threads) if cfg.get("threads") else torch.get_num_threads())
    try:
        train(cfg)
    except RunInterrupted as exc:
        if exc.by_user:
            log.warning("to resume, run the same command again: it picks up from %s", Path(exc.checkpoint).name)
        else:
            log.warning("run interrupted: %s; launched again, it resumes from there", exc)
        exc.exit()  # exit status 75 (slurm/array.sbatch requeues), or submitit's requeue; 130 after Ctrl-C
    except KeyboardInterrupt:
        log.warning("stopped by Ctrl-C; to resume, run the same command again: it picks up from the last complete checkpoint")
        sys.exit(EXIT_CTRL_C)
    except ValueError as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a multirun records the job as failed and goes on with the others
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """`python -m mora.train` / `mora-train`, alone or under torchrun / the deepspeed launcher: the
    launcher's own `--local_rank=N` is taken off the command line so only Hydra overrides reach Hydra,
    and a misspelt key reaches check_config (mora.schema) to be named."""
    sys.argv = set_or_add_overrides(strip_launcher_args(sys.argv))
    try:
        hydra_main()
    finally:
        shutdown()


if __name__ == "__main__":
    main()

"""Hydra entry point: compose a run, check it, build it, train it, record it.

    python -m mora.train experiment=uuid_mini method=mora method.r=8

A run reads as three steps. `build` checks the config and makes every object the run needs, writing
nothing: a bad config costs no compute and leaves nothing in the results store. `fit` claims the
run's directory and trains (or resumes) it, recording as it goes. `finish` hands the trained model to
the benchmark, in memory, and tidies up. `train` runs them, or skips a run the store holds finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import builders, kernels
from .adapters import AdapterConfig, BudgetReport, apply_adapters, merge_and_unload, save_adapter
from .builders import Parts, build_parts, check_targets
from .data.registry import provenance
from .evaluate import after_training, before_training, evaluate_run
from .identity import code_version
from .runs import CONFIG_NAME, STATUS_COMPLETED, STATUS_FAILED, RunDir, read_json, share_files
from .safe_load import check_checkpoint, weights_only
from .schema import check_config, set_or_add_overrides
from .training.callbacks import RestartCallback, RunRecorder, discard_torn_checkpoints, last_complete_checkpoint
from .training.distributed import (
    check_deepspeed_config,
    ensure_single_process_env,
    is_main_process,
    quiet_unused_deepspeed,
    shutdown,
    strip_launcher_args,
    world_size,
)
from .training.optim import build_optimizer, build_scheduler
from .training.precision import check_trainable_precision
from .training.preemption import EXIT_CTRL_C, STATUS_INTERRUPTED, GracefulStop, RunInterrupted
from .training.run_log import RunLog
from .training.speed import Throughput, compile_backend, compile_blocks, eager_model, without_kv_cache
from .training.trainer import grad_accumulation, import_trainer, make_trainer, max_steps
from .training.zero import gather_full_model

log = logging.getLogger("mora")


def run_summary(cfg: DictConfig, method_cfg: AdapterConfig, steps: int) -> dict[str, Any]:
    """Flat keys that identify a run in tables and dashboards."""
    return {
        "experiment": cfg.experiment_name,
        "task": cfg.data.name,
        "model": cfg.model.name,
        "method": method_cfg.method,
        "rank": method_cfg.r if method_cfg.layer_class is not None else None,
        "kind": getattr(method_cfg, "kind", None),  # as validated: `auto` resolved
        "lr": cfg.train.lr,
        "seed": cfg.seed,
        "max_steps": steps,
    }


@dataclass
class Job:
    """A run's objects, built once and checked before anything is written."""

    cfg: DictConfig
    config: dict[str, Any]  # cfg resolved: what the run's id hashes and config.json records
    run: RunDir
    stale: str | None  # why the store's record of the run is out of date, if it is
    method: AdapterConfig
    parts: Parts  # tokenizer, task, evaluator, and the model with the method's adapters
    budget: BudgetReport
    summary: dict[str, Any]  # run_summary
    rows: Any
    steps: int
    accumulation: int
    deepspeed: dict[str, Any] | None
    compile: str | None  # the torch.compile backend, if the blocks are compiled
    optimizers: tuple  # (optimizer, LR scheduler)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or skip) the run `cfg` describes; returns its metrics."""
    check_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    run = RunDir(cfg.paths.runs_dir, cfg.experiment_name, config)
    if (run.path / CONFIG_NAME).is_file():  # a relaunch: the store's record of the run is data, checked
        check_targets(read_json(run.path / CONFIG_NAME), f"run {run.path}")
    stale = run.stale()  # recorded by other code: trained afresh, the old record moved aside
    if run.finished and not stale:
        log.info("run %s is already finished (%s): skipping it", run.id, run.path)
        if after_training(cfg.benchmark):
            evaluate_run(run.path, cfg.benchmark, config)
        return run.metrics()
    job = build(cfg, config, run, stale)
    with contextlib.ExitStack() as held:  # the run's lock, log file and wandb run, closed however it ends
        if not claim(job, held):
            return run.metrics()
        main = is_main_process()  # with several processes only rank 0 writes the run's record
        wandb = OmegaConf.to_container(cfg.logger.wandb, resolve=True) if cfg.logger.get("wandb") else None
        out = held.enter_context(RunLog(run.path if main else None, wandb, run.id, job.summary, cfg.get("artifact")))
        if main:
            before_training(cfg.benchmark, job.parts.model, run.path)
        metrics = fit(job, out)
        return finish(job, out, metrics)


def build(cfg: DictConfig, config: dict[str, Any], run: RunDir, stale: str | None) -> Job:
    """Check what can be checked and build the run: data, model, adapters, optimizer."""
    method = builders.build(cfg, "method")  # the options, validated (mora.adapters.build_method)
    import_trainer()  # first, before model code imports transformers' integrations (see import_trainer)
    accumulation = grad_accumulation(cfg.train)
    deepspeed = config["train"].get("deepspeed")
    if deepspeed is not None:
        check_deepspeed_config(deepspeed, cfg.train, world_size(), accumulation)
        ensure_single_process_env()
    else:
        quiet_unused_deepspeed()
    parts = build_parts(cfg)
    model = parts.model
    budget = apply_adapters(model, method)
    log.info("%s", budget)
    check_trainable_precision(model, cfg.train.precision, deepspeed)
    backend = compile_backend(cfg.train.compile)
    rows = parts.task.train_dataset()
    steps = max_steps(cfg.train, rows)
    if deepspeed is None and torch.cuda.is_available():  # where the Trainer would put it; lets AdamW fuse
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
    optimizer = build_optimizer(model, cfg.train)  # after the move: AdamW fuses on CUDA
    restarts = method.restart_options()
    scheduler = build_scheduler(optimizer, cfg.train, restarts.merge_every if restarts else 0,
                                restarts.rewarm_steps if restarts else 0, steps)
    return Job(cfg, config, run, stale, method, parts, budget, run_summary(cfg, method, steps), rows, steps,
               accumulation, deepspeed, backend, (optimizer, scheduler))


def claim(job: Job, held: contextlib.ExitStack) -> bool:
    """Take the run's directory, one process at a time (a stale record moved aside first), and record its
    config; False where another process finished the run while this one got ready."""
    run = job.run
    if is_main_process():
        if job.stale:
            run.set_aside()
        held.enter_context(run.claimed())
        if run.finished and not run.stale() and world_size() == 1:
            log.info("run %s was finished meanwhile (%s): skipping it", run.id, run.path)
            return False
        run.write_config()
    run.path.mkdir(parents=True, exist_ok=True)
    return True


def fit(job: Job, out: RunLog) -> dict[str, Any]:
    """Train the run to its last step, from its last complete checkpoint if it has one, recording it as
    it goes; then save the adapter and the merged model. Returns the run's metrics."""
    cfg, run, model, main = job.cfg, job.run, job.parts.model, is_main_process()
    if main:
        discard_torn_checkpoints(run.checkpoints)  # left by a process killed while writing them
    resume = None if job.stale else last_complete_checkpoint(run.checkpoints)
    if resume:
        check_checkpoint(resume, f"run {run.path}")
    previous = (run.metrics() or {}) if resume else {}
    metrics = out.metrics = {
        "experiment": cfg.experiment_name,
        "summary": job.summary,
        "budget": job.budget.to_dict(),
        "results_versions": run.versions,
        "code": code_version(),
        "data": provenance(job.parts.task),
        "evals": previous.get("evals", []),
        "wall_seconds_before": previous.get("wall_seconds", 0.0),
    }
    log.info("run %s -> %s%s", run.id, run.path, f" (resuming from {resume.name})" if resume else "")
    evaluator, tokenizer, task = job.parts.evaluator, job.parts.tokenizer, job.parts.task
    evaluate = (lambda m: evaluator(m, tokenizer, task)) if evaluator else None
    recorder = RunRecorder(run, metrics, evaluate, list(cfg.eval.steps), out.log_eval)
    stopper = GracefulStop()  # SIGTERM / preemption / Ctrl-C: checkpoint at the end of the step, stop
    # Throughput first: its step timing ends before the recorder evaluates or a checkpoint is written.
    callbacks = [Throughput(metrics), recorder, stopper, *out.callbacks]
    if restarts := job.method.restart_options():
        callbacks.append(RestartCallback(restarts.merge_every, restarts.optimizer_reset, restarts.optimizer_keep))
    dtypes = {name: p.dtype for name, p in model.named_parameters()}  # before DeepSpeed casts them
    try:
        with without_kv_cache(model):  # until trainer.train returns (the Trainer may set it too)
            trainer = make_trainer(
                cfg.train, seed=cfg.seed, output_dir=str(run.checkpoints), steps=job.steps, accumulation=job.accumulation,
                deepspeed=job.deepspeed, model=model, train_dataset=job.rows, data_collator=task.collator(),
                optimizers=job.optimizers, callbacks=callbacks,
            )
            if job.compile:
                blocks = compile_blocks(model, job.compile)
                log.info("train.compile: %d blocks compiled with %s (the first steps include compilation)",
                         blocks, job.compile)
            kernels.reset_counts()
            with stopper.installed(), weights_only():
                trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        stopper.raise_if_stopped(run.checkpoints)
        metrics["kernels"] = kernels.path_counts()
        log.info("adapter paths: %s", metrics["kernels"] or "no adapter layers")
        if job.deepspeed is not None and cfg.train.save_model:  # saving nothing: no gather
            gather_full_model(model, dtypes)  # every process takes part; rank 0 ends with the full model
        if main and cfg.train.save_model:
            if job.method.layer_class is not None:
                save_adapter(model, run.path / "adapter")
            merge_and_unload(model).save_pretrained(run.path / "merged")
            tokenizer.save_pretrained(run.path / "merged")
            share_files(run.path / "adapter", run.path / "merged")
    except BaseException as exc:
        status = STATUS_INTERRUPTED if isinstance(exc, (RunInterrupted, KeyboardInterrupt)) else STATUS_FAILED
        if isinstance(exc, KeyboardInterrupt) and main:
            discard_torn_checkpoints(run.checkpoints)  # the one a second Ctrl-C cut short, if it did
        recorder.finish(status, error=f"{type(exc).__name__}: {exc}")
        log.error("run %s %s: %s: %s", run.id, status, type(exc).__name__, exc)
        raise
    recorder.finish(STATUS_COMPLETED)
    return metrics


def finish(job: Job, out: RunLog, metrics: dict[str, Any]) -> dict[str, Any]:
    """Score the trained run where its benchmark asks for it now, handing over the merged model in
    memory (under DeepSpeed the engine's hooks stay on it: the saved one is scored), and drop the
    checkpoints unless they are kept."""
    cfg, run = job.cfg, job.run
    if not is_main_process():
        return metrics
    if after_training(cfg.benchmark):
        trained = None
        if job.deepspeed is None:
            trained = dataclasses.replace(job.parts, model=eager_model(merge_and_unload(job.parts.model)))
        try:
            evaluate_run(run.path, cfg.benchmark, job.config, out.log_summary, trained)
        except BaseException as exc:
            log.error("run %s trained, but its evaluation failed: %s: %s", run.id, type(exc).__name__, exc)
            raise
    if not cfg.train.keep_checkpoints:
        shutil.rmtree(run.checkpoints, ignore_errors=True)
    log.info("run %s finished: %s", run.id, run.metrics_path)
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

"""Hydra entry point: compose a run, check it, build it, train it, record it.

    python -m mora.train experiment=uuid_mini method=mora method.r=8

Everything that can be wrong with a config is checked before the run directory is created, so a bad
config costs no compute and leaves nothing in the results store.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .adapters import AdapterConfig, apply_adapters, config_from_dict, merge_and_unload, save_adapter
from .runs import STATUS_COMPLETED, STATUS_FAILED, RunDir
from .training.callbacks import RestartCallback, RunRecorder, last_complete_checkpoint
from .training.optim import build_optimizer, build_scheduler
from .training.wandb_log import WandbLogger

log = logging.getLogger("mora")


def run_summary(cfg: DictConfig, method_cfg: AdapterConfig) -> dict[str, Any]:
    """Flat keys that identify a run in tables and dashboards."""
    return {
        "experiment": cfg.experiment_name,
        "task": cfg.data.name,
        "model": cfg.model.name,
        "method": cfg.method.method,
        "rank": method_cfg.r if method_cfg.layer_class is not None else None,
        "kind": cfg.method.get("kind"),
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


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("mora", "transformers"):
        logging.getLogger(name).addHandler(handler)
    return handler


def _detach_log_file(handler: logging.Handler) -> None:
    for name in ("mora", "transformers"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or skip) the run `cfg` describes; returns its metrics."""
    from transformers import Trainer, TrainingArguments, set_seed

    container = OmegaConf.to_container(cfg, resolve=True)
    method_cfg: AdapterConfig = config_from_dict(container["method"])
    run = RunDir(cfg.paths.runs_dir, cfg.experiment_name, container)
    if run.finished:
        log.info("run %s is already finished (%s): skipping it", run.id, run.path)
        return run.metrics()
    accumulation = grad_accumulation(cfg.train)

    set_seed(cfg.seed)
    tokenizer = instantiate(cfg.model.tokenizer)
    task = instantiate(cfg.data.builder, tokenizer=tokenizer)
    evaluator = instantiate(cfg.eval.metric) if cfg.eval.metric else None
    model = instantiate(cfg.model.network, tokenizer=tokenizer)
    report = apply_adapters(model, method_cfg)
    log.info("%s", report)
    train_rows = task.train_dataset()
    restarts = method_cfg.restart_options()
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(
        optimizer, cfg.train, restarts.merge_every if restarts else 0, restarts.rewarm_steps if restarts else 0
    )

    # Everything is checked: from here on the run is recorded.
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config()
    handler = _attach_log_file(run.path / "train.log")
    resume = last_complete_checkpoint(run.checkpoints)
    previous = (run.metrics() or {}) if resume else {}
    metrics: dict[str, Any] = {
        "experiment": cfg.experiment_name,
        "summary": run_summary(cfg, method_cfg),
        "budget": report.to_dict(),
        "evals": previous.get("evals", []),
        "wall_seconds_before": previous.get("wall_seconds", 0.0),
    }
    log.info("run %s -> %s%s", run.id, run.path, f" (resuming from {resume.name})" if resume else "")

    wandb_cb = None
    if cfg.logger.get("wandb"):
        wandb_cb = WandbLogger(
            OmegaConf.to_container(cfg.logger.wandb, resolve=True), str(run.path), run.id, metrics["summary"], cfg.get("artifact")
        )

    def evaluate(m):
        return evaluator(m, tokenizer, task)

    recorder = RunRecorder(
        run, metrics, evaluate if evaluator else None, list(cfg.eval.steps), wandb_cb.log_eval if wandb_cb else None
    )
    callbacks = [recorder] + ([wandb_cb] if wandb_cb else [])
    if restarts:
        callbacks.append(RestartCallback(restarts.merge_every, restarts.optimizer_reset, restarts.optimizer_keep))
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
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not cfg.train.progress_bar,
        deepspeed=OmegaConf.to_container(cfg.train.deepspeed, resolve=True) if cfg.train.deepspeed else None,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        data_collator=task.collator(),
        optimizers=(optimizer, scheduler),
        callbacks=callbacks,
    )
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if method_cfg.layer_class is not None:
            save_adapter(model, run.path / "adapter")
        merged = merge_and_unload(model)
        merged.save_pretrained(run.path / "merged")
        tokenizer.save_pretrained(run.path / "merged")
    except BaseException as exc:
        recorder.finish(STATUS_FAILED, error=f"{type(exc).__name__}: {exc}")
        log.error("run %s failed: %s: %s", run.id, type(exc).__name__, exc)
        _detach_log_file(handler)
        raise
    recorder.finish(STATUS_COMPLETED)
    if wandb_cb:
        wandb_cb.finish({"final/" + k: v for k, v in metrics.get("final", {}).items()})
    if not cfg.train.keep_checkpoints:
        shutil.rmtree(run.checkpoints, ignore_errors=True)
    log.info("run %s finished: %s", run.id, run.metrics_path)
    _detach_log_file(handler)
    return run.metrics()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(int(cfg.threads) if cfg.get("threads") else torch.get_num_threads())
    try:
        train(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

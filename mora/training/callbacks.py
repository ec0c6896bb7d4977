"""TrainerCallbacks: method restarts, evaluation at fixed steps, and the run's record in the store."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from ..runs import STATUS_RUNNING, RunDir, share_files
from .distributed import barrier, is_main_process
from .zero import restart_adapters

log = logging.getLogger("mora")
COMPLETE_MARKER = "COMPLETE"


class RestartCallback(TrainerCallback):
    """ReLoRA / ReMoRA: every `every` steps merge the adapters into W0, re-initialise them and reset
    their optimizer state (the jagged re-warm lives in the LR schedule). Under DeepSpeed ZeRO the merge
    gathers the shards and the reset reaches DeepSpeed's fp32 master and moments (mora.training.zero)."""

    def __init__(self, every: int, reset_mode: str, keep: float):
        self.every, self.reset_mode, self.keep = every, reset_mode, keep

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        if step % self.every or step >= state.max_steps:
            return
        layers, touched = restart_adapters(model, optimizer, self.reset_mode, self.keep)
        log.info("restart at step %d: merged %d adapter layers, reset %d optimizer tensors", step, layers, touched)


class RunRecorder(TrainerCallback):
    """Evaluates at the configured steps and keeps `metrics.json` current: evals by step, loss curve,
    status. Marks each checkpoint complete once the Trainer has written all of it."""

    def __init__(
        self,
        run: RunDir,
        metrics: dict[str, Any],
        evaluate: Callable[[Any], dict[str, float]] | None,
        eval_steps: list[int],
        on_eval: Callable[[int, dict[str, float]], None] | None = None,
    ):
        self.run = run
        self.metrics = metrics
        self.evaluate = evaluate
        self.eval_steps = set(eval_steps)
        self.on_eval = on_eval
        self.started = time.time()
        self.state = None

    def on_train_begin(self, args, state, control, **kwargs):
        # After a resume, forget evaluations the restored checkpoint has not reached yet.
        self.metrics["evals"] = [e for e in self.metrics.get("evals", []) if e["step"] <= state.global_step]
        self.state = state
        self._write(STATUS_RUNNING)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if self.evaluate is not None and (step in self.eval_steps or step == state.max_steps):
            result = self.evaluate(model)
            self.metrics["evals"] = [e for e in self.metrics["evals"] if e["step"] != step]
            self.metrics["evals"].append({"step": step, **result})
            summary = ", ".join(f"{k} {v:.2f}" for k, v in result.items())
            log.info("eval at step %d/%d: %s", step, state.max_steps, summary)
            if self.on_eval:
                self.on_eval(step, result)
            self._write(STATUS_RUNNING)

    def on_save(self, args, state, control, **kwargs):
        barrier()  # several processes: every one has written its shards before the marker appears
        if is_main_process():
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            share_files(checkpoint)
            (checkpoint / COMPLETE_MARKER).touch()
        self._write(STATUS_RUNNING)

    def _write(self, status: str) -> None:
        if not is_main_process():
            return
        self.metrics["status"] = status
        history = self.state.log_history if self.state is not None else []
        self.metrics["train_loss"] = [[h["step"], h["loss"]] for h in history if "loss" in h]
        self.metrics["wall_seconds"] = self.metrics.get("wall_seconds_before", 0.0) + time.time() - self.started
        self.run.write_metrics(self.metrics)

    def finish(self, status: str, **extra: Any) -> None:
        self.metrics.update(extra)
        if self.metrics["evals"]:
            self.metrics["final"] = max(self.metrics["evals"], key=lambda e: e["step"])
        self._write(status)


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def _checkpoints(checkpoints: Path) -> list[Path]:
    """The Trainer's `checkpoint-<step>` directories, oldest first."""
    found = [p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()]
    return sorted(found, key=_step)


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing; torn ones (no marker) are never resumed."""
    done = [p for p in _checkpoints(checkpoints) if (p / COMPLETE_MARKER).is_file()]
    return done[-1] if done else None


def discard_torn_checkpoints(checkpoints: Path) -> list[str]:
    """Delete the checkpoints a killed process left half written (no marker), and return their names.
    Never resumed from anyway, left in place they would count in the Trainer's rotation of old
    checkpoints (save_total_limit) and could push out a complete one."""
    torn = [p for p in _checkpoints(checkpoints) if not (p / COMPLETE_MARKER).is_file()]
    for path in torn:
        log.warning("%s is incomplete (the process died while writing it): deleted, not resumed from", path.name)
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in torn]

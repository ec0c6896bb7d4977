"""wandb as an optional mirror of the run: never a reason for training to stop.

Config keys a dashboard filters by (method, rank, kind, task, lr, seed) sit flat at the top; the run's
group is its paper artifact and its job type the method, so one project holds every table.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger("mora")


class WandbLogger(TrainerCallback):
    def __init__(self, settings: dict[str, Any], run_dir: str, run_id: str, summary: dict[str, Any], group: str | None):
        self.settings = settings
        self.run_dir = run_dir
        self.run_id = run_id
        self.summary = summary
        self.group = group
        self.run = None

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            import wandb

            self.run = wandb.init(
                project=self.settings.get("project", "mora-bench"),
                entity=self.settings.get("entity"),
                mode=self.settings.get("mode", "offline"),
                dir=self.run_dir,
                id=self.run_id,
                name=self.run_id,
                resume="allow",
                group=self.group or self.summary.get("experiment"),
                job_type=str(self.summary.get("method")),
                config=self.summary,
                reinit="finish_previous",
            )
        except Exception as exc:  # wandb missing, misconfigured or offline-broken: keep training
            warnings.warn(f"wandb logging disabled: {type(exc).__name__}: {exc}", stacklevel=2)
            self.run = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.log({f"train/{k}": v for k, v in (logs or {}).items()}, state.global_step)

    def log_eval(self, step: int, result: dict[str, float]) -> None:
        self.log({f"eval/{k}": v for k, v in result.items()}, step)

    def log(self, data: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(data, step=step)
        except Exception as exc:
            warnings.warn(f"wandb log failed, disabling it: {exc}", stacklevel=2)
            self.run = None

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(summary)
            self.run.finish()
        except Exception as exc:
            warnings.warn(f"wandb finish failed: {exc}", stacklevel=2)
        self.run = None

"""Where a run's record goes besides metrics.json: its `train.log` and, when `logger.wandb` asks, its
wandb run. Both are opened once the run is claimed and closed however it ends (finished, failed,
interrupted), here and nowhere else; only the process that writes the record opens them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .wandb_log import WandbLogger

LOGGERS = ("mora", "transformers")  # whose messages the run's train.log receives


class RunLog:
    """`with RunLog(...) as out:` train.log attached to the loggers, the wandb run (a TrainerCallback,
    in `callbacks`) mirroring the run; on exit the wandb run gets the final evaluation as its summary
    (from `metrics`, which the caller keeps current) and both are closed."""

    def __init__(self, run_dir: Path | None, wandb: dict[str, Any] | None, run_id: str, summary: dict[str, Any],
                 group: str | None):
        self.run_dir, self.handler = run_dir, None
        self.wandb = WandbLogger(wandb, str(run_dir), run_id, summary, group) if wandb and run_dir else None
        self.metrics: dict[str, Any] = {}

    @property
    def callbacks(self) -> list:
        return [self.wandb] if self.wandb else []

    def log_eval(self, step: int, result: dict[str, float]) -> None:
        if self.wandb:
            self.wandb.log_eval(step, result)

    def log_summary(self, values: dict[str, Any]) -> None:
        if self.wandb:
            self.wandb.log_summary(values)

    def __enter__(self) -> RunLog:
        if self.run_dir is not None:
            self.handler = logging.FileHandler(self.run_dir / "train.log")
            self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            for name in LOGGERS:
                logging.getLogger(name).addHandler(self.handler)
        return self

    def __exit__(self, *exc) -> bool:
        if self.wandb:
            self.wandb.finish({"final/" + k: v for k, v in self.metrics.get("final", {}).items()})
        if self.handler is not None:
            for name in LOGGERS:
                logging.getLogger(name).removeHandler(self.handler)
            self.handler.close()
        return False

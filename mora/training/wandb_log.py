"""wandb as an optional mirror of the run: never a reason for training to stop.

Config keys a dashboard filters by (method, rank, kind, task, lr, seed) sit flat at the top; the run's
group is its paper artifact and its job type the method, so one project holds every table.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger("mora")
FIX = "metrics.json holds everything; fix logger.wandb (or `pip install wandb`), or set logger=none to silence this"


def _warn(what: str, exc: Exception) -> None:
    """Say in the log (and the run's train.log) why wandb stopped mirroring, and that nothing is lost."""
    reason = " ".join(str(exc).split())  # one line, however long wandb's own message is
    log.warning("wandb %s failed (%s: %s): going on without wandb; %s", what, type(exc).__name__, reason, FIX)


def dashboard_config(summary: dict[str, Any], run_id: str, group: str | None) -> dict[str, Any]:
    """The run's identifying keys, flat, so a dashboard filters and groups by any of them."""
    return {**summary, "run_id": run_id, "artifact": group or summary.get("experiment")}


def log_evaluation(settings: dict[str, Any], run_dir: str, run_id: str, summary: dict[str, Any], group: str | None,
                   scores: dict[str, Any]) -> None:
    """A run's scores computed after the fact (`python -m mora.evaluate`) as a wandb run of its own,
    `<run_id>-eval`, in the run's group, with the same flat config (job type `<method>`)."""
    try:
        import wandb

        run = wandb.init(
            project=settings.get("project", "mora-bench"),
            entity=settings.get("entity"),
            mode=settings.get("mode", "offline"),
            dir=run_dir,
            id=f"{run_id}-eval",
            name=f"{run_id}-eval",
            resume="allow",
            group=group or summary.get("experiment"),
            job_type=str(summary.get("method")),
            config={**dashboard_config(summary, run_id, group), "stage": "eval"},
            reinit="finish_previous",
        )
        run.summary.update({f"eval/{k}": v for k, v in scores.items()})
        run.finish()
    except Exception as exc:  # wandb is a mirror: never a reason for evaluation to fail
        _warn("logging of the evaluation", exc)


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
                config=dashboard_config(self.summary, self.run_id, self.group),
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as exc:  # wandb missing, misconfigured or offline-broken: keep training
            _warn("init", exc)
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
            _warn("log", exc)
            self.run = None

    def log_summary(self, values: dict[str, Any]) -> None:
        """Scores computed after training (lm-eval, perplexity, spectrum) into the run's summary."""
        if self.run is None:
            return
        try:
            self.run.summary.update({f"eval/{k}": v for k, v in values.items()})
        except Exception as exc:
            _warn("summary update", exc)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(summary)
            self.run.finish()
        except Exception as exc:
            _warn("finish", exc)
        self.run = None

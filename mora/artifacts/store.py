"""Run lookup: where the run a cell names lives in the results store, what it recorded, whether that is
stale, and the metrics a table reads from it.

A metric is looked up in a run's metrics.json: with an eval `step`, that eval; `train_loss`, the last
logged loss (curves: the whole curve); `spectrum/<q|k|...>`, the spectrum summary; otherwise
`scores.<metric>` (mora.evaluate's headline numbers), then `final.<metric>` (the last in-training eval).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..identity import hash_identity
from ..runs import METRICS_NAME, OLD_SCHEME, STATUS_COMPLETED, legacy_runs, read_json, stale_reason
from .compose import Composed, Composer


@dataclass
class Run:
    """One run of a grid: the overrides that name it, where it lives, and what it recorded."""

    seed: int
    overrides: list[str]
    composed: Composed
    path: Path
    legacy: Path | None = None  # its directory under an older id scheme, when only that exists
    metrics: dict | None = None
    stale: str | None = None  # why what it recorded was made by other code
    store: Path = field(default=Path("runs"), repr=False)

    @property
    def run_id(self) -> str:
        return self.composed.run_id

    @property
    def completed(self) -> bool:
        return bool(self.metrics) and self.metrics.get("status") == STATUS_COMPLETED

    def load(self, legacy: dict[str, Path] | None = None) -> "Run":
        """Read (again) what the store holds for this run: its own record, else one an older id scheme
        keyed (`legacy`: those of its experiment, by their current id)."""
        file = self.path / METRICS_NAME
        try:
            self.metrics = read_json(file) if file.is_file() else None
        except (OSError, ValueError):  # being replaced (atomic writes) or damaged: read as not there
            self.metrics = None
        self.stale = stale_reason(self.metrics, self.composed.versions) if self.metrics else None
        self.legacy = None
        if self.metrics is None and legacy and self.run_id in legacy:
            self.legacy = legacy[self.run_id]
            self.metrics = read_json(self.legacy / METRICS_NAME)
            self.stale = f"{OLD_SCHEME} ({self.legacy}; python -m mora.runs migrate {self.store} re-keys it)"
        return self

    def status(self, scores: list[str] = ()) -> tuple[str, str]:
        """(status, why) for the launcher: completed | unscored (trained, lacks a score in `scores`) |
        stale | running | interrupted | failed | missing."""
        metrics = self.metrics or {}
        if self.stale:
            return "stale", (f"stale ({metrics.get('status')}): {self.stale}" if not self.legacy
                             else f"{OLD_SCHEME}: {self.legacy} (python -m mora.runs migrate re-keys it)")
        status = metrics.get("status") or "missing"
        if status == STATUS_COMPLETED:
            missing = [m for m in scores if lookup(metrics, m) is None]
            return ("unscored", "trained, not scored: " + ", ".join(missing)) if missing else (status, "")
        return status, f"{status}: {metrics['error']}" if metrics.get("error") else ""


class Store:
    """The results store as seen through a Composer: Run objects for lists of overrides."""

    def __init__(self, runs_dir: str | Path, composer: Composer):
        self.runs_dir, self.composer = Path(runs_dir), composer
        self.legacy: dict[str, dict[str, Path]] = {}

    def run(self, overrides: list[str], seed: int, where: str) -> Run:
        composed = self.composer.compose(overrides, where)
        run = Run(seed, overrides, composed, self.runs_dir / composed.experiment / composed.run_id, store=self.runs_dir)
        return run.load(self.legacy_of(composed.experiment) if not (run.path / METRICS_NAME).is_file() else None)

    def legacy_of(self, experiment: str) -> dict[str, Path]:
        """Runs of an experiment stored under an older id scheme (read once per experiment)."""
        if experiment not in self.legacy:
            self.legacy[experiment] = legacy_runs(self.runs_dir, experiment)
        return self.legacy[experiment]


def seedless_key(identity: dict[str, Any], train_keys: tuple[str, ...] = ()) -> str:
    """A hash of a run's identity less every `seed` in it (the run's, the data order's) and the given
    `train` keys: what runs that differ only in those share."""
    def drop(node: Any) -> Any:
        return {k: drop(v) for k, v in node.items() if k != "seed"} if isinstance(node, dict) else node

    trimmed = drop(identity)
    trimmed["train"] = {k: v for k, v in (trimmed.get("train") or {}).items() if k not in train_keys}
    return hash_identity(trimmed)


def lookup(metrics: dict, metric: str, step: int | None = None) -> Any:
    """A metric of one run (module docstring); None when the run does not have it."""
    if step is not None:
        return next((e.get(metric) for e in metrics.get("evals", []) if e.get("step") == step), None)
    if metric == "train_loss":
        curve = metrics.get("train_loss") or []
        return curve[-1][1] if curve else None
    if metric.startswith("spectrum/"):
        return (metrics.get("spectrum") or {}).get("by_type", {}).get(metric.split("/", 1)[1])
    for part in ("scores", "final"):
        value = (metrics.get(part) or {}).get(metric)
        if value is not None:
            return value
    return None


def scoring_of(metrics: dict, metric: str) -> str | None:
    """The scoring mode (paper | standard) of the benchmark suite that produced `metric` in one run."""
    for suite in (metrics.get("benchmarks") or {}).values():
        if metric in (suite.get("scores") or {}):
            return suite.get("scoring")
    return None

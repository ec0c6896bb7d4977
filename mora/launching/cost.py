"""What a run is expected to cost: to order a work queue (longest first), give its ETA, and total a
plan's GPU-hours. The first source that knows wins:

1. a finished run in the results store with the same config up to learning rate, seed and steps (its
   identity.json): its `wall_seconds`, scaled by steps when they differ (measured here);
2. bench/cost.yaml: seconds per optimizer step of paper-scale runs on one GPU (bench/cost_table.py),
   times the run's `train.max_steps`, or for an epoch-based run the steps the file gives its experiment;
3. neither: `proxy` = steps x batch x hidden^2 x layers only orders the queue; the launcher turns it into
   seconds once some runs have finished (queue.py).

bench/cost.yaml:
    gpu: NVIDIA H200                                  # what the seconds were measured on
    source: bench/results/<date>/cost_call4.jsonl     # where they come from
    step_seconds:                                     # experiment -> method[@r] -> seconds per step
      uuid_memorization: {fft: 11.3, lora: 19.5, lora@256: 6.6}   # `method@r` wins over `method`
    steps: {tulu_mmlu: 5096}                          # optimizer steps of an epoch-based paper run
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..artifacts.spec import ROOT
from ..artifacts.store import seedless_key
from ..runs import IDENTITY_NAME, METRICS_NAME, STATUS_COMPLETED, read_json

COST_FILE = ROOT / "bench" / "cost.yaml"


@dataclass
class Estimate:
    seconds: float | None  # expected wall seconds of the run; None: unknown
    source: str  # "a recorded run like it" | "bench/cost.yaml (<gpu>)" | ""
    proxy: float


def similar(identity: dict[str, Any]) -> str:
    """The key runs share when they differ only in learning rate, seeds and number of steps."""
    return seedless_key(identity, ("lr", "max_steps"))


def steps_of(config: dict[str, Any]) -> int | None:
    return (config.get("train") or {}).get("max_steps")


def proxy(config: dict[str, Any]) -> float:
    train, net = config.get("train") or {}, (config.get("model") or {}).get("network") or {}
    steps = steps_of(config) or train.get("epochs") or 1
    return float(steps * (train.get("batch_size") or 1) * (net.get("hidden_size") or 1) ** 2 * (net.get("num_layers") or 1))


class Costs:
    """Estimates for runs of one store; recorded runs are read once per experiment."""

    def __init__(self, runs_dir: Path, cost_file: Path = COST_FILE):
        self.runs_dir = Path(runs_dir)
        self.table = yaml.safe_load(cost_file.read_text()) if cost_file.is_file() else {}
        self.recorded: dict[str, dict[str, list[tuple[float, int | None]]]] = {}

    def _recorded(self, experiment: str) -> dict[str, list[tuple[float, int | None]]]:
        if experiment not in self.recorded:
            found: dict[str, list[tuple[float, int | None]]] = {}
            root = self.runs_dir / experiment
            for run in sorted(root.iterdir()) if root.is_dir() else []:
                try:
                    metrics, identity = read_json(run / METRICS_NAME), read_json(run / IDENTITY_NAME)
                except (OSError, ValueError):
                    continue
                if metrics.get("status") == STATUS_COMPLETED and metrics.get("wall_seconds"):
                    steps = (metrics.get("summary") or {}).get("max_steps")
                    found.setdefault(similar(identity), []).append((float(metrics["wall_seconds"]), steps))
            self.recorded[experiment] = found
        return self.recorded[experiment]

    def estimate(self, experiment: str, config: dict[str, Any], identity: dict[str, Any]) -> Estimate:
        steps = steps_of(config)
        like = self._recorded(experiment).get(similar(identity))
        if like:
            scaled = [s * (steps / n if steps and n else 1.0) for s, n in like]
            return Estimate(sorted(scaled)[len(scaled) // 2], "a recorded run like it", proxy(config))
        method = config.get("method") or {}
        per_step = (self.table.get("step_seconds") or {}).get(experiment) or {}
        step_s = per_step.get(f"{method.get('method')}@{method.get('r')}", per_step.get(method.get("method")))
        steps = steps or (self.table.get("steps") or {}).get(experiment)
        if step_s and steps:
            return Estimate(float(step_s) * steps, f"bench/cost.yaml, {self.table.get('gpu', '?')}", proxy(config))
        return Estimate(None, "", proxy(config))

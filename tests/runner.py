"""Helpers to run the real training entry point in tests: in-process through Hydra's compose API,
or as the CLI in a subprocess (for exit codes, SIGKILL and resume)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A run small enough for a test: 8 pairs, 6 steps, evals at 3 and 6, a checkpoint every 3 steps.
TINY_RUN = [
    "experiment=uuid_mini",
    "data.builder.n_pairs=8",
    "model.network.hidden_size=32",
    "model.network.intermediate_size=64",
    "train.max_steps=6",
    "train.batch_size=8",
    "train.micro_batch_size=8",
    "train.save_every=3",
    "train.log_every=1",
    "train.progress_bar=false",
    "eval.steps=[3,6]",
    "eval.metric.batch_size=8",
    "logger=none",
]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def train_in_process(runs_dir: Path, *overrides: str) -> dict:
    from mora.train import train

    return train(compose([*TINY_RUN, f"paths.runs_dir={runs_dir}", *overrides]))


def run_cli(runs_dir: Path, *overrides: str, tiny: bool = True, **popen) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "mora.train", *(TINY_RUN if tiny else []), f"paths.runs_dir={runs_dir}", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **popen)


def deepspeed_cpu_env() -> dict:
    """Environment of a DeepSpeed launch on this CPU machine: gloo, one thread per process (two
    processes on two cores spin-wait in OpenMP otherwise), no launcher variables inherited."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def metrics_files(runs_dir: Path) -> list[Path]:
    return sorted(Path(runs_dir).rglob("metrics.json"))


def wait_for(predicate, timeout: float) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def current_record(overrides: list[str]) -> dict:
    """What mora.train writes into every metrics.json beside the results (the id scheme, the results
    versions of the run the overrides compose): a synthetic store needs it to read as current, not stale."""
    from omegaconf import OmegaConf

    from mora.identity import ID_SCHEME, results_versions

    return {"id_scheme": ID_SCHEME, "results_versions": results_versions(OmegaConf.to_container(compose(overrides), resolve=True))}

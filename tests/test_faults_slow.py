"""The faults that need real processes (`make test-faults`, a minute or two): SIGKILLs at random steps
and in the middle of checkpoint writes, relaunched each time until the run finishes with the metrics
of an undisturbed one; and two tasks of one grid training at once into one results store."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner import ROOT, TINY_RUN, metrics_files

pytestmark = pytest.mark.faults

STEPS, SAVE_EVERY = 24, 4
RUN = [
    "method=remora",  # restarts and ReMoRA's grouping state must survive the kills too
    "method.merge_every=5",
    "method.rewarm_steps=2",
    f"train.max_steps={STEPS}",
    f"train.save_every={SAVE_EVERY}",
    "train.keep_checkpoints=true",
    "eval.steps=[8,16,24]",
]


def _worker(runs: Path, fault: str) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / "tests" / "fault_worker.py"), fault, *TINY_RUN, f"paths.runs_dir={runs}", *RUN]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _faults(rng: random.Random) -> list[str]:
    """Three kills at increasing steps (each is reached again after the previous relaunch), one of
    them during a checkpoint write."""
    save = rng.randrange(SAVE_EVERY, STEPS + 1, SAVE_EVERY)
    others = rng.sample([s for s in range(1, STEPS + 1) if s != save], 2)
    return [f"save:{s}" if s == save else f"step:{s}" for s in sorted([save, *others])]


def test_random_sigkills_then_relaunches_end_as_an_undisturbed_run(tmp_path):
    seed = int(os.environ.get("MORA_FAULT_SEED", random.SystemRandom().randrange(10**6)))
    faults = _faults(random.Random(seed))
    why = f"faults {faults} (MORA_FAULT_SEED={seed} repeats them)"
    straight = _worker(tmp_path / "straight", "none")  # alongside the broken run: 2 cores
    broken = tmp_path / "broken"
    for fault in faults:
        proc = _worker(broken, fault)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL, f"{why}: {fault} did not kill it:\n{out[-3000:]}"
        (path,) = metrics_files(broken)
        assert json.loads(path.read_text())["status"] == "running", why  # a kill records nothing else
        step = int(fault.split(":")[1])
        if fault.startswith("save:"):
            torn = path.parent / "checkpoints" / f"checkpoint-{step}"
            assert (torn / "model.safetensors").is_file() and not (torn / "COMPLETE").exists(), why
    final = _worker(broken, "none")
    out, _ = final.communicate(timeout=600)
    assert final.returncode == 0, f"{why}:\n{out[-3000:]}"
    out, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, out[-3000:]

    (path,) = metrics_files(broken)
    log = (path.parent / "train.log").read_text()
    for fault in faults:
        step = int(fault.split(":")[1])
        resumed = (step - 1) // SAVE_EVERY * SAVE_EVERY  # the last checkpoint completed before the kill
        if resumed:
            assert f"(resuming from checkpoint-{resumed})" in log, f"{why}: {fault}\n{log}"
        if fault.startswith("save:"):
            assert f"checkpoint-{step} is incomplete (the process died while writing it): deleted" in log, why

    a = json.loads(metrics_files(tmp_path / "straight")[0].read_text())
    b = json.loads(path.read_text())
    assert b["status"] == "completed", why
    assert [e["step"] for e in b["evals"]] == [e["step"] for e in a["evals"]] == [8, 16, 24], why
    for ea, eb in zip(a["evals"], b["evals"]):
        assert eb["char_acc"] == ea["char_acc"], why
    steps_a, loss_a = zip(*a["train_loss"])
    steps_b, loss_b = zip(*b["train_loss"])
    assert steps_b == steps_a == tuple(range(1, STEPS + 1)), why
    assert loss_b == pytest.approx(loss_a, rel=1e-5), why


GRID = """\
artifact: twotasks
kind: table
title: two tasks of one grid at once
metric: char_acc
select: {metric: char_acc, mode: max}
mini:
  experiment: uuid_mini
  seeds: [0]
  columns: [3, 6]
  rows:
    - {label: LoRA r=4, overrides: [method=lora, method.r=4], lr_grid: [1e-2]}
    - {label: MoRA r=4, overrides: [method=mora, method.r=4], lr_grid: [1e-2]}
"""


def test_two_tasks_of_one_grid_write_the_store_at_once(tmp_path):
    """`mora.launch --jobs 2`: two processes train the grid's two cells at the same time into one
    store; both rows land, whole, and the report reads both."""
    from mora.launch import expand
    from mora.report import render

    spec = tmp_path / "grid.yaml"
    spec.write_text(GRID)
    store = tmp_path / "runs"
    overrides = [arg for o in TINY_RUN[1:] for arg in ("--override", o)]
    cmd = [sys.executable, "-m", "mora.launch", str(spec), "--section", "mini", "--runs-dir", str(store), "--jobs", "2",
           *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # two workers, two processes: when the first run ends, the other is still running
    assert "grid: 1/2 done, 1 running, 0 failed, 0 left" in done.stdout, done.stdout
    assert len(list((store / ".launch").glob("*/logs/uuid_mini-*.log"))) == 2
    assert "launched 2 runs" in done.stdout and "2 finished, 0 not" in done.stdout

    cells = expand(spec, ["mini"], store, TINY_RUN[1:])
    assert [c.status for c in cells] == ["completed", "completed"]
    for cell in cells:
        metrics = json.loads((Path(cell.path) / "metrics.json").read_text())
        assert metrics["run_id"] == cell.run_id and [e["step"] for e in metrics["evals"]] == [3, 6]
        assert [s for s, _ in metrics["train_loss"]] == [1, 2, 3, 4, 5, 6]
    leftovers = [p for p in store.rglob(".*") if p.name.startswith((".metrics.json", ".config.json"))]
    assert leftovers == []
    result = render(spec, store, tmp_path / "reports", ["mini"], TINY_RUN[1:], wandb_log=False)
    assert not result["tables"][0].notes
    assert all(cell.value is not None for row in result["tables"][0].cells for cell in row)

"""Against a real one-node Slurm (slurm/local_cluster.sh, started and stopped by these tests): a grid of
2 methods x 2 learning rates of the UUID miniature runs as one array job through hydra-submitit-launcher
and through the plain slurm/array.sbatch template; one task of each gets SIGTERM mid-run, is requeued
and resumes from its checkpoint; every run ends with the metrics of the same run done without
interruption (in the other launcher's grid); the report renders the table; relaunching submits nothing.

    make test-slurm          # installs slurm-wlm + munge (+ slurmdbd, mariadb) with apt-get if needed

Skipped only when Slurm cannot be installed at all (not root, no apt-get, or the packages do not exist).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import ROOT, TINY_RUN

pytestmark = pytest.mark.slurm

SCRIPT = ROOT / "slurm" / "local_cluster.sh"


def _free_port_base(count: int = 4) -> int:
    """A base port with `count` free ports after it (slurmctld, slurmd, slurmdbd, mariadb)."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 40000)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports for the test cluster")


# 200 steps: long enough to be interrupted mid-run after the checkpoint at step 20
RUN = [o for o in TINY_RUN if not o.startswith(("experiment=", "logger="))] + [
    "train.max_steps=200", "train.save_every=20", "eval.steps=[100,200]", "logger=none",
]
SPEC = """\
artifact: slurmgrid
kind: table
title: "UUID miniature on Slurm: 2 methods x 2 learning rates"
metric: char_acc
format: ".1f"
selection: "per row, the learning rate with the highest final char_acc"
select: {metric: char_acc, mode: max}
mini:
  experiment: uuid_mini
  seeds: [0]
  columns: [100, 200]
  rows:
    - {label: LoRA r=4, overrides: [method=lora, method.r=4], lr_grid: [1e-2, 3e-2]}
    - {label: MoRA r=4, overrides: [method=mora, method.r=4, method.kind=rotation], lr_grid: [1e-2, 3e-2]}
"""


def _overrides() -> list[str]:
    out = []
    for o in RUN:
        out += ["--override", o]
    return out


CLUSTER: dict[str, str] = {}  # the environment of this session's cluster (set by the fixture)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
            "SLURM_CONF": CLUSTER["SLURM_CONF"]}


@pytest.fixture(scope="module")
def cluster(request):
    """A one-node cluster of this session's own (state dir, ports, munged), stopped at the end."""
    import tempfile

    root = tempfile.mkdtemp(prefix="mora-slurm-")
    env = {**os.environ, "MORA_SLURM_DIR": root, "MORA_SLURM_PORT": str(_free_port_base()),
           "MORA_SLURM_ACCOUNTING": os.environ.get("MORA_SLURM_ACCOUNTING", "1"), "MORA_SLURM_REQUEUE_DELAY": "5"}
    up = subprocess.run([str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=900)
    try:
        if up.returncode == 3:
            pytest.skip(f"Slurm cannot be installed on this machine, so the Slurm tests cannot run: {up.stderr.strip()}")
        assert up.returncode == 0, f"slurm/local_cluster.sh up failed:\n{up.stdout}\n{up.stderr}"
        print(up.stderr.strip())
        CLUSTER["SLURM_CONF"] = f"{root}/etc/slurm.conf"
        yield env
    finally:
        down = subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=120)
        print(down.stderr.strip())
        if request.session.testsfailed:
            shutil.rmtree(f"{root}/mysql", ignore_errors=True)
            print(f"the test cluster's logs: {root}/log")
        else:
            shutil.rmtree(root, ignore_errors=True)
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "slurmgrid.yaml"
    path.write_text(SPEC)
    return path


def _launch(spec: Path, store: Path, *args: str, **popen):
    cmd = [sys.executable, "-m", "mora.launch", str(spec), "--section", "mini", "--runs-dir", str(store), *_overrides(), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _cells(spec: Path, store: Path):
    from mora.launch import expand

    return expand(spec, ["mini"], store, RUN)


def _metrics(cell) -> dict:
    return json.loads((Path(cell.path) / "metrics.json").read_text())


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _our_task(store: Path, index: int) -> str | None:
    """The Slurm id (JOB_TASK) of array task `index` of the launch writing to `store`."""
    q = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%k"], env=_env(), capture_output=True, text=True)
    for line in q.stdout.splitlines():
        job, _, comment = line.partition("|")
        if comment.startswith(f"mora-launch:{store}") and job.endswith(f"_{index}"):
            return job
    return None


def _grid_with_sigterm(spec: Path, store: Path, launcher: str, interrupted: int, scancel_args: list[str]) -> str:
    """Launch the 4-task grid, SIGTERM task `interrupted` once it has a checkpoint, wait for the end."""
    cells = _cells(spec, store)
    target = Path(cells[interrupted].path)
    # the sbatch route asks for the resources of a launcher config: the CPU one on this cluster
    proc = _launch(spec, store, "--launcher", launcher, *(["--resources", "slurm_cpu"] if launcher == "sbatch" else []))
    try:
        _wait(lambda: (target / "checkpoints" / "checkpoint-20" / "COMPLETE").is_file() or proc.poll() is not None,
              300, f"task {interrupted}'s checkpoint at step 20")
        assert proc.poll() is None, "the launch ended before the task could be interrupted:\n" + proc.stdout.read()[-3000:]
        task = _our_task(store, interrupted)
        assert task, "the running task is not in squeue"
        # One request. scancel repeats a signal request every 5+ s for as long as Slurm calls the task
        # "in transition" (it does for an array task with pending siblings, and while it is requeued),
        # which would signal the requeued attempt again: stop it after its first request.
        try:
            subprocess.run(["scancel", "--signal=TERM", *scancel_args, task], env=_env(), capture_output=True, timeout=3)
        except subprocess.TimeoutExpired:
            pass
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    print(out)
    assert proc.returncode == 0, out[-4000:]
    assert "launched 4 runs" in out and "4 finished, 0 not" in out, out[-3000:]
    logs = "".join(p.read_text(errors="replace") for p in (store / ".launch").rglob("*") if p.is_file() and p.suffix in (".out", ".err"))
    return out + logs


@pytest.fixture(scope="module")
def grids(cluster, spec, tmp_path_factory) -> dict[str, dict]:
    """The grid through each launcher, each with a different task interrupted, so that every run of
    one store is compared with the same run done without interruption in the other."""
    out = {}
    for launcher, interrupted, scancel_args in (("slurm_cpu", 1, []), ("sbatch", 2, ["--full"])):
        store = tmp_path_factory.mktemp(launcher) / "runs"
        output = _grid_with_sigterm(spec, store, launcher, interrupted, scancel_args)
        out[launcher] = {"store": store, "output": output, "interrupted": interrupted}
    return out


def _check_interrupted_and_equal(spec: Path, grids: dict, launcher: str) -> None:
    mine = grids[launcher]
    other = next(g for name, g in grids.items() if name != launcher)
    cells = _cells(spec, mine["store"])
    # the interrupted task stopped on the signal, was requeued, and resumed from its own checkpoint
    train_log = (Path(cells[mine["interrupted"]].path) / "train.log").read_text()
    assert "caught SIGTERM" in train_log, train_log[-2000:]
    assert "resuming from checkpoint-" in train_log, train_log[-2000:]
    stopped = [line for line in train_log.splitlines() if "interrupted: RunInterrupted" in line]
    assert stopped, train_log[-2000:]
    assert 20 <= int(stopped[0].split(" at step ")[1].split(";")[0]) < 200
    for i, cell in enumerate(cells):
        if i != mine["interrupted"]:
            assert "caught SIGTERM" not in (Path(cell.path) / "train.log").read_text()
    # every run equals the same run in the other store, where it was not interrupted: evals, loss curve
    for cell, twin in zip(cells, _cells(spec, other["store"])):
        assert cell.run_id == twin.run_id and cell.status == twin.status == "completed"
        ours, ref = _metrics(cell), _metrics(twin)
        assert [e["step"] for e in ours["evals"]] == [100, 200]
        for a, b in zip(ours["evals"], ref["evals"]):
            assert a["char_acc"] == pytest.approx(b["char_acc"], abs=1e-9)
        assert [s for s, _ in ours["train_loss"]] == [s for s, _ in ref["train_loss"]]
        assert [v for _, v in ours["train_loss"]] == pytest.approx([v for _, v in ref["train_loss"]], rel=1e-5)


def _report_and_relaunch(spec: Path, store: Path, launcher: str) -> None:
    from mora.report import render

    result = render(spec, store, store.parent / "reports", ["mini"], RUN, wandb_log=False)
    print(result["markdown"])
    (table,) = result["tables"]
    assert not table.notes, "cells without a finished run:\n" + "\n".join(table.notes)
    assert all(cell.value is not None for row in table.cells for cell in row)
    assert "| LoRA r=4 |" in result["markdown"] and "| MoRA r=4 |" in result["markdown"]

    launches = sorted((store / ".launch").iterdir())
    again = _launch(spec, store, "--launcher", launcher)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert "nothing to launch: submitted 0 jobs" in out, out
    assert out.count("skip    ") == 4 and "launch  " not in out, out
    assert sorted((store / ".launch").iterdir()) == launches  # no new manifest, no submission
    assert _our_task(store, 0) is None


def test_hydra_submitit_array_sigterm_requeue_report_relaunch(grids, spec):
    """hydra-submitit-launcher (conf/launcher/slurm_cpu.yaml): one array job of 4 tasks; SIGTERM to a
    task's step: the trainer checkpoints, hands over to submitit, which requeues the task."""
    _check_interrupted_and_equal(spec, grids, "slurm_cpu")
    assert "handing SIGUSR2 over to submitit" in grids["slurm_cpu"]["output"]
    assert "REQUEUED" in grids["slurm_cpu"]["output"] or "restarts 1" in grids["slurm_cpu"]["output"]
    _report_and_relaunch(spec, grids["slurm_cpu"]["store"], "slurm_cpu")


def test_sbatch_template_array_sigterm_requeue_report_relaunch(grids, spec):
    """slurm/array.sbatch over the manifest: SIGTERM to the task (script and trainer): the trainer
    checkpoints and exits 75, the script requeues the task, which resumes."""
    _check_interrupted_and_equal(spec, grids, "sbatch")
    out = grids["sbatch"]["output"]
    assert "stopped with status 75: requeueing it" in out and "restart 1" in out
    _report_and_relaunch(spec, grids["sbatch"]["store"], "sbatch")

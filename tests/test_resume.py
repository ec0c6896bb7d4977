"""A run killed with SIGKILL mid-way and launched again resumes from its last complete checkpoint and
ends with the same metrics as a run that was never interrupted (ReMoRA: its grouping state too)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from runner import ROOT, TINY_RUN, metrics_files, run_cli, wait_for

RUN = [
    "method=remora",
    "method.merge_every=4",
    "method.rewarm_steps=2",
    "train.max_steps=60",
    "train.save_every=4",
    "eval.steps=[8,60]",
    "train.keep_checkpoints=true",
]


def test_sigkill_then_relaunch_matches_uninterrupted(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    done = run_cli(straight, *RUN)
    assert done.returncode == 0, done.stderr[-2000:]

    args = [sys.executable, "-m", "mora.train", *TINY_RUN, f"paths.runs_dir={broken}", *RUN]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: any(broken.rglob("checkpoint-12/COMPLETE")), 300), "no checkpoint appeared"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL, "the run finished before it could be killed"
    finally:
        if proc.poll() is None:
            proc.kill()
    (killed,) = metrics_files(broken)
    assert json.loads(killed.read_text())["status"] == "running"

    again = run_cli(broken, *RUN)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from checkpoint-" in again.stderr + again.stdout

    a = json.loads(metrics_files(straight)[0].read_text())
    b = json.loads(metrics_files(broken)[0].read_text())
    assert b["status"] == "completed"
    assert [e["step"] for e in b["evals"]] == [8, 60]
    for ea, eb in zip(a["evals"], b["evals"]):
        assert eb["char_acc"] == pytest.approx(ea["char_acc"], abs=1e-9)
    steps_a, loss_a = zip(*a["train_loss"])
    steps_b, loss_b = zip(*b["train_loss"])
    assert steps_a == steps_b
    assert loss_b == pytest.approx(loss_a, rel=1e-5)

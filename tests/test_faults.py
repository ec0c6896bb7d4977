"""Faults that must lose nothing and explain themselves (docs/reliability.md): a torn checkpoint, a NaN or
infinite loss, concurrent writers to the results store, a second process on a run already in training,
wandb missing or broken, and a whole miniature (train, benchmark, report) with the network blocked.
Random SIGKILLs (during steps and during checkpoint writes) are in tests/test_random_kills.py."""

from __future__ import annotations

import json
import math
import multiprocessing
import re
import socket
import sys
import traceback
import types
from pathlib import Path

import pytest
import yaml

from runner import TINY_RUN, compose, metrics_files, train_in_process

KEEP = ["method=lora", "train.keep_checkpoints=true"]


def _run_dir(runs: Path) -> Path:
    (path,) = metrics_files(runs)
    return path.parent


def _same_results(a: dict, b: dict) -> None:
    assert [e["step"] for e in b["evals"]] == [e["step"] for e in a["evals"]] == [3, 6]
    for ea, eb in zip(a["evals"], b["evals"]):
        assert eb["char_acc"] == ea["char_acc"]
    steps_a, loss_a = zip(*a["train_loss"])
    steps_b, loss_b = zip(*b["train_loss"])
    assert steps_b == steps_a and loss_b == pytest.approx(loss_a, rel=1e-5)


# --- a checkpoint torn by a crash while it was written --------------------------------------------


class Crash(BaseException):
    """Stands in for the process dying (in-process, so the test stays fast)."""


def test_torn_checkpoint_is_deleted_never_resumed_and_the_run_ends_as_if_undisturbed(tmp_path, monkeypatch, caplog):
    from transformers import Trainer

    straight = train_in_process(tmp_path / "straight", *KEEP)

    original = Trainer._save_optimizer_and_scheduler

    def dies_while_saving_checkpoint_6(self, output_dir):
        if Path(output_dir).name == "checkpoint-6":
            (Path(output_dir) / "optimizer.pt").write_bytes(b"\x80\x02half-written")
            raise Crash()
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", dies_while_saving_checkpoint_6)
    with pytest.raises(Crash):
        train_in_process(tmp_path / "broken", *KEEP)
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", original)
    checkpoints = _run_dir(tmp_path / "broken") / "checkpoints"
    assert (checkpoints / "checkpoint-6" / "model.safetensors").is_file()  # torn: weights, bad optimizer, no marker
    assert not (checkpoints / "checkpoint-6" / "COMPLETE").exists() and (checkpoints / "checkpoint-3" / "COMPLETE").is_file()

    with caplog.at_level("INFO", logger="mora"):
        again = train_in_process(tmp_path / "broken", *KEEP)
    messages = [r.getMessage() for r in caplog.records]
    assert any("checkpoint-6 is incomplete" in m and "not resumed from" in m for m in messages), messages
    assert any("resuming from checkpoint-3" in m for m in messages), messages
    assert again["status"] == "completed"
    _same_results(straight, again)
    assert (checkpoints / "checkpoint-6" / "COMPLETE").is_file()  # written afresh, completely


# --- Ctrl-C --------------------------------------------------------------------------------------

CTRL_C_RUN = ["method=lora", "train.max_steps=30", "train.save_every=4", "eval.steps=[8,30]", "train.keep_checkpoints=true"]


def test_ctrl_c_checkpoints_stops_interrupted_and_the_same_command_resumes(tmp_path, caplog):
    """As SIGTERM does (tests/test_slurm.py), on the real CLI: SIGINT once a checkpoint exists; the run
    saves a checkpoint at the end of its step, is recorded `interrupted`, exits 130 with one line on
    how to resume and no traceback; the same command resumes it and it ends as an undisturbed run."""
    import os
    import signal
    import subprocess

    from runner import ROOT, wait_for

    runs = tmp_path / "broken"
    args = [sys.executable, "-m", "mora.train", *TINY_RUN, f"paths.runs_dir={runs}", *CTRL_C_RUN]
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: any(runs.rglob("checkpoint-4/COMPLETE")), 300), "no checkpoint appeared"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert "caught SIGINT: saving a checkpoint at the end of this step, then stopping (Ctrl-C again stops at once)" in out
    (hint,) = [line for line in out.splitlines() if "to resume" in line]
    stopped = int(hint.rsplit("checkpoint-", 1)[1])
    assert hint.endswith(f"to resume, run the same command again: it picks up from checkpoint-{stopped}")
    assert 4 <= stopped < 30
    metrics = json.loads(metrics_files(runs)[0].read_text())
    assert metrics["status"] == "interrupted" and f"stopped by SIGINT at step {stopped}" in metrics["error"]
    assert (_run_dir(runs) / "checkpoints" / f"checkpoint-{stopped}" / "COMPLETE").is_file()

    # the same command again (in this process: the CLI's start-up is the slow part of the test)
    with caplog.at_level("INFO", logger="mora"):
        b = train_in_process(runs, *CTRL_C_RUN)
    assert any(f"resuming from checkpoint-{stopped}" in r.getMessage() for r in caplog.records)
    a = train_in_process(tmp_path / "straight", *CTRL_C_RUN)
    assert b["status"] == "completed" and [e["step"] for e in b["evals"]] == [8, 30]
    assert [e["char_acc"] for e in b["evals"]] == [e["char_acc"] for e in a["evals"]]
    assert [s for s, _ in b["train_loss"]] == [s for s, _ in a["train_loss"]]
    assert [v for _, v in b["train_loss"]] == pytest.approx([v for _, v in a["train_loss"]], rel=1e-5)


def test_a_second_ctrl_c_stops_at_once_and_leaves_no_torn_checkpoint(tmp_path, monkeypatch, caplog):
    """Both Ctrl-Cs arrive while checkpoint-6 is half written: the run stops in the middle of the write,
    is recorded `interrupted`, the torn checkpoint is deleted, and a relaunch resumes from checkpoint-3."""
    import os
    import signal

    from transformers import Trainer

    original = Trainer._save_optimizer_and_scheduler

    def ctrl_c_twice_while_saving_checkpoint_6(self, output_dir):
        if Path(output_dir).name == "checkpoint-6":
            (Path(output_dir) / "optimizer.pt").write_bytes(b"\x80\x02half-written")
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", ctrl_c_twice_while_saving_checkpoint_6)
    with pytest.raises(KeyboardInterrupt, match="a second Ctrl-C stopped it at once"):
        train_in_process(tmp_path, *KEEP)
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", original)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    checkpoints = _run_dir(tmp_path) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-3"]  # checkpoint-6 was torn: deleted
    assert (checkpoints / "checkpoint-3" / "COMPLETE").is_file()
    metrics = json.loads(metrics_files(tmp_path)[0].read_text())
    assert metrics["status"] == "interrupted"
    assert metrics["error"] == "KeyboardInterrupt: a second Ctrl-C stopped it at once"

    with caplog.at_level("INFO", logger="mora"):
        assert train_in_process(tmp_path, *KEEP)["status"] == "completed"
    assert any("resuming from checkpoint-3" in r.getMessage() for r in caplog.records)


# --- file modes in the results store ---------------------------------------------------------------


def test_the_results_store_is_written_with_the_process_umask(tmp_path):
    """Under umask 027 every file of a run is 0640 and every directory 0750: mkstemp's and
    safetensors' 0600 would hide results from the group on a shared store."""
    import os
    import stat

    previous = os.umask(0o027)
    try:
        train_in_process(tmp_path, *KEEP, "benchmark=spectrum")
    finally:
        os.umask(previous)
    run = _run_dir(tmp_path)
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.relative_to(run).as_posix() for p in files}
    assert {"config.json", "metrics.json", "spectrum.json", "initial_weights.safetensors", "merged/model.safetensors",
            "adapter/adapter_model.safetensors", "checkpoints/checkpoint-6/model.safetensors"} <= names, names
    modes = {p.relative_to(run).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert {k: v for k, v in modes.items() if v != "0o640"} == {}
    dirs = {p.relative_to(run).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in run.rglob("*") if p.is_dir()}
    assert {k: v for k, v in dirs.items() if v != "0o750"} == {}


def test_last_complete_checkpoint_ignores_and_discard_removes_torn_ones(tmp_path):
    from mora.training.callbacks import COMPLETE_MARKER, discard_torn_checkpoints, last_complete_checkpoint

    for step, complete in ((4, True), (8, True), (12, False), (16, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).touch()
    (tmp_path / "checkpoint-notes").mkdir()  # not the Trainer's: left alone
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-8"
    assert discard_torn_checkpoints(tmp_path) == ["checkpoint-12", "checkpoint-16"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8", "checkpoint-notes"]
    assert last_complete_checkpoint(tmp_path / "none") is None


# --- NaN / inf loss -----------------------------------------------------------------------------

BAD_STEP = 5


def _poison_loss_from(monkeypatch, step: int, value: float) -> None:
    from transformers import Trainer

    original = Trainer.compute_loss

    def poisoned(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        return loss * value if self.state.global_step + 1 >= step else loss

    monkeypatch.setattr(Trainer, "compute_loss", poisoned)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, value):
    from safetensors.torch import load_file

    from mora.training.finite import NonFiniteLossError

    _poison_loss_from(monkeypatch, BAD_STEP, value)
    with pytest.raises(NonFiniteLossError, match=rf"training loss is {value} at step {BAD_STEP};.*"
                                                 r"last good checkpoint: checkpoint-3.*Lower train.lr"):
        train_in_process(tmp_path, "method=lora")
    run = _run_dir(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and f"at step {BAD_STEP}" in metrics["error"]
    assert [s for s, _ in metrics["train_loss"]] == list(range(1, BAD_STEP))  # the bad step is not recorded
    assert all(math.isfinite(loss) for _, loss in metrics["train_loss"])
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-3"] and (run / "checkpoints" / "checkpoint-3" / "COMPLETE").is_file()
    weights = load_file(run / "checkpoints" / "checkpoint-3" / "model.safetensors")
    assert weights and all(t.isfinite().all() for t in weights.values())
    assert not (run / "merged").exists() and not (run / "adapter").exists()


def test_a_nan_run_is_shown_failed_by_the_report_and_the_launcher(tmp_path, monkeypatch, capsys):
    from mora.launch import expand, main
    from mora.report import render
    from mora.train import train

    spec = _spec(tmp_path, overrides=TINY_RUN[1:], columns=[3, 6])
    store = tmp_path / "runs"
    (cell,) = expand(spec, ["mini"], store)
    _poison_loss_from(monkeypatch, BAD_STEP, math.nan)
    with pytest.raises(Exception, match=f"at step {BAD_STEP}"):
        train(compose([*cell.overrides, f"paths.runs_dir={store}"]))
    assert json.loads((Path(cell.path) / "metrics.json").read_text())["final"]["step"] == 3  # an eval before the NaN

    result = render(spec, store, tmp_path / "reports", ["mini"], wandb_log=False)
    row = next(line for line in result["markdown"].splitlines() if line.startswith("| MoRA"))
    assert row.count("– [1]") == 2, row  # no number, a note instead
    assert f"[failed: NonFiniteLossError: training loss is nan at step {BAD_STEP}" in result["markdown"]
    csv = (tmp_path / "reports" / "offline_mini.csv").read_text().splitlines()
    assert all(",missing," in line for line in csv[1:]), csv

    assert main([str(spec), "--section", "mini", "--runs-dir", str(store), "--dry-run"]) == 0
    assert f"[failed: NonFiniteLossError: training loss is nan at step {BAD_STEP}" in capsys.readouterr().out


# --- concurrent writers ---------------------------------------------------------------------------


def _writer(path: str, tag: int, n: int) -> None:
    from mora.runs import write_json_atomic

    for i in range(n):
        write_json_atomic(Path(path), {"tag": tag, "i": i, "payload": "x" * (4096 * (1 + i % 8))})


def test_concurrent_writers_never_leave_a_torn_metrics_file(tmp_path):
    """Two processes rewrite the same file (and each its own) while it is read: every read parses."""
    target = tmp_path / "metrics.json"
    _writer(str(target), -1, 1)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(target), tag, 300)) for tag in (0, 1)]
    procs += [ctx.Process(target=_writer, args=(str(tmp_path / f"own{tag}.json"), tag, 300)) for tag in (0, 1)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        data = json.loads(target.read_text())
        assert data["payload"] == "x" * (4096 * (1 + data["i"] % 8))
        reads += 1
    assert all(p.exitcode == 0 for p in procs)
    assert reads > 10
    assert json.loads(target.read_text())["i"] == 299
    assert [json.loads((tmp_path / f"own{t}.json").read_text())["i"] for t in (0, 1)] == [299, 299]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "own0.json", "own1.json"]  # no temp file left


def test_a_run_in_training_elsewhere_is_not_started_twice(tmp_path):
    from omegaconf import OmegaConf

    from mora.runs import RunBusyError, RunDir

    cfg = compose([*TINY_RUN, f"paths.runs_dir={tmp_path}", "method=lora"])
    run = RunDir(tmp_path, cfg.experiment_name, OmegaConf.to_container(cfg, resolve=True))
    with run.claimed():  # another process (another open file: flock treats it as another holder)
        with pytest.raises(RunBusyError, match=rf"run {run.id} .* is being trained by pid \d+ on .*; this process "
                                               "started nothing. Wait for that one to finish"):
            train_in_process(tmp_path, "method=lora")
        assert sorted(p.name for p in run.path.iterdir()) == [".lock"]  # nothing written, nothing deleted
    assert train_in_process(tmp_path, "method=lora")["status"] == "completed"  # released: it runs


# --- wandb missing or broken ----------------------------------------------------------------------


class _BrokenRun:
    summary: dict = {}

    def log(self, *args, **kwargs):
        raise ConnectionError("wandb service went away")

    def finish(self):
        pass


@pytest.mark.parametrize(
    "case,setting,reason",
    [
        ("missing", None, r"wandb init failed \(ModuleNotFoundError: import of wandb halted"),
        ("misconfigured", "logger.wandb.mode=bogus", r"wandb init failed \(ValidationError: .*mode"),
        ("breaks mid-run", "fake", r"wandb log failed \(ConnectionError: wandb service went away\)"),
    ],
    ids=["missing", "misconfigured", "breaks-mid-run"],
)
def test_wandb_trouble_never_stops_training_and_says_why(tmp_path, monkeypatch, caplog, case, setting, reason):
    overrides = ["method=lora", "logger=wandb"]
    if case == "missing":
        monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    elif setting == "fake":
        fake = types.SimpleNamespace(init=lambda **kw: _BrokenRun(), Settings=lambda **kw: None)
        monkeypatch.setitem(sys.modules, "wandb", fake)
    else:
        overrides.append(setting)
    with caplog.at_level("WARNING", logger="mora"):
        metrics = train_in_process(tmp_path, *overrides)
    assert metrics["status"] == "completed" and [e["step"] for e in metrics["evals"]] == [3, 6]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "wandb" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, then wandb is off for the run
    assert re.search(reason, warnings[0]) and "going on without wandb" in warnings[0] and "logger=none" in warnings[0]
    assert "going on without wandb" in (_run_dir(tmp_path) / "train.log").read_text()


def test_report_with_wandb_missing_still_writes_its_files(tmp_path, monkeypatch, capsys):
    from mora.report import render

    monkeypatch.setitem(sys.modules, "wandb", None)
    spec = _spec(tmp_path, overrides=TINY_RUN[1:], columns=[3, 6])
    (tmp_path / "runs").mkdir()
    result = render(spec, tmp_path / "runs", tmp_path / "reports", ["mini"], wandb_log=True)
    assert result["wandb_dir"] is None and all(f.is_file() for f in result["files"])
    assert "wandb logging of the report failed (ModuleNotFoundError" in capsys.readouterr().err


# --- offline: a whole miniature with the network blocked ------------------------------------------


def _spec(tmp_path: Path, overrides: list[str], columns: list) -> Path:
    spec = {
        "artifact": "offline",
        "kind": "table",
        "title": "one cell, trained, scored and reported",
        "metric": "char_acc",
        "select": {"metric": "char_acc", "mode": "max"},
        "mini": {
            "experiment": "uuid_mini",
            "seeds": [0],
            "overrides": list(overrides),
            "columns": columns,
            "rows": [{"label": "MoRA r=4", "overrides": ["method=mora", "method.r=4"], "lr_grid": [3e-3]}],
        },
    }
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def network_blocked(monkeypatch):
    """Every internet socket and name lookup of this process raises; returns the attempts, each with the
    stack that made it."""
    attempts: list[tuple[str, str]] = []

    def refuse(what: str, error: type[OSError]):
        attempts.append((what, "".join(traceback.format_stack(limit=12))))
        raise error(f"{what}: network access is blocked in this test")

    class NoNetwork(socket.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None and family in (-1, socket.AF_INET, socket.AF_INET6):
                refuse(f"socket({family!r})", OSError)
            super().__init__(family, type, proto, fileno)

    monkeypatch.setattr(socket, "socket", NoNetwork)
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: refuse(f"getaddrinfo({host!r})", socket.gaierror))
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    attempts.clear()
    return attempts


def test_a_full_miniature_runs_with_the_network_blocked(tmp_path, network_blocked):
    """Train one cell of a grid (eval at steps), score it on a benchmark (lm-eval, fixtures) and render
    the report, without a single attempt to reach the network."""
    from mora.launch import expand
    from mora.report import render
    from mora.train import train

    bench = ["benchmark=biomed_mini", "benchmark.limit=2", "benchmark.batch_size=4",
             f"benchmark.data_dir={tmp_path / 'eval_data'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    spec = _spec(tmp_path, [*TINY_RUN[1:], *bench], [3, 6, {"key": "biomed", "metric": "biomed", "format": ".1f"}])
    store = tmp_path / "runs"
    (cell,) = expand(spec, ["mini"], store)
    metrics = train(compose([*cell.overrides, f"paths.runs_dir={store}"]))
    assert metrics["status"] == "completed" and 0.0 <= metrics["scores"]["biomed"] <= 100.0

    result = render(spec, store, tmp_path / "reports", ["mini"], wandb_log=False)
    assert not result["tables"][0].notes, result["markdown"]
    (cells,) = result["tables"][0].cells
    assert [c.value for c in cells] == [metrics["evals"][0]["char_acc"], metrics["evals"][1]["char_acc"],
                                        metrics["scores"]["biomed"]]
    # A library may probe for IPv6 support when first imported (urllib3 does); nothing may try to
    # reach the network while training, scoring or reporting.
    while_running = [stack for _, stack in network_blocked if "importlib._bootstrap" not in stack]
    assert while_running == [], while_running[0] if while_running else ""

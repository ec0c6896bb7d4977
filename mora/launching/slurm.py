"""Slurm: the resources a task asks for (one place: conf/launcher/<name>.yaml, for submitit and sbatch
alike), the manifest an array job runs, submitting it (hydra-submitit-launcher or slurm/array.sbatch)
and watching its tasks in squeue / sacct."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..artifacts.spec import CONF_DIR, ROOT

SBATCH_TEMPLATE = ROOT / "slurm" / "array.sbatch"
COMMENT_PREFIX = "mora-launch:"
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED"}


def hydra_string(value: str | Path) -> str:
    """A quoted Hydra override value: paths may hold characters Hydra's grammar reserves."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def launcher_settings(name: str, hydra_args: list[str], conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """`hydra.launcher` of conf/launcher/<name>.yaml with the --hydra overrides applied."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+launcher={name}", *hydra_args], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def resources_text(settings: dict[str, Any]) -> str:
    """What one task asks for, in words: GPUs, CPUs, memory, time limit."""
    gpus, mem, limit = settings.get("gpus_per_node"), settings.get("mem_gb"), settings.get("timeout_min")
    return (f"{gpus or 0} GPU, {settings.get('cpus_per_task') or 1} CPUs, "
            f"{f'{mem} GB' if mem else 'the partition default memory'}, time limit {_hms(limit) if limit else 'none'}")


def _hms(minutes: int) -> str:
    return f"{int(minutes) // 60:02d}:{int(minutes) % 60:02d}:00"


def sbatch_options(settings: dict[str, Any]) -> list[str]:
    """The launcher config as sbatch options, so `--launcher sbatch` asks for what submitit asks for."""
    s, extra = settings, settings.get("additional_parameters") or {}
    options = [f"--{flag}={s[key]}" for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"),
               ("nodes", "nodes"), ("tasks_per_node", "ntasks-per-node"), ("cpus_per_task", "cpus-per-task"),
               ("gpus_per_node", "gpus-per-node")) if s.get(key)]
    options += [f"--mem={s['mem_gb']}G"] if s.get("mem_gb") else []
    options += [f"--time={_hms(s['timeout_min'])}"] if s.get("timeout_min") else []
    options += [f"--signal=B:USR1@{s['signal_delay_s']}"] if s.get("signal_delay_s") else []
    for key, value in extra.items():
        options.append(f"--{key}" if value is True else f"--{key}={value}")
    return options


def sbatch_command(out: Path, tasks: int, settings: dict[str, Any], sbatch_args: list[str], parallel: int | None,
                   artifact: str) -> list[str]:
    parallel = parallel or settings.get("array_parallelism")
    return ["sbatch", "--parsable", f"--array=0-{tasks - 1}" + (f"%{parallel}" if parallel else ""),
            f"--job-name=mora-{artifact}", f"--comment={COMMENT_PREFIX}{out}", f"--output={out}/logs/%A_%a.out",
            f"--chdir={ROOT}", *sbatch_options(settings), *sbatch_args, str(SBATCH_TEMPLATE), str(out / "manifest.txt")]


def train_multirun(out: Path, launcher: str, hydra_args: list[str]) -> list[str]:
    # validate=false: every cell was composed and checked by mora.launch already
    return [sys.executable, "-m", "mora.train", "-m", f"+launcher={launcher}", "hydra/sweeper=manifest",
            f"hydra.sweeper.manifest={hydra_string(out / 'manifest.txt')}", "hydra.sweeper.validate=false",
            f"hydra.sweep.dir={hydra_string(out)}", *hydra_args]


def slurm_available() -> bool:
    return shutil.which("squeue") is not None and shutil.which("sbatch") is not None


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def queued_tasks() -> list[dict[str, str]]:
    """Array tasks of mora launches that Slurm still holds: [{job, task, state, comment, time}]."""
    if not slurm_available():
        return []
    proc = _run(["squeue", "-h", "-r", "-o", "%i|%T|%M|%k"], timeout=60)
    out = []
    for line in proc.stdout.splitlines() if not proc.returncode else []:
        parts = line.split("|", 3)
        if len(parts) != 4 or not parts[3].startswith(COMMENT_PREFIX):
            continue
        job, state, elapsed, comment = parts
        out.append({"job": job, "task": job.split("_", 1)[1] if "_" in job else "0", "state": state, "time": elapsed,
                    "comment": comment})
    return out


def in_flight() -> dict[str, str]:
    """Run directories that a still-queued or running task of an earlier launch will produce -> why."""
    found = {}
    for task in queued_tasks():
        if task["state"] not in ACTIVE_STATES:
            continue
        try:
            earlier = json.loads((Path(task["comment"][len(COMMENT_PREFIX):]) / "cells.json").read_text())["cells"]
            found[earlier[int(task["task"])]["path"]] = f"Slurm task {task['job']} {task['state']}"
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return found


def wait_until_gone(job_ids: set[str], timeout: float = 60.0) -> None:
    """Results can be on disk while Slurm still winds the tasks down (COMPLETING): wait for that."""
    deadline = time.time() + timeout
    while job_ids and time.time() < deadline:
        q = _run(["squeue", "-h", "-j", ",".join(sorted(job_ids)), "-o", "%i"], timeout=60)
        if q.returncode or not q.stdout.strip():
            return
        time.sleep(1)


def job_state_lines(job_id: str) -> list[str]:
    """One line per array task (and per earlier attempt of a requeued one): from sacct when accounting
    is on, else from scontrol (which keeps finished jobs for MinJobAge seconds)."""
    if shutil.which("sacct"):
        proc = _run(["sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "JobID,JobName,State,ExitCode,Elapsed,NodeList"],
                    timeout=60)
        if proc.returncode == 0 and proc.stdout.strip():
            return ["sacct: " + line.replace("|", "  ") for line in proc.stdout.splitlines()]
    proc = _run(["scontrol", "-o", "show", "job", job_id], timeout=60)
    lines = []
    for record in proc.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in record.split() if "=" in f)
        task = fields.get("ArrayTaskId")
        lines.append(
            "job " + (f"{fields.get('ArrayJobId')}_{task}" if task else fields.get("JobId", "?"))
            + f"  {fields.get('JobState', '?')}  exit {fields.get('ExitCode', '?')}  restarts {fields.get('Restarts', '?')}"
            + f"  runtime {fields.get('RunTime', '?')}  node {fields.get('NodeList', '?')}"
        )
    return lines


class QueueWatcher(threading.Thread):
    """Prints the squeue state of this launch's tasks whenever it changes (a thread, while we wait)."""

    def __init__(self, comment: str, interval: float = 2.0):
        super().__init__(daemon=True)
        self.comment, self.interval = comment, interval
        self.stop = threading.Event()
        self.job_ids: set[str] = set()

    def run(self) -> None:
        last = None
        while not self.stop.is_set():
            tasks = [t for t in queued_tasks() if t["comment"] == self.comment]
            self.job_ids |= {t["job"].split("_", 1)[0] for t in tasks}
            now = sorted((t["job"], t["state"]) for t in tasks)
            if now != last and tasks:
                if len(now) <= 8:
                    summary = ", ".join(f"{job} {state}" for job, state in now)
                else:
                    counts: dict[str, int] = {}
                    for _, state in now:
                        counts[state] = counts.get(state, 0) + 1
                    summary = f"{len(now)} tasks: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
                print(f"[squeue {time.strftime('%H:%M:%S')}] {summary}", flush=True)
            last = now
            self.stop.wait(self.interval)

    def __enter__(self) -> "QueueWatcher":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()


def run_submitit(out: Path, launcher: str, hydra_args: list[str], artifact: str) -> tuple[int, set[str]]:
    comment = COMMENT_PREFIX + str(out)
    cmd = train_multirun(out, launcher, [f"hydra.launcher.comment={hydra_string(comment)}",
                                         f"hydra.launcher.name=mora-{artifact}", *hydra_args])
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    with QueueWatcher(comment) as watcher:
        rc = subprocess.run(cmd, cwd=ROOT).returncode
    return rc, watcher.job_ids | {p.name.split("_", 1)[0] for p in (out / ".submitit").glob("*_*") if p.is_dir()}


def run_sbatch(cmd: list[str], out: Path, tasks: int, wait: bool) -> tuple[int, set[str]]:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    proc = _run(cmd, cwd=ROOT, timeout=120)
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode or 1, set()
    job_id = proc.stdout.strip().split(";")[0]
    print(f"submitted array job {job_id}: {tasks} tasks (logs {out}/logs/{job_id}_<task>.out)", flush=True)
    (out / "job_id").write_text(job_id + "\n")
    if not wait:
        return 0, {job_id}
    failures = 0
    with QueueWatcher(COMMENT_PREFIX + str(out)):
        while True:
            q = _run(["squeue", "-h", "-j", job_id, "-o", "%i"], timeout=60)
            if q.returncode == 0 and not q.stdout.strip():
                break
            failures = 0 if q.returncode == 0 else failures + 1
            if failures >= 30:
                print(f"squeue has failed for a minute ({q.stderr.strip()}); not waiting for job {job_id} any longer",
                      file=sys.stderr)
                break
            time.sleep(2)
    return 0, {job_id}

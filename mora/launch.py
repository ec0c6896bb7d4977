"""Launch a paper artifact's grid: expand it into runs, skip the finished ones, run the rest locally or on Slurm.

    python -m mora.launch experiments/table2.yaml --section mini                      # here, one run after another
    python -m mora.launch experiments/table1.yaml --section paper --launcher slurm    # one Slurm array job (submitit)
    python -m mora.launch experiments/table1.yaml --section paper --launcher sbatch   # the same, plain sbatch
    python -m mora.launch experiments/table1.yaml --section paper --dry-run           # what would run, and what not

The grid is the artifact spec's (experiments/*.yaml, format in mora/report.py): every row x column
group x learning rate of its grid x other swept hyperparameters x seed is one run, with exactly the
overrides `python -m mora.report` composes for that cell, so the run lands where the report looks.
Each run's id comes from its composed config (mora.runs); a run whose metrics.json says `completed`
is skipped and listed; a failed, interrupted or half-done one is launched again (and resumes from
its last complete checkpoint), and so is one that trained but lacks a benchmark score the table
reads (mora.train then only scores it). On Slurm, tasks of an earlier launch still queued or running
are left alone too. Relaunching a finished grid launches nothing. A stale run (recorded by code whose
results version has been bumped since, or stored under an older id scheme: docs/results_store.md) is
listed and skipped; `--rerun-stale` trains those again (mora.train moves the old record to
<experiment>/.stale/ first; nothing is deleted).

What gets written, under <runs-dir>/.launch/<artifact>-<section>-<time>/:
  manifest.txt   one line of Hydra overrides per task (task i = line i); what the array job runs
  cells.json     the same cells with labels and run ids
  logs/          Slurm task logs (sbatch); .submitit/ (submitit); local/ or local-<k>/train.log (--jobs N)

Launchers:
  local        Hydra multirun here (hydra/sweeper=manifest, basic launcher); --jobs N splits it in N processes
  slurm        Hydra multirun through hydra-submitit-launcher (conf/launcher/slurm.yaml): one array job;
               waits for it (submitit does). Any conf/launcher/<name>.yaml works: slurm_cpu for CPU nodes
  sbatch       slurm/array.sbatch over the manifest: sbatch --array=0-(N-1)%P; waits unless --no-wait
Every Slurm task that gets SIGTERM (preemption, time limit, scancel --signal=TERM) saves a checkpoint
and is requeued; it resumes where it stopped (mora/training/preemption.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .report import CONF_DIR, Composer, candidates_for, load_spec, lookup
from .runs import OLD_SCHEME, STATUS_COMPLETED, read_json, stale_reason

ROOT = Path(__file__).resolve().parent.parent
SBATCH_TEMPLATE = ROOT / "slurm" / "array.sbatch"
COMMENT_PREFIX = "mora-launch:"
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED"}


@dataclass
class Cell:
    """One run of the grid."""

    label: str
    experiment: str
    run_id: str
    path: str
    overrides: list[str]
    status: str = "missing"  # completed | unscored | running | interrupted | failed | missing | stale | queued (on Slurm)
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    scores: list[str] = field(default_factory=list)  # benchmark scores the report reads from this run
    versions: dict[str, int] = field(default_factory=dict)  # the results versions the current code gives it
    legacy: str = ""  # its directory under an older id scheme, when only that exists


# ---------------------------------------------------------------------------------------------
# the grid


def _label(row, group, candidate, seed, section) -> str:
    parts = [row.label + (f" (r={row.rank})" if row.rank is not None and f"r={row.rank}" not in row.label else "")]
    if len(section.groups) > 1:
        parts.append(group.label or group.name)
    parts.append(candidate.describe())
    if len(section.seeds) > 1:
        parts.append(f"seed {seed}")
    return " | ".join(parts)


def expand(spec_path: str | Path, sections: list[str], runs_dir: str | Path, extra: list[str] | None = None,
           conf_dir: Path = CONF_DIR) -> list[Cell]:
    """Every run of the requested sections, each once (cells shared by two rows are one run), with its
    status in the results store. Raises ValueError, naming what to fix, if any cell does not compose."""
    spec = load_spec(spec_path, conf_dir)
    for name in sections:
        if name not in spec.sections:
            raise ValueError(f"{spec.path}: no section {name!r}; it has {sorted(spec.sections)} (--section)")
    runs_dir = Path(runs_dir)
    cells: dict[tuple[str, str], Cell] = {}
    with Composer(conf_dir) as composer:
        for name in sections:
            section = spec.sections[name]
            for row in section.rows:
                for group in section.groups.values():
                    # scores a benchmark adds after training (not eval steps, not the loss curve)
                    scores = [c.metric for c in section.columns
                              if c.group == group.name and c.step is None and c.metric != "train_loss"]
                    for candidate in candidates_for(spec, section, row, group, composer, runs_dir, list(extra or [])):
                        for run in candidate.runs:
                            key = (run["path"].parent.name, run["run_id"])
                            if key in cells:
                                cells[key].scores += [m for m in scores if m not in cells[key].scores]
                                continue
                            cells[key] = Cell(
                                label=_label(row, group, candidate, run["seed"], section),
                                experiment=run["path"].parent.name,
                                run_id=run["run_id"],
                                path=str(run["path"]),
                                overrides=list(run["overrides"]),
                                extra={"section": name, "row": row.label, "group": group.name, "seed": run["seed"],
                                       "lr": candidate.lr, **{k: v for k, v in candidate.sweep.items()}},
                                scores=list(scores),
                                versions=run["versions"],
                                legacy=str(run["legacy"] or ""),
                            )
    out = list(cells.values())
    check_cells(out, spec.path, conf_dir)
    for cell in out:
        refresh(cell)
    return out


def check_cells(cells: list[Cell], where: Path, conf_dir: Path = CONF_DIR) -> None:
    """What `mora.train` would reject before training, checked for every cell before anything runs:
    the method's options (unknown method, kind, option; bad values), the batch arithmetic and every
    key (mora.schema). Configs are composed once per set of config-group choices; plain values
    (method.r=8) are applied to a copy, as Hydra applies them."""
    import copy

    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from omegaconf import OmegaConf

    from .adapters import config_from_dict
    from .schema import check_config

    parser = OverridesParser.create()
    composed: dict[tuple[str, ...], Any] = {}
    seen: set[tuple[str, ...]] = set()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        for cell in cells:
            key = tuple(o for o in cell.overrides if not o.startswith(("train.lr=", "seed=")))
            if key in seen:
                continue
            seen.add(key)
            try:
                parsed = parser.parse_overrides(list(key))
                values = [o for o in parsed if o.type == OverrideType.CHANGE and o.package is None
                          and "." in o.key_or_group and not o.key_or_group.startswith("hydra.")]
                structural = tuple(o.input_line for o in parsed if o not in values)
                if structural not in composed:
                    composed[structural] = compose(config_name="config", overrides=list(structural))
                cfg = copy.deepcopy(composed[structural])
                for o in values:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
                container = OmegaConf.to_container(cfg, resolve=True)
                config_from_dict(container["method"])
                train = container["train"]
                if train["batch_size"] % train["micro_batch_size"]:
                    raise ValueError(f"train.batch_size={train['batch_size']} is not a multiple of "
                                     f"train.micro_batch_size={train['micro_batch_size']}")
                check_config(cfg)
            except Exception as exc:
                raise ValueError(
                    f"{where}: cell {cell.label!r} ({' '.join(cell.overrides)}) is not a valid run: "
                    f"{type(exc).__name__}: {exc}\nfix the spec's overrides (or --override) before launching"
                ) from None


def refresh(cell: Cell) -> Cell:
    """The cell's status from its metrics.json. A run that finished training but lacks a score the
    report reads (its evaluation failed or was cut short) is `unscored`: launched again, mora.train
    skips the training and scores it. A run recorded by other code, or found only under an older id
    scheme, is `stale`, whatever its status."""
    metrics_path = Path(cell.path) / "metrics.json"
    cell.status, cell.detail = "missing", ""
    if not metrics_path.is_file():
        if cell.legacy:
            cell.status, cell.detail = "stale", f"{OLD_SCHEME}: {cell.legacy} (python -m mora.runs migrate re-keys it)"
        return cell
    try:
        metrics = read_json(metrics_path)
    except (OSError, ValueError):
        return cell
    reason = stale_reason(metrics, cell.versions)
    if reason:
        cell.status, cell.detail = "stale", f"stale ({metrics.get('status')}): {reason}"
        return cell
    cell.status = metrics.get("status") or "missing"
    if metrics.get("error"):  # a failed run says why (e.g. the step its loss went NaN)
        cell.detail = f"{cell.status}: {metrics['error']}"
    if cell.status == STATUS_COMPLETED:
        missing = [m for m in cell.scores if lookup(metrics, m) is None]
        if missing:
            cell.status, cell.detail = "unscored", "trained, not scored: " + ", ".join(missing)
    return cell


# ---------------------------------------------------------------------------------------------
# Slurm helpers


def slurm_available() -> bool:
    return shutil.which("squeue") is not None and shutil.which("sbatch") is not None


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def queued_tasks() -> list[dict[str, str]]:
    """Array tasks of mora launches that Slurm still holds: [{job, task, state, comment, time}]."""
    if not slurm_available():
        return []
    proc = _run(["squeue", "-h", "-r", "-o", "%i|%T|%M|%k"], timeout=60)
    if proc.returncode:
        return []
    out = []
    for line in proc.stdout.splitlines():
        parts = line.split("|", 3)
        if len(parts) != 4 or not parts[3].startswith(COMMENT_PREFIX):
            continue
        job, state, elapsed, comment = parts
        task = job.split("_", 1)[1] if "_" in job else "0"
        out.append({"job": job, "task": task, "state": state, "time": elapsed, "comment": comment})
    return out


def mark_in_flight(cells: list[Cell]) -> None:
    """Cells that a still-queued or running task of an earlier launch will produce: status `queued`."""
    by_path = {c.path: c for c in cells}
    for task in queued_tasks():
        if task["state"] not in ACTIVE_STATES:
            continue
        launch_dir = Path(task["comment"][len(COMMENT_PREFIX):])
        try:
            earlier = json.loads((launch_dir / "cells.json").read_text())["cells"]
            path = earlier[int(task["task"])]["path"]
        except (OSError, ValueError, KeyError, IndexError):
            continue
        cell = by_path.get(path)
        if cell is not None and cell.status != STATUS_COMPLETED:
            cell.status = "queued"
            cell.detail = f"Slurm task {task['job']} {task['state']}"


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
            for t in tasks:
                self.job_ids.add(t["job"].split("_", 1)[0])
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


# ---------------------------------------------------------------------------------------------
# launching


def launch_dir_for(runs_dir: Path, spec_artifact: str, sections: list[str]) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = runs_dir / ".launch" / f"{spec_artifact}-{'+'.join(sections)}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def write_manifest(path: Path, cells: list[Cell], common: list[str]) -> None:
    """manifest.txt (task i = line i) and cells.json beside it."""
    lines = [" ".join(shlex.quote(o) for o in [*cell.overrides, *common]) for cell in cells]
    tmp = path / ".manifest.txt.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path / "manifest.txt")
    record = {"created": datetime.now().isoformat(timespec="seconds"), "common": common,
              "cells": [asdict(c) for c in cells]}
    (path / "cells.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


def hydra_string(value: str | Path) -> str:
    """A quoted Hydra override value: paths may hold characters Hydra's grammar reserves."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _train_multirun(manifest: Path, sweep_dir: Path, launcher: str, hydra_args: list[str]) -> list[str]:
    # validate=false: every cell was composed and checked by expand() already
    return [sys.executable, "-m", "mora.train", "-m", f"+launcher={launcher}", "hydra/sweeper=manifest",
            f"hydra.sweeper.manifest={hydra_string(manifest)}", "hydra.sweeper.validate=false",
            f"hydra.sweep.dir={hydra_string(sweep_dir)}", *hydra_args]


def run_local(cells: list[Cell], out: Path, jobs: int, hydra_args: list[str], common: list[str]) -> int:
    jobs = max(1, min(jobs, len(cells)))
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    procs = []
    for k in range(jobs):
        shard = cells[k::jobs]
        shard_dir = out / (f"local-{k}" if jobs > 1 else "local")
        shard_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(shard_dir, shard, common)
        cmd = _train_multirun(shard_dir / "manifest.txt", shard_dir, "local", hydra_args)
        if jobs == 1:
            print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
            procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env), None))
        else:
            log = shard_dir / "train.log"
            print(f"[local {k}] {len(shard)} runs, log {log}", flush=True)
            procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT), log))
    rc = 0
    for proc, log in procs:
        code = proc.wait()
        if code and log is not None:
            print(f"[local] {log} ended with status {code}; its tail:\n" + "".join(open(log).readlines()[-15:]), flush=True)
        rc = rc or code
    return rc


def run_submitit(cells: list[Cell], out: Path, launcher: str, hydra_args: list[str], common: list[str],
                 spec_artifact: str) -> tuple[int, set[str]]:
    comment = COMMENT_PREFIX + str(out)
    cmd = _train_multirun(out / "manifest.txt", out, launcher,
                          [f"hydra.launcher.comment={hydra_string(comment)}", f"hydra.launcher.name=mora-{spec_artifact}",
                           *hydra_args])
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    watcher = QueueWatcher(comment)
    watcher.start()
    try:
        rc = subprocess.run(cmd, cwd=ROOT).returncode
    finally:
        watcher.stop.set()
        watcher.join()
    job_ids = watcher.job_ids | {p.name.split("_", 1)[0] for p in (out / ".submitit").glob("*_*") if p.is_dir()}
    return rc, job_ids


def run_sbatch(cells: list[Cell], out: Path, sbatch_args: list[str], parallel: int | None, wait: bool,
               spec_artifact: str) -> tuple[int, set[str]]:
    comment = COMMENT_PREFIX + str(out)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    array = f"0-{len(cells) - 1}" + (f"%{parallel}" if parallel else "")
    cmd = ["sbatch", "--parsable", f"--array={array}", f"--job-name=mora-{spec_artifact}", f"--comment={comment}",
           f"--output={logs}/%A_%a.out", f"--chdir={ROOT}", *sbatch_args, str(SBATCH_TEMPLATE), str(out / "manifest.txt")]
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    proc = _run(cmd, cwd=ROOT, timeout=120)
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode or 1, set()
    job_id = proc.stdout.strip().split(";")[0]
    print(f"submitted array job {job_id}: {len(cells)} tasks (logs {logs}/{job_id}_<task>.out)", flush=True)
    (out / "job_id").write_text(job_id + "\n")
    if not wait:
        return 0, {job_id}
    watcher = QueueWatcher(comment)
    watcher.start()
    failures = 0
    try:
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
    finally:
        watcher.stop.set()
        watcher.join()
    return 0, {job_id}


# ---------------------------------------------------------------------------------------------
# the command


def to_launch(cells: list[Cell], rerun_stale: bool) -> list[Cell]:
    """The cells to run: everything not finished and not queued; stale ones only when asked."""
    skip = {STATUS_COMPLETED, "queued"} | (set() if rerun_stale else {"stale"})
    return [c for c in cells if c.status not in skip]


def print_plan(cells: list[Cell], todo: list[Cell]) -> None:
    skipped = [c for c in cells if c not in todo]
    for cell in skipped:
        why = "finished" if cell.status == STATUS_COMPLETED else cell.detail or cell.status
        print(f"skip    {cell.label}  [{why}]  {cell.path}")
    for cell in todo:
        why = cell.detail or {"missing": "not started", "running": "started earlier, not queued: resumes"}.get(cell.status, cell.status)
        print(f"launch  {cell.label}  [{why}]  {cell.path}")
    done = sum(c.status == STATUS_COMPLETED for c in cells)
    queued = sum(c.status == "queued" for c in cells)
    stale = sum(c.status == "stale" for c in cells)
    print(f"grid: {len(cells)} runs; {done} finished, {queued} queued on Slurm, {stale} stale: skipped {len(skipped)}; "
          f"launching {len(todo)}", flush=True)
    if any(c.status == "stale" for c in skipped):
        print("stale runs are listed, not launched: --rerun-stale trains them again (their records move to "
              "<experiment>/.stale/)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mora.launch", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("spec", help="artifact spec, e.g. experiments/table1.yaml")
    parser.add_argument("--section", action="append", required=True, help="section of the spec: paper, mini (repeatable)")
    parser.add_argument("--launcher", default="local",
                        help="local | sbatch | a conf/launcher/ config (slurm, slurm_cpu) (default: local)")
    parser.add_argument("--runs-dir", default=os.environ.get("MORA_RUNS_DIR", "runs"), help="the results store")
    parser.add_argument("--override", action="append", default=[],
                        help="extra Hydra override for every run (repeatable); give the report the same ones")
    parser.add_argument("--hydra", action="append", default=[],
                        help="extra override for the Hydra multirun, e.g. hydra.launcher.partition=gpu (repeatable)")
    parser.add_argument("--sbatch-arg", action="append", default=[],
                        help="extra sbatch option for --launcher sbatch, e.g. --sbatch-arg=--gpus-per-node=1 (repeatable)")
    parser.add_argument("--parallel", type=int, default=None, help="sbatch: array tasks running at once (%%P)")
    parser.add_argument("--jobs", type=int, default=1, help="local: processes running runs in parallel")
    parser.add_argument("--no-wait", action="store_true", help="sbatch: submit and return")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the manifest; launch nothing")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="also launch the stale runs (made by older code or under an older id scheme)")
    args = parser.parse_args(argv)

    runs_dir = Path(args.runs_dir).resolve()
    launchers = sorted(p.stem for p in (CONF_DIR / "launcher").glob("*.yaml"))
    if args.launcher not in {"sbatch", *launchers}:
        print(f"error: unknown launcher {args.launcher!r}; choose sbatch or one of {launchers} (conf/launcher/)", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec)
        cells = expand(args.spec, args.section, runs_dir, args.override)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mark_in_flight(cells)
    todo = to_launch(cells, args.rerun_stale)
    print_plan(cells, todo)
    if not todo:
        print("nothing to launch: submitted 0 jobs")
        return 0
    # every task writes to this store, wherever Slurm starts it (paths.* are not part of the run id)
    common = [f"paths.runs_dir={hydra_string(runs_dir)}"]
    if args.dry_run:
        print("manifest (dry run, not written):")
        for cell in todo:
            print(" ".join(shlex.quote(o) for o in [*cell.overrides, *common]))
        return 0
    if args.launcher != "local" and not slurm_available():
        print(f"error: --launcher {args.launcher} submits to Slurm, but sbatch/squeue are not on PATH "
              "(slurm/local_cluster.sh up starts a one-node cluster here)", file=sys.stderr)
        return 2
    out = launch_dir_for(runs_dir, spec.artifact, args.section)
    write_manifest(out, todo, common)
    print(f"manifest: {out / 'manifest.txt'} ({len(todo)} lines)")

    start = time.time()
    job_ids: set[str] = set()
    if args.launcher == "local":
        rc = run_local(todo, out, args.jobs, args.hydra, common)
    elif args.launcher == "sbatch":
        rc, job_ids = run_sbatch(todo, out, args.sbatch_arg, args.parallel, not args.no_wait, spec.artifact)
        if args.no_wait:
            print(f"not waiting: squeue -j {' '.join(job_ids)}; relaunch to pick up what is missing")
            return rc
    else:
        rc, job_ids = run_submitit(todo, out, args.launcher, args.hydra, common, spec.artifact)
    wait_until_gone(job_ids)
    for job_id in sorted(job_ids):
        for line in job_state_lines(job_id):
            print(line)
    for cell in todo:
        refresh(cell)
    failed = [c for c in todo if c.status != STATUS_COMPLETED]
    print(f"launched {len(todo)} runs in {time.time() - start:.0f} s: {len(todo) - len(failed)} finished, "
          f"{len(failed)} not" + (":" if failed else ""))
    for cell in failed:
        print(f"  {cell.label}  [{cell.status}]  {cell.path}")
    if failed:
        print("relaunch the same command to retry them (finished runs are skipped)")
    return 1 if failed or rc else 0


if __name__ == "__main__":
    sys.exit(main())

"""Launch a paper artifact's grid: expand it into runs, skip the finished ones, run the rest locally or on Slurm.

    python -m mora.launch experiments/table2.yaml --section mini --jobs 2             # here: a work queue of 2
    python -m mora.launch experiments/table1.yaml --section paper --launcher slurm    # one Slurm array job (submitit)
    python -m mora.launch experiments/table1.yaml --section paper --launcher sbatch   # the same, plain sbatch
    python -m mora.launch experiments/table1.yaml --section paper --dry-run           # the plan: runs, resources, cost
    python -m mora.launch experiments/table1.yaml --section paper --sweep             # the grid as Hydra multiruns

Every row x column group x grid point x seed of the spec's section (docs/artifacts.md) is one run, with
exactly the overrides `mora.report` composes for that cell, so the run lands where the report looks.
Finished runs are skipped and listed; failed, interrupted, half-done or trained-but-unscored ones are
launched again (they resume; mora.train then only scores what is missing); Slurm tasks of an earlier
launch still queued are left alone; stale runs (docs/results_store.md) are listed, and trained again
with `--rerun-stale`. The plan comes first (runs, resources per run, expected time and GPU-hours);
`--dry-run` prints it and the commands and writes nothing. Runs a launch starts get `artifact=<spec's>`,
their wandb group.

Launchers (docs/launching.md): `local`, a work queue here (--jobs N workers, longest expected run
first, a live progress line); `slurm` (or any conf/launcher/ config, e.g. slurm_cpu), one array job
through hydra-submitit-launcher; `sbatch`, slurm/array.sbatch over the manifest with the resources of
conf/launcher/<--resources>.yaml. Written under <runs-dir>/.launch/<artifact>-<section>-<time>/:
manifest.txt (task i = line i), cells.json, logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .artifacts import CONF_DIR, Composer, Run, Spec, Store, expand as expand_grid, load_spec, lookup, train_command
from .artifacts.grid import shared_overrides
from .artifacts.spec import Section, lr_candidates
from .launching.cost import Costs, Estimate
from .launching.queue import Job, run_queue
from .launching.slurm import (hydra_string, in_flight, job_state_lines, launcher_settings, resources_text, run_sbatch,
                              run_submitit, sbatch_command, slurm_available, train_multirun, wait_until_gone)
from .runs import STATUS_COMPLETED


@dataclass
class Cell:
    """One run of the grid, with its place in the spec and its status in the store."""

    label: str
    run: Run
    extra: dict[str, Any]
    headline: str  # the metric a finished run's console line shows
    scores: list[str] = field(default_factory=list)  # benchmark scores the report reads from this run
    status: str = "missing"  # completed | unscored | running | interrupted | failed | missing | stale | queued (on Slurm)
    detail: str = ""
    estimate: Estimate | None = None

    path = property(lambda self: self.run.path)
    run_id = property(lambda self: self.run.run_id)
    experiment = property(lambda self: self.run.composed.experiment)
    overrides = property(lambda self: self.run.overrides)
    versions = property(lambda self: self.run.composed.versions)

    def refresh(self, reload: bool = True) -> "Cell":
        self.status, self.detail = (self.run.load() if reload else self.run).status(self.scores)
        return self


def grid_cells(spec: Spec, sections: list[Section], runs_dir: str | Path, extra: list[str] = (),
               conf_dir: Path = CONF_DIR) -> list[Cell]:
    """Every run of the sections, each once (cells shared by two rows are one run), checked as mora.train
    would check it and with its status in the store. Raises ValueError, naming what to fix."""
    cells: dict[Path, Cell] = {}
    costs = Costs(runs_dir)
    with Composer(conf_dir) as composer:
        for section in sections:
            for slot in expand_grid(spec, section, Store(Path(runs_dir), composer), list(extra)):
                group, row = slot.group, slot.row
                columns = [c for c in section.columns if c.group == group.name]
                scores = [c.metric for c in columns if c.step is None and c.metric != "train_loss"]
                rule = spec.rule(section, group)
                for candidate, run in slot.runs():
                    composer.check(run.overrides, spec.where(section.name, row.label, group.name))
                    if run.path in cells:
                        cells[run.path].scores += [m for m in scores if m not in cells[run.path].scores]
                        continue
                    parts = [row.name] + ([group.title] if len(section.groups) > 1 else [])
                    parts += [candidate.describe()] + ([f"seed {run.seed}"] if len(section.seeds) > 1 else [])
                    cells[run.path] = Cell(" | ".join(parts), run, {"section": section.name, "row": row.label,
                                           "group": group.name, "seed": run.seed, "lr": candidate.lr, **candidate.sweep},
                                           rule.get("metric") or columns[0].metric, list(scores))
                    composed = run.composed
                    cells[run.path].estimate = costs.estimate(composed.experiment, composed.config, composed.identity)
    return [cell.refresh(reload=False) for cell in cells.values()]


def expand(spec_path: str | Path, sections: list[str], runs_dir: str | Path, extra: list[str] | None = None,
           conf_dir: Path = CONF_DIR) -> list[Cell]:
    spec = load_spec(spec_path, conf_dir)
    return grid_cells(spec, [spec.section(name) for name in sections], runs_dir, extra or [], conf_dir)


def to_launch(cells: list[Cell], rerun_stale: bool) -> list[Cell]:
    """The cells to run: everything not finished and not queued; stale ones only when asked."""
    skip = {STATUS_COMPLETED, "queued"} | (set() if rerun_stale else {"stale"})
    return [c for c in cells if c.status not in skip]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def print_plan(cells: list[Cell], todo: list[Cell], resources: str, gpus: int, limit_min: int | None = None) -> None:
    """The summary first (what runs, on what, for how long), then one line per run."""
    skipped = [c for c in cells if c not in todo]
    counts = {s: sum(c.status == s for c in cells) for s in (STATUS_COMPLETED, "queued", "stale")}
    print(f"grid: {len(cells)} runs; {counts[STATUS_COMPLETED]} finished, {counts['queued']} queued on Slurm, "
          f"{counts['stale']} stale: skipped {len(skipped)}; launching {len(todo)}")
    print(f"  each run: {resources}")
    known = [c for c in todo if c.estimate and c.estimate.seconds is not None]
    total = sum(c.estimate.seconds for c in known)
    if known:
        sources = " and ".join(sorted({c.estimate.source for c in known}))
        print(f"  expected: {_hours(total)} of run time for {len(known)} of {len(todo)} runs (from {sources})"
              + (f" = {total * gpus / 3600:.1f} GPU-hours" if gpus else ""))
    longer = [c for c in known if limit_min and c.estimate.seconds > limit_min * 60]
    if longer:
        print(f"  {len(longer)} runs are expected to outlast the time limit: each checkpoints before it, is requeued "
              "and resumes (conf/launcher: timeout_min, max_num_timeout)")
    if len(known) < len(todo):
        print(f"  no estimate for {len(todo) - len(known)} runs: no finished run like them in the store, and no step time "
              "and step count for them in bench/cost.yaml")
    for cell in skipped:
        why = "finished" if cell.status == STATUS_COMPLETED else cell.detail or cell.status
        print(f"skip    {cell.label}  [{why}]  {cell.path}")
    for cell in todo:
        why = cell.detail or {"missing": "not started", "running": "started earlier, not queued: resumes"}.get(cell.status, cell.status)
        guess = f"  (~{_hours(cell.estimate.seconds)})" if cell.estimate and cell.estimate.seconds else ""
        print(f"launch  {cell.label}  [{why}]  {cell.path}{guess}")
    if counts["stale"] and any(c.status == "stale" for c in skipped):
        print("stale runs are listed, not launched: --rerun-stale trains them again (their records move to "
              "<experiment>/.stale/)")
    sys.stdout.flush()


def launch_dir_for(runs_dir: Path, artifact: str, sections: list[str], create: bool = True) -> Path:
    base = runs_dir / ".launch" / f"{artifact}-{'+'.join(sections)}-{datetime.now():%Y%m%d-%H%M%S}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    if create:
        path.mkdir(parents=True)
    return path


def write_manifest(path: Path, cells: list[Cell], common: list[str]) -> None:
    """The launch directory: manifest.txt (task i = line i), cells.json beside it, logs/."""
    (path / "logs").mkdir(parents=True, exist_ok=True)
    lines = [" ".join(shlex.quote(o) for o in [*cell.overrides, *common]) for cell in cells]
    tmp = path / ".manifest.txt.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path / "manifest.txt")
    record = {"created": datetime.now().isoformat(timespec="seconds"), "common": common,
              "cells": [{"label": c.label, "experiment": c.experiment, "run_id": c.run_id, "path": str(c.path),
                         "overrides": c.overrides, "status": c.status, "extra": c.extra} for c in cells]}
    (path / "cells.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"manifest: {path / 'manifest.txt'} ({len(cells)} lines); logs: {path / 'logs'}/", flush=True)


def common_overrides(spec: Spec, runs_dir: Path) -> list[str]:
    """What every run of a launch gets: the store (wherever a task starts) and the artifact, its wandb
    group; neither is part of the run id."""
    store = str(runs_dir) if re.fullmatch(r"[\w./-]+", str(runs_dir)) else hydra_string(runs_dir)
    return [f"paths.runs_dir={store}", f"artifact={spec.artifact}"]


def threads_per_run(jobs: int) -> int:
    """The CPU threads each local run gets: OMP_NUM_THREADS where set, else this machine's cores shared by the workers."""
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // max(1, jobs))


def run_local(todo: list[Cell], out: Path, jobs: int, common: list[str]) -> int:
    """The work queue (mora/launching/queue.py), each run a `python -m mora.train` logging to logs/."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads_per_run(jobs))
    running: dict[int, subprocess.Popen] = {}

    def work(job: Job) -> tuple[str, str]:
        cell = job.item
        log = out / "logs" / f"{cell.experiment}-{cell.run_id}.log"
        with open(log, "w") as handle:  # its own session: a Ctrl-C reaches it once, from interrupt()
            proc = subprocess.Popen([sys.executable, "-m", "mora.train", *cell.overrides, *common, "train.progress_bar=false"],
                                    env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
            running[id(job)] = proc
            rc = proc.wait()
            running.pop(id(job), None)
        cell.refresh()
        if cell.status == STATUS_COMPLETED:
            value = lookup(cell.run.metrics, cell.headline)
            return "done", f"{cell.headline} {value:.4g}" if isinstance(value, (int, float)) else "finished"
        last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        why = cell.detail or f"exit {rc}: {last[0] if last else 'no output'}"
        return ("interrupted" if cell.status == "interrupted" else "failed"), f"{why}; log {log}"

    def interrupt(times: int) -> None:
        for proc in list(running.values()):
            proc.send_signal(signal.SIGINT)

    jobs_list = [Job(c, c.label, c.estimate.seconds if c.estimate else None, c.estimate.proxy if c.estimate else 1.0)
                 for c in todo]
    results = run_queue(jobs_list, jobs, work, interrupt)
    return 0 if len(results) == len(todo) and all(r.ok for r in results) else 1


def launch_here(spec: Spec, sections: list[str], todo: list[Cell], runs_dir: Path, jobs: int) -> int:
    """Write the launch's manifest and run it through the local work queue."""
    out, common = launch_dir_for(runs_dir, spec.artifact, sections), common_overrides(spec, runs_dir)
    write_manifest(out, todo, common)
    return run_local(todo, out, jobs, common)


def print_sweeps(spec: Spec, sections: list[str], extra: list[str], launcher: str) -> None:
    """Each row x column group as one Hydra multirun (the basic sweeper: learning rates x hparams x seeds)."""
    for section in map(spec.section, sections):
        for row in section.rows:
            for group in section.groups.values():
                lrs = [lr for lr in lr_candidates(spec, row, group) if lr is not None]
                sweeps = {**({"train.lr": lrs} if lrs else {}), **row.sweep, "seed": section.seeds}
                print(f"# {row.name} × {group.title}\n" + train_command(
                    ["-m", *([f"+launcher={launcher}"] if launcher != "local" else []), *shared_overrides(section, row, group),
                     *(f"{k}={','.join(str(v) for v in values)}" for k, values in sweeps.items()), *extra]))


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
                        help="extra override of the launcher config, e.g. hydra.launcher.partition=gpu (repeatable)")
    parser.add_argument("--resources", default="slurm",
                        help="sbatch: the conf/launcher/ config whose resources each task asks for (default: slurm)")
    parser.add_argument("--sbatch-arg", action="append", default=[],
                        help="extra sbatch option for --launcher sbatch, e.g. --sbatch-arg=--gpus-per-node=1 (repeatable)")
    parser.add_argument("--parallel", type=int, default=None, help="sbatch: array tasks running at once (%%P)")
    parser.add_argument("--jobs", type=int, default=1, help="local: runs at a time (workers of the queue)")
    parser.add_argument("--no-wait", action="store_true", help="sbatch: submit and return")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands; write and launch nothing")
    parser.add_argument("--sweep", action="store_true", help="print the grid as Hydra multirun commands (one per row x group)")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="also launch the stale runs (made by older code or under an older id scheme)")
    args = parser.parse_args(argv)

    runs_dir = Path(args.runs_dir).resolve()
    launchers = sorted(p.stem for p in (CONF_DIR / "launcher").glob("*.yaml"))
    if args.launcher not in {"sbatch", *launchers} or args.resources not in launchers:
        print(f"error: unknown launcher {args.launcher!r} (or --resources {args.resources!r}); choose sbatch or one of "
              f"{launchers} (conf/launcher/)", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec)
        if args.sweep:
            print_sweeps(spec, args.section, args.override, args.launcher)
            return 0
        cells = grid_cells(spec, [spec.section(name) for name in args.section], runs_dir, args.override)
        config = args.resources if args.launcher == "sbatch" else args.launcher
        settings = launcher_settings(config, args.hydra) if args.launcher != "local" else {}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, why in in_flight().items():
        cell = next((c for c in cells if str(c.path) == path and c.status != STATUS_COMPLETED), None)
        if cell:
            cell.status, cell.detail = "queued", why
    todo = to_launch(cells, args.rerun_stale)
    if args.launcher == "local":
        resources = f"this machine, {args.jobs} at a time, {threads_per_run(args.jobs)} CPU thread(s) each, no time limit"
        gpus = 0
    else:
        resources = resources_text(settings) + f" (conf/launcher/{config}.yaml)"
        gpus = int(settings.get("gpus_per_node") or 0) * int(settings.get("nodes") or 1)
    print_plan(cells, todo, resources, gpus, settings.get("timeout_min"))
    if not todo:
        print("nothing to launch: submitted 0 jobs")
        return 0
    if args.launcher != "local" and not slurm_available() and not args.dry_run:
        print(f"error: --launcher {args.launcher} submits to Slurm, but sbatch/squeue are not on PATH "
              "(slurm/local_cluster.sh up starts a one-node cluster here)", file=sys.stderr)
        return 2
    out, common = launch_dir_for(runs_dir, spec.artifact, args.section, create=False), common_overrides(spec, runs_dir)
    sbatch = sbatch_command(out, len(todo), settings, args.sbatch_arg, args.parallel, spec.artifact) if settings else []
    if args.dry_run:
        if args.launcher == "sbatch":
            print("sbatch line: " + " ".join(sbatch))
        elif args.launcher != "local":
            print("submit line: " + " ".join(train_multirun(out, args.launcher, args.hydra)))
        print(f"commands ({len(todo)}; dry run: nothing written, nothing launched):")
        for cell in todo:
            print(train_command([*cell.overrides, *common]))
        return 0

    start = time.time()
    job_ids: set[str] = set()
    if args.launcher == "local":
        rc = launch_here(spec, args.section, todo, runs_dir, args.jobs)
    else:
        write_manifest(out, todo, common)
        if args.launcher != "sbatch":
            rc, job_ids = run_submitit(out, args.launcher, args.hydra, spec.artifact)
        else:
            rc, job_ids = run_sbatch(sbatch, out, len(todo), not args.no_wait)
            if args.no_wait:
                print(f"not waiting: squeue -j {' '.join(job_ids)}; relaunch to pick up what is missing")
                return rc
    wait_until_gone(job_ids)
    for job_id in sorted(job_ids):
        for line in job_state_lines(job_id):
            print(line)
    failed = [c for c in todo if c.refresh().status != STATUS_COMPLETED]
    print(f"launched {len(todo)} runs in {time.time() - start:.0f} s: {len(todo) - len(failed)} finished, "
          f"{len(failed)} not" + (":" if failed else ""))
    for cell in failed:
        print(f"  {cell.label}  [{cell.status}]  {cell.path}")
    if failed:
        print("relaunch the same command to retry them (finished runs are skipped)")
    return 1 if failed or rc else 0


if __name__ == "__main__":
    sys.exit(main())

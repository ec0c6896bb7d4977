"""The results store: one directory per run, named by a hash of what the run computes.

`runs/<experiment>/<run_id>/` holds the resolved config, what its id hashed (`identity.json`),
checkpoints, `metrics.json` (every eval point with its step, the loss curve, the run's status, the
results versions and git commit of the code that made it) and the log. The id is the hash of the
validated, normalised run and of nothing about where or how fast it is computed (mora/identity.py,
docs/results_store.md), so asking again for the same run, on any machine, finds it.
Every write is atomic (temp file + rename): a crash never leaves a half-written metrics file. Files get
the mode a plain `open()` would give them under the process's umask (0644 under umask 022), so
teammates on a shared store can read them. Runs of
one grid write into their own directories, so array tasks running at once never share a file; a
process training a run holds its lock, so a second process asked for the same run refuses to start.

A run recorded by older code (a results version bumped since) or under an older id scheme is stale:
launch and report list it so; training it again first moves the old directory to
`<experiment>/.stale/`, and `python -m mora.runs migrate <runs_dir>` re-keys an old-scheme store.
Nothing is deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from .identity import ID_SCHEME, hash_identity, results_versions, run_id, run_identity

log = logging.getLogger("mora")

METRICS_NAME = "metrics.json"
CONFIG_NAME = "config.json"
IDENTITY_NAME = "identity.json"
LOCK_NAME = ".lock"
STALE_DIR = ".stale"
STATUS_RUNNING, STATUS_COMPLETED, STATUS_FAILED = "running", "completed", "failed"
OLD_SCHEME = "old id scheme: stale"


def umask_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process's umask."""
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def share_files(*paths: Path) -> None:
    """Give each file (and every file under each directory) of `paths` the mode of umask_mode().
    mkstemp, safetensors and the Trainer's checkpoints create files 0600 whatever the umask."""
    mode = umask_mode()
    for path in map(Path, paths):
        files = path.rglob("*") if path.is_dir() else [path]
        for file in files:
            if file.is_file() and not file.is_symlink():
                file.chmod(mode)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file renamed into place: a reader (another run, a crash) sees the old
    file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class RunBusyError(ValueError):
    """Another live process is training this run (a duplicate array task, a relaunch too early)."""


def stale_reason(metrics: dict[str, Any], versions: dict[str, int]) -> str | None:
    """Why a recorded run is not what the current code computes (`versions`: the run's current results
    versions); None when it is."""
    if metrics.get("id_scheme") != ID_SCHEME:
        return OLD_SCHEME
    recorded = metrics.get("results_versions")
    if not recorded:
        return "made before results versions were recorded"
    changed = [f"{k} {recorded.get(k, '-')} -> {v}" for k, v in sorted(versions.items()) if recorded.get(k) != v]
    return "made by older code: " + ", ".join(changed) if changed else None


@contextlib.contextmanager
def _locked(path: Path, label: str, what: str) -> Iterator[None]:
    """Hold the flock on `<path>/.lock`. The system drops it when the holder dies (even by SIGKILL), so a
    crashed run never stays locked. On a filesystem without flock this goes on unlocked, with a warning."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunBusyError(f"{label} is being trained by {holder}; {what}") from None
        except OSError as exc:
            log.warning("cannot lock %s (%s): a second process training this run would not be stopped", path, exc)
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield


class RunDir:
    """One run's directory in the store; creating the object writes nothing."""

    def __init__(self, runs_dir: str | Path, experiment: str, config: dict[str, Any]):
        self.config = config
        self.identity = run_identity(config)
        self.id = hash_identity(self.identity)
        self.versions = results_versions(config)
        self.path = Path(runs_dir) / experiment / self.id
        self.metrics_path = self.path / METRICS_NAME
        self.checkpoints = self.path / "checkpoints"

    def metrics(self) -> dict[str, Any] | None:
        return read_json(self.metrics_path) if self.metrics_path.is_file() else None

    @property
    def finished(self) -> bool:
        metrics = self.metrics()
        return bool(metrics) and metrics.get("status") == STATUS_COMPLETED

    def stale(self) -> str | None:
        """Why what is recorded here was made by other code (None: current, or nothing recorded)."""
        metrics = self.metrics()
        return stale_reason(metrics, self.versions) if metrics else None

    def write_config(self) -> None:
        write_json_atomic(self.path / CONFIG_NAME, self.config)
        write_json_atomic(self.path / IDENTITY_NAME, self.identity)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json_atomic(self.metrics_path, {**metrics, "run_id": self.id, "id_scheme": ID_SCHEME})

    def set_aside(self) -> Path | None:
        """Move a stale record to `<experiment>/.stale/<id>-<time>/` (under its lock, so never one being
        trained), leaving the run's place free for a fresh one; returns where it went."""
        with _locked(self.path, f"run {self.id} ({self.path})", "its stale record was left in place; this process started nothing"):
            reason = self.stale()
            if reason is None:
                return None
            target = _free_path(self.path.parent / STALE_DIR / f"{self.id}-{datetime.now():%Y%m%d-%H%M%S}")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.path.rename(target)
        log.warning("run %s was %s: moved %s to %s; training it afresh", self.id, reason, self.path, target)
        return target

    @contextlib.contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the run's lock while training it (`<run>/.lock`, see _locked)."""
        with _locked(self.path, f"run {self.id} ({self.path})", "this process started nothing. Wait for that one "
                     "to finish (then this run is skipped as finished) or stop it, then relaunch"):
            yield


def _free_path(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _run_dirs(experiment_dir: Path) -> list[Path]:
    """The run directories of one experiment (not .stale/ and other dot-directories)."""
    if not experiment_dir.is_dir():
        return []
    return sorted(p for p in experiment_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scheme(run: Path) -> int | None:
    try:
        return read_json(run / METRICS_NAME).get("id_scheme")
    except (OSError, ValueError):
        return None


def stored_config(run: Path) -> dict[str, Any]:
    """A run's config.json as the current code reads it: method options it has retired are dropped
    (RETIRED_OPTIONS in mora/adapters/config.py), so a run made before is still named."""
    from .adapters.config import RETIRED_OPTIONS

    config = read_json(run / CONFIG_NAME)
    method = config.get("method")
    if isinstance(method, dict):
        config["method"] = {k: v for k, v in method.items() if k not in RETIRED_OPTIONS}
    return config


def legacy_runs(runs_dir: str | Path, experiment: str) -> dict[str, Path]:
    """Runs of an experiment stored under an older id scheme, by the id the current scheme gives their
    config.json (runs whose id cannot be computed any more are left out)."""
    found: dict[str, Path] = {}
    for run in _run_dirs(Path(runs_dir) / experiment):
        if _scheme(run) == ID_SCHEME or not (run / METRICS_NAME).is_file() or not (run / CONFIG_NAME).is_file():
            continue
        try:
            new_id = run_id(stored_config(run))
        except Exception as exc:  # a config the current code rejects: not a run it can name
            log.debug("%s: no current id (%s: %s)", run, type(exc).__name__, exc)
            continue
        if new_id != run.name:
            found.setdefault(new_id, run)
    return found


def migrate(runs_dir: str | Path, dry_run: bool = False, assume_current: bool = False,
            say: Callable[[str], None] = print) -> dict[str, int]:
    """Re-key every run stored under an older id scheme: its id recomputed from its config.json, the
    directory renamed to it, metrics.json told (`migrated_from`). Never deletes or overwrites: a run
    whose id cannot be computed, whose new place is taken, or that is being trained stays where it is.
    The code that made an old run is unknown, so it stays stale until trained again, unless
    `assume_current` (the caller vouches that it was made by code that computes what this code does)."""
    counts = {"moved": 0, "left": 0, "current": 0}
    for experiment_dir in _run_dirs(Path(runs_dir)):
        for run in _run_dirs(experiment_dir):
            if _scheme(run) == ID_SCHEME:
                counts["current"] += 1
                continue
            if not (run / CONFIG_NAME).is_file():
                continue  # not a run directory
            try:
                config = stored_config(run)
                identity = run_identity(config)
                versions = results_versions(config)
            except Exception as exc:
                counts["left"] += 1
                say(f"left    {run}: cannot compute its id now ({type(exc).__name__}: {exc}); nothing changed")
                continue
            new_id = hash_identity(identity)
            target = experiment_dir / new_id
            if target == run:  # keyed by this scheme already (a run that stopped before its first metrics)
                counts["current"] += 1
                continue
            if target.exists():
                counts["left"] += 1
                say(f"left    {run}: {target} exists already (the same run, trained again?); nothing changed: "
                    "compare them and keep one yourself")
                continue
            note = "versions assumed current" if assume_current else "stale until trained again: the code that made it is unknown"
            try:
                if not dry_run:
                    with _locked(run, str(run), "left in place"):
                        run.rename(target)
                        _mark_migrated(target, identity, run.name, versions if assume_current else None)
            except RunBusyError as exc:
                counts["left"] += 1
                say(f"left    {run}: {exc}")
                continue
            counts["moved"] += 1
            say(f"{'would move' if dry_run else 'moved'}   {run} -> {target}  ({note})")
    say(f"{'dry run: ' if dry_run else ''}{counts['moved']} re-keyed, {counts['left']} left in place, "
        f"{counts['current']} already under id scheme {ID_SCHEME}")
    return counts


def _mark_migrated(run: Path, identity: dict[str, Any], old_id: str, versions: dict[str, int] | None) -> None:
    write_json_atomic(run / IDENTITY_NAME, identity)
    metrics_path = run / METRICS_NAME
    if not metrics_path.is_file():
        return
    metrics = read_json(metrics_path)
    metrics.update(run_id=run.name, id_scheme=ID_SCHEME,
                   migrated_from={"run_id": old_id, "id_scheme": metrics.get("id_scheme", 1),
                                  "at": datetime.now().isoformat(timespec="seconds")})
    if versions is not None:
        metrics["results_versions"] = versions
    write_json_atomic(metrics_path, metrics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mora.runs", description="Maintain the results store.")
    commands = parser.add_subparsers(dest="command", required=True)
    move = commands.add_parser("migrate", help="re-key the runs stored under an older id scheme (nothing is deleted)")
    move.add_argument("runs_dir", help="the results store, e.g. runs")
    move.add_argument("--dry-run", action="store_true", help="print what would move; move nothing")
    move.add_argument("--assume-current", action="store_true",
                      help="record the current results versions on the runs moved (only if the code that made "
                           "them computes what this code does); else they stay stale until trained again")
    args = parser.parse_args(argv)
    if not Path(args.runs_dir).is_dir():
        print(f"error: {args.runs_dir} is not a directory (the results store, e.g. runs)", file=sys.stderr)
        return 2
    migrate(args.runs_dir, args.dry_run, args.assume_current)
    return 0


if __name__ == "__main__":
    sys.exit(main())

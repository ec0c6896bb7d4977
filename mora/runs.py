"""The results store: one directory per run, named by a hash of what the run computes.

`runs/<experiment>/<run_id>/` holds the resolved config, checkpoints, `metrics.json` (every eval point
with its step, the loss curve, and the run's status) and the log. A run id ignores keys that do not
change results (paths, logging, checkpoint cadence), so asking again for the same run finds it.
Every write is atomic (temp file + rename): a crash never leaves a half-written metrics file. Files get
the mode a plain `open()` would give them under the process's umask (0644 under umask 022), so
teammates on a shared store can read them. Runs of
one grid write into their own directories, so array tasks running at once never share a file; a
process training a run holds its lock, so a second process asked for the same run refuses to start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("mora")

NON_SEMANTIC_KEYS = (
    "paths",
    "logger",
    "launcher",
    "artifact",
    "benchmark",
    "threads",
    "train.save_every",
    "train.save_total_limit",
    "train.log_every",
    "train.progress_bar",
    "train.keep_checkpoints",
    "eval.metric.batch_size",
)
METRICS_NAME = "metrics.json"
CONFIG_NAME = "config.json"
LOCK_NAME = ".lock"
STATUS_RUNNING, STATUS_COMPLETED, STATUS_FAILED = "running", "completed", "failed"


def _drop(config: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in config:
        return
    if rest:
        if isinstance(config[head], dict):
            _drop(config[head], rest)
    else:
        del config[head]


def semantic_config(config: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(config))
    for key in NON_SEMANTIC_KEYS:
        _drop(out, key)
    return out


def run_id(config: dict[str, Any]) -> str:
    canonical = json.dumps(semantic_config(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)
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


class RunDir:
    """One run's directory in the store; creating the object writes nothing."""

    def __init__(self, runs_dir: str | Path, experiment: str, config: dict[str, Any]):
        self.config = config
        self.id = run_id(config)
        self.path = Path(runs_dir) / experiment / self.id
        self.metrics_path = self.path / METRICS_NAME
        self.checkpoints = self.path / "checkpoints"

    def metrics(self) -> dict[str, Any] | None:
        return read_json(self.metrics_path) if self.metrics_path.is_file() else None

    @property
    def finished(self) -> bool:
        metrics = self.metrics()
        return bool(metrics) and metrics.get("status") == STATUS_COMPLETED

    def write_config(self) -> None:
        write_json_atomic(self.path / CONFIG_NAME, self.config)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json_atomic(self.metrics_path, {"run_id": self.id, **metrics})

    @contextlib.contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the run's lock while training it. The lock is an flock on `<run>/.lock`: the system drops
        it when the holder dies (even by SIGKILL), so a crashed run never stays locked. On a filesystem
        without flock the run goes on unlocked, with a warning."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_NAME, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunBusyError(
                    f"run {self.id} ({self.path}) is being trained by {holder}; this process started nothing. "
                    "Wait for that one to finish (then this run is skipped as finished) or stop it, then relaunch"
                ) from None
            except OSError as exc:
                log.warning("cannot lock %s (%s): a second process training this run would not be stopped", self.path, exc)
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            yield

"""The `manifest` sweeper: one job per line of a file, handed to whichever Hydra launcher is configured.

A Hydra multirun normally sweeps a Cartesian product (`train.lr=1e-4,2e-4 seed=0,1`). A paper artifact's
grid is not one product: every row has its own method, rank and learning-rate grid. `mora.launch`
expands the grid into one override line per cell and this sweeper launches exactly those lines, so a
whole table goes to Slurm as one array job (hydra-submitit-launcher) or runs locally (basic launcher).

Manifest format: UTF-8 text, one job per line, each line Hydra overrides as a shell would split them
(`shlex`); task i of an array job is line i (0-based). No comments, no blank lines in between.
Overrides given on the command line apply to every job and come before the line's own. A manifest lies
in the results store, so its lines are values only (mora.builders.check_overrides): a line that sets a
foreign `_target_` or touches `hydra.*` refuses the whole manifest before any job starts.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from mora.builders import check_overrides

log = logging.getLogger(__name__)


@dataclass
class ManifestSweeperConf:
    _target_: str = "hydra_plugins.mora_manifest_sweeper.manifest_sweeper.ManifestSweeper"
    manifest: Optional[str] = None  # the file: one line of overrides per job
    max_batch_size: Optional[int] = None  # jobs per launcher call (null: all at once = one array job)
    validate: bool = True  # compose every job's config before launching any
    params: Optional[Dict[str, str]] = None  # the basic sweeper's; must stay empty here


ConfigStore.instance().store(group="hydra/sweeper", name="manifest", node=ManifestSweeperConf, provider="mora")


def read_manifest(path: str | Path) -> List[List[str]]:
    """The jobs of a manifest: one list of overrides per line, each checked to hold values only."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {path} does not exist (python -m mora.launch writes one)")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    jobs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"{path}:{number}: blank line inside the manifest (line i is array task i-1)")
        try:
            jobs.append(shlex.split(line))
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: cannot split {line!r}: {exc}") from None
        check_overrides(jobs[-1], f"{path}:{number}")
    if not jobs:
        raise ValueError(f"manifest {path} has no jobs")
    return jobs


class ManifestSweeper(Sweeper):
    def __init__(self, manifest: Optional[str] = None, max_batch_size: Optional[int] = None, validate: bool = True,
                 params: Optional[Dict[str, str]] = None) -> None:
        self.manifest = manifest
        self.max_batch_size = max_batch_size
        self.validate = validate
        if params:
            raise ValueError(
                f"hydra/sweeper=manifest takes its jobs from the manifest, not from hydra.sweeper.params ({dict(params)}); "
                "drop them (value lists are the basic sweeper's: `python -m mora.launch SPEC --section S --sweep` prints those)"
            )
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        if not self.manifest:
            raise ValueError("hydra/sweeper=manifest needs hydra.sweeper.manifest=FILE (one line of overrides per job)")
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        for override in parser.parse_overrides(list(arguments)):
            if override.is_sweep_override():
                raise ValueError(
                    f"{override.input_line!r} is a sweep; with hydra/sweeper=manifest every job is a line of the manifest"
                )
        jobs = [list(arguments) + line for line in read_manifest(self.manifest)]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        size = self.max_batch_size or len(jobs)
        log.info("manifest %s: %d jobs, launched %d at a time", self.manifest, len(jobs), size)
        returns: List[Sequence[JobReturn]] = []
        failed: List[str] = []
        for start in range(0, len(jobs), size):
            batch = jobs[start : start + size]
            if self.validate:
                tic = time.perf_counter()
                self.validate_batch_is_legal(batch)
                log.debug("validated %d job configs in %.2fs", len(batch), time.perf_counter() - tic)
            results = self.launcher.launch(batch, initial_job_idx=start)
            for index, result in enumerate(results, start):
                if result.status == JobStatus.FAILED:
                    error = result._return_value
                    failed.append(f"#{index} ({' '.join(jobs[index][len(arguments):])}): {type(error).__name__}: {error}")
            returns.append(results)
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(jobs)} jobs failed:\n  " + "\n  ".join(failed))
        return returns

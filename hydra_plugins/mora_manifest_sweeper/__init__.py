"""Hydra sweeper `manifest` (mora): a multirun whose jobs are the lines of a manifest file.

    python -m mora.train -m hydra/sweeper=manifest hydra.sweeper.manifest=runs/.launch/x/manifest.txt

`python -m mora.launch` writes the manifest (one line of Hydra overrides per cell of an artifact's
grid, cells already finished left out) and starts this multirun with the launcher of its choice
(basic: in this process, one job after another; submitit_slurm: one Slurm array job).
"""

from .manifest_sweeper import ManifestSweeper, ManifestSweeperConf, read_manifest

__all__ = ["ManifestSweeper", "ManifestSweeperConf", "read_manifest"]

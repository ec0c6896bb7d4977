"""Grid expansion: a section is rows x column groups x learning rates x hparams values x seeds, and every
user (report, launcher, demo, Hydra sweep printer) walks it through `expand`, so they name the same runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator

from .spec import Group, Row, Section, Spec, lr_candidates
from .store import Run, Store


@dataclass
class Candidate:
    """One point of a row's grid on one column group: its runs over the section's seeds."""

    lr: Any
    sweep: dict[str, Any]
    runs: list[Run]

    def describe(self) -> str:
        parts = ([f"lr={self.lr:g}"] if isinstance(self.lr, (int, float)) else []) + [f"{k}={v}" for k, v in self.sweep.items()]
        return ", ".join(parts) or "experiment defaults"

    def values(self) -> list[str]:
        """The overrides that set this grid point."""
        return [*(f"{k}={v}" for k, v in self.sweep.items()), *([f"train.lr={self.lr}"] if self.lr is not None else [])]


@dataclass
class Slot:
    """A row x column group of a section: the candidates its selection rule picks from."""

    section: Section
    row: Row
    group: Group
    candidates: list[Candidate]

    def runs(self) -> Iterator[tuple[Candidate, Run]]:
        for candidate in self.candidates:
            for run in candidate.runs:
                yield candidate, run


def shared_overrides(section: Section, row: Row, group: Group) -> list[str]:
    """The overrides every run of a row x group shares (before its grid point, seed and extras)."""
    return [f"experiment={group.experiment}", *section.overrides, *group.overrides, *row.overrides]


def expand(spec: Spec, section: Section, store: Store, extra: list[str] = ()) -> list[Slot]:
    """Every slot of the section in row order then group order, each run composed and looked up."""
    slots = []
    for row in section.rows:
        for group in section.groups.values():
            slot = Slot(section, row, group, [])
            where = spec.where(section.name, row.label, group.name)
            keys = list(row.sweep)
            for lr in lr_candidates(spec, row, group):
                for values in itertools.product(*(row.sweep[k] for k in keys)):
                    candidate = Candidate(lr, dict(zip(keys, values)), [])
                    for seed in section.seeds:
                        overrides = [*shared_overrides(section, row, group), *candidate.values(), f"seed={seed}", *extra]
                        candidate.runs.append(store.run(overrides, seed, where))
                    slot.candidates.append(candidate)
            slots.append(slot)
    return slots

"""The selection rule and the built table: which grid point fills each row's cells, with what numbers.

For each row and column group, every point of the row's grid (learning rates x hparams values) is a
candidate; its score is the mean over its finished seeds of `select.metric` (default: the mean of the
group's column metrics the run has); the best by `select.mode` (max | min; ties: the better mean of the
group's columns, then the earlier grid point) fills the row's cells of that group with the mean and
sample standard deviation over its seeds. A cell with no finished run gets a footnote listing the runs
that would fill it; a number from a stale run is marked with the run and the reason.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .grid import Candidate, Slot
from .spec import Group, Section, Spec, paper_reference
from .store import lookup, scoring_of


@dataclass
class Cell:
    value: float | None
    std: float | None
    n: int
    paper: float | None
    candidate: Candidate | None
    status: str  # ok | missing | partial (some seeds or grid points missing)
    note: int | None = None
    stale: bool = False  # a run it averages was made by older code or is stored under an old id
    scoring: str = ""  # the benchmark scoring modes behind the value ("paper", "paper, standard")


@dataclass
class Table:
    spec: Spec
    section: Section
    cells: list[list[Cell]]
    choices: list[dict[str, Slot]]  # per row: group -> its slot
    chosen: list[dict[str, Candidate | None]]
    notes: list[str]
    stale: list[str] = field(default_factory=list)  # "<run dir>: why" for every stale run a cell shows

    @property
    def has_paper(self) -> bool:
        """Whether any cell has a paper number (figures have none: then cells show ours only)."""
        return any(cell.paper is not None for row in self.cells for cell in row)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def choose(spec: Spec, section: Section, group: Group, candidates: list[Candidate]) -> Candidate | None:
    """The best candidate by the selection rule (module docstring); None when none has a finished run
    with the metric."""
    rule = spec.rule(section, group)
    mode = rule.get("mode", "max")
    if mode not in ("max", "min"):
        raise ValueError(f"{spec.path}: select.mode must be max or min, got {mode!r}")
    metric, step = rule.get("metric"), rule.get("step")
    columns = [c for c in section.columns if c.group == group.name]

    def score(candidate: Candidate, by_metric: bool) -> float | None:
        per_seed = []
        for run in filter(lambda r: r.completed, candidate.runs):
            if by_metric:
                value = lookup(run.metrics, metric, step)
            else:  # the mean of the group's column metrics the run has
                value = _mean([float(v) for c in columns for v in [lookup(run.metrics, c.metric, c.step)] if v is not None])
            if value is not None and math.isfinite(float(value)):
                per_seed.append(float(value))
        return _mean(per_seed)

    sign = 1.0 if mode == "max" else -1.0
    scored = []
    for i, candidate in enumerate(candidates):
        main = score(candidate, bool(metric))
        if main is not None:
            tie = score(candidate, False) if metric else main
            scored.append((sign * main, sign * (tie if tie is not None else main), -i, candidate))
    return max(scored, key=lambda t: t[:3])[3] if scored else None


def build_table(spec: Spec, section: Section, slots: list[Slot], runs_dir: Path) -> Table:
    """The table of a section from its expanded slots (grid.expand, or runs found another way)."""
    by_row: dict[int, dict[str, Slot]] = {}
    for slot in slots:
        by_row.setdefault(id(slot.row), {})[slot.group.name] = slot
    table = Table(spec, section, [], [], [], [])
    note_of: dict[tuple, int] = {}
    for ri, row in enumerate(section.rows):
        row_slots = by_row[id(row)]
        chosen = {g: choose(spec, section, s.group, s.candidates) for g, s in row_slots.items()}
        table.choices.append(row_slots)
        table.chosen.append(chosen)
        cells = []
        for ci, column in enumerate(section.columns):
            slot, candidate = row_slots[column.group], chosen[column.group]
            paper = paper_reference(spec, section, ri, ci)
            values, stale, scoring = [], False, set()
            for run in (r for r in (candidate.runs if candidate else []) if r.completed):
                value = lookup(run.metrics, column.metric, column.step)
                if value is None:
                    continue
                values.append(float(value))
                scoring.add(scoring_of(run.metrics, column.metric))
                if run.stale:
                    stale = True
                    line = f"{run.legacy or run.path}: {run.stale}"
                    table.stale += [line] if line not in table.stale else []
            if not values:
                if (ri, column.group) not in note_of:
                    table.notes.append(_missing_note(row.name, slot, runs_dir))
                    note_of[(ri, column.group)] = len(table.notes)
                cells.append(Cell(None, None, 0, paper, candidate, "missing", note_of[(ri, column.group)]))
                continue
            complete = all(r.completed for _, r in slot.runs())
            cells.append(Cell(_mean(values), statistics.stdev(values) if len(values) > 1 else None, len(values), paper,
                              candidate, "ok" if complete else "partial", stale=stale,
                              scoring=", ".join(sorted(s for s in scoring if s))))
        table.cells.append(cells)
    return table


def shell(token: str) -> str:
    """A token as a shell reads it back: quoted only when it must be."""
    return token if re.fullmatch(r"[\w.=/,:+\-\[\]]+", token) else "'" + token.replace("'", "'\\''") + "'"


def train_command(overrides: list[str]) -> str:
    return "python -m mora.train " + " ".join(shell(o) for o in overrides)


def _missing_note(row_name: str, slot: Slot, runs_dir: Path) -> str:
    group = slot.group
    lines = [f"{row_name} × {group.title} ({group.experiment}): no finished run with the metric; the grid's runs:"]
    for candidate, run in slot.runs():
        metrics = run.metrics or {}
        status = metrics.get("status", "not started") + (f": {metrics['error']}" if metrics.get("error") else "")
        status += f"; stale: {run.stale}" if run.stale else ""
        lines.append(f"    {runs_dir / group.experiment / run.run_id}  [{status}]  {candidate.describe()}, seed {run.seed}")
    first = next(slot.runs(), (None, None))[1]
    lines.append("    e.g. " + train_command(first.overrides if first else []))
    return "\n".join(lines)

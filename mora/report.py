"""Render a paper artifact from the results store: the table (Markdown, CSV, LaTeX, a wandb.Table) with
our numbers beside the paper's, and its figure (PNG) when it is one.

    python -m mora.report experiments/table1.yaml                  # every section of the spec
    python -m mora.report experiments/table2.yaml --section mini   # the offline miniature only

The report reads only `experiments/*.yaml` and the results store; it never trains or evaluates. For
each cell it works out which runs should exist: the spec's overrides are composed with Hydra exactly as
`mora.train` would compose them, which gives the run id, hence `runs/<experiment>/<run_id>/`. A cell
with no finished run is marked and its footnote lists the run ids (and commands) that would fill it. A
number from a stale run (recorded by older code, or stored under an older id scheme and found through
its config.json: docs/results_store.md) is shown marked `†`, with the run and the reason under the table.

Spec format (one YAML per artifact; see experiments/table1.yaml for a full one):

    artifact: table1            # the wandb group, and the output file names
    kind: table                 # table | curves (loss curves, PNG) | spectrum (Figure 5 bars, PNG)
    title: ...
    metric: char_acc            # default metric of the columns
    format: ".1f"               # default number format
    select: {metric: ..., mode: max}   # selection rule (below); `selection:` is its prose
    grids: {name: {group: [lr, ...]}}  # named learning-rate grids rows may refer to
    <section>:                  # `paper` holds the paper-scale grid and the paper's numbers; others
      experiment: uuid_mini     #   (e.g. `mini`) are offline miniatures, aligned with `paper` by order
      seeds: [0]
      overrides: [...]          # Hydra overrides for every cell of the section
      select: {...}             # optional: this section's own selection rule
      groups:                   # column groups: one experiment each (default: one group `main`)
        tulu: {experiment: tulu_mmlu, overrides: [benchmark=mmlu], lr_grid: [...], select: {...}}
      columns: [300, 500]       # ints: the metric at those eval steps; or {key, label, group, metric, step}
      rows:
        - {label: LoRA r=8, rank: 8, overrides: [method=lora], lr_grid: [1e-4, 2e-4] | {tulu: [...]} | grid name,
           hparams: {method.lr_ratio: [2, 4]}, paper: [50.2, 51.5], paper_row: <label or index in paper>}
          # hparams: other hyperparameters swept together with the learning rate; `lr` (a single value)
          # is what `make demo` runs; other keys (e.g. table2's `sweep` record) are ignored here

Selection rule: for each row and column group, every point of the row's grid (learning rates x hparams
values) is a candidate; a candidate's score is the mean over its finished seeds of `select.metric`
(default: the mean of the group's column metrics the run has); the best by `select.mode` (max | min;
ties: the better mean of the group's columns, then the earlier grid point) fills the row's cells of
that group with the mean and sample standard deviation over its seeds.

Metrics are looked up in each run's metrics.json: `step` given -> that eval step; `train_loss` -> the
last logged loss (curves: the whole curve); `spectrum/<q|k|...>` -> the spectrum summary; otherwise
`scores.<metric>` (mora.evaluate's headline numbers), then `final.<metric>` (the last in-training eval).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .builders import check_overrides, check_targets
from .identity import hash_identity, results_versions, run_identity
from .runs import OLD_SCHEME, STATUS_COMPLETED, legacy_runs, read_json, stale_reason

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
KINDS = ("table", "curves", "spectrum")
MISSING = "–"


# ---------------------------------------------------------------------------------------------
# the spec


@dataclass
class Group:
    name: str
    experiment: str
    overrides: list[str] = field(default_factory=list)
    lr_grid: list | None = None
    select: dict | None = None
    label: str | None = None


@dataclass
class Column:
    key: str
    label: str
    group: str
    metric: str
    step: int | None = None
    format: str = ".1f"


@dataclass
class Row:
    label: str
    overrides: list[str]
    lr_grid: Any = None
    lr: Any = None
    sweep: dict[str, list] = field(default_factory=dict)
    paper: list | None = None
    paper_row: str | None = None
    rank: Any = None


@dataclass
class Section:
    name: str
    seeds: list[int]
    overrides: list[str]
    groups: dict[str, Group]
    columns: list[Column]
    rows: list[Row]
    select: dict | None = None


@dataclass
class Spec:
    path: Path
    artifact: str
    kind: str
    title: str
    selection: str
    select: dict
    grids: dict
    sections: dict[str, Section]


def _where(path: Path, *parts: str) -> str:
    return f"{path}: " + " / ".join(p for p in parts if p)


def _list(value: Any, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list, got {value!r}")
    return value


def available_experiments(conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / "experiment").glob("*.yaml"))


def load_spec(path: str | Path, conf_dir: Path = CONF_DIR) -> Spec:
    """Parse and check an artifact spec; every problem is a ValueError that names what to fix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"artifact spec {path} does not exist (specs live in experiments/, e.g. experiments/table1.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or "artifact" not in raw:
        raise ValueError(f"{path}: an artifact spec is a mapping with at least `artifact:` and one section (e.g. `paper:`)")
    kind = raw.get("kind", "table")
    if kind not in KINDS:
        raise ValueError(f"{path}: kind {kind!r} is not one of {list(KINDS)}")
    top_metric, top_format = raw.get("metric"), raw.get("format", ".1f")
    select = dict(raw.get("select") or {})
    grids = dict(raw.get("grids") or {})
    known = set(available_experiments(conf_dir))
    reserved = {"artifact", "kind", "title", "metric", "format", "select", "selection", "grids", "notes"}
    sections = {}
    for name, body in raw.items():
        if name in reserved:
            continue
        if not isinstance(body, dict) or "rows" not in body:
            raise ValueError(f"{_where(path, name)}: a section needs `rows:` (unknown top-level key {name!r}?)")
        sections[name] = _section(path, name, body, top_metric, top_format, known, grids)
    if not sections:
        raise ValueError(f"{path}: no section (e.g. `paper:` or `mini:`) with rows")
    spec = Spec(path, str(raw["artifact"]), kind, str(raw.get("title", raw["artifact"])), str(raw.get("selection", "")),
                select, grids, sections)
    if "paper" in sections:
        _check_paper_numbers(spec)
    return spec


def _section(path: Path, name: str, body: dict, top_metric, top_format, known: set[str], grids: dict) -> Section:
    metric, fmt = body.get("metric", top_metric), body.get("format", top_format)
    raw_groups = body.get("groups") or {"main": {"experiment": body.get("experiment")}}
    groups = {}
    for gname, g in raw_groups.items():
        g = dict(g or {})
        experiment = g.get("experiment", body.get("experiment"))
        if not experiment:
            raise ValueError(f"{_where(path, name, f'group {gname}')}: no experiment (set `experiment:` on the group or the section)")
        if experiment not in known:
            raise ValueError(
                f"{_where(path, name, f'group {gname}')}: unknown experiment {experiment!r}; "
                f"conf/experiment/ has {sorted(known)} (add conf/experiment/{experiment}.yaml or fix the name)"
            )
        groups[gname] = Group(gname, experiment, [str(o) for o in _list(g.get("overrides"), "group overrides")],
                              g.get("lr_grid"), g.get("select"), g.get("label"))
    default_group = next(iter(groups))
    columns = []
    for i, c in enumerate(_list(body.get("columns"), f"{path}: {name}.columns")):
        if isinstance(c, int):
            c = {"step": c}
        if not isinstance(c, dict):
            raise ValueError(f"{_where(path, name, f'column {i}')}: a column is an eval step (int) or a mapping, got {c!r}")
        group = c.get("group", default_group)
        if group not in groups:
            raise ValueError(f"{_where(path, name, f'column {i}')}: group {group!r} is not one of {sorted(groups)}")
        col_metric = c.get("metric", metric)
        if not col_metric:
            raise ValueError(f"{_where(path, name, f'column {i}')}: no metric (set `metric:` on the column, section or spec)")
        step = c.get("step")
        key = str(c.get("key", step if step is not None else col_metric))
        columns.append(Column(key, str(c.get("label", key)), group, str(col_metric), step, str(c.get("format", fmt))))
    if not columns:
        raise ValueError(f"{_where(path, name)}: no columns")
    rows = []
    for i, r in enumerate(_list(body.get("rows"), f"{path}: {name}.rows")):
        if not isinstance(r, dict) or "label" not in r:
            raise ValueError(f"{_where(path, name, f'row {i}')}: a row is a mapping with at least `label:`")
        grid = r.get("lr_grid")
        if isinstance(grid, str) and grid not in grids:
            raise ValueError(f"{_where(path, name, r['label'])}: lr_grid {grid!r} is not in `grids:` ({sorted(grids)})")
        sweep = dict(r.get("hparams") or {})
        for key, values in sweep.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{_where(path, name, r['label'])}: hparams {key} must be a non-empty list of values")
        rows.append(Row(str(r["label"]), [str(o) for o in _list(r.get("overrides"), "row overrides")], grid, r.get("lr"),
                        sweep, r.get("paper"), r.get("paper_row"), r.get("rank")))
    return Section(name, [int(s) for s in body.get("seeds", [0])], [str(o) for o in _list(body.get("overrides"), "overrides")],
                   groups, columns, rows, body.get("select"))


def _check_paper_numbers(spec: Spec) -> None:
    paper = spec.sections["paper"]
    for row in paper.rows:
        if row.paper is not None and len(row.paper) != len(paper.columns):
            raise ValueError(
                f"{_where(spec.path, 'paper', row.label)}: {len(row.paper)} paper numbers for {len(paper.columns)} columns"
            )


def lr_candidates(spec: Spec, row: Row, group: Group) -> list:
    """The learning rates a row sweeps on a group ([None]: the experiment's own lr)."""
    grid = row.lr_grid
    if isinstance(grid, str):
        grid = spec.grids[grid]
    if isinstance(grid, dict):
        grid = grid.get(group.name)
    if grid is None:
        grid = group.lr_grid
    if grid is None and row.lr is not None:
        grid = [row.lr]
    return [_number(lr) for lr in grid] if grid else [None]


def _number(value: Any) -> Any:
    """YAML reads 3e-4 as a string (no dot): learning rates become floats."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def paper_reference(spec: Spec, section: Section, row_index: int, column_index: int) -> float | None:
    """The paper's number for a cell: the `paper` section's row (same index, or `paper_row` by label)
    and column (same index)."""
    paper = spec.sections.get("paper")
    if paper is None:
        return None
    row = section.rows[row_index]
    if section is paper:
        ref = row
    elif isinstance(row.paper_row, int):
        ref = paper.rows[row.paper_row] if 0 <= row.paper_row < len(paper.rows) else None
        if ref is None:
            raise ValueError(f"{_where(spec.path, section.name, row.label)}: paper_row {row.paper_row} is out of range")
    elif row.paper_row is not None:
        ref = next((r for r in paper.rows if r.label == row.paper_row), None)
        if ref is None:
            raise ValueError(f"{_where(spec.path, section.name, row.label)}: paper_row {row.paper_row!r} is not a paper row label")
    else:
        ref = paper.rows[row_index] if row_index < len(paper.rows) else None
    if ref is None or ref.paper is None or column_index >= len(ref.paper):
        return None
    value = ref.paper[column_index]
    return None if value is None else float(value)


# ---------------------------------------------------------------------------------------------
# runs the cells need


@dataclass
class Candidate:
    lr: Any
    sweep: dict[str, Any]
    runs: list[dict]  # {seed, run_id, path, overrides, metrics | None, stale (why) | None, legacy (path) | None, versions}

    def describe(self) -> str:
        parts = ([f"lr={self.lr:g}"] if isinstance(self.lr, (int, float)) else []) + [f"{k}={v}" for k, v in self.sweep.items()]
        return ", ".join(parts) or "experiment defaults"


class Composer:
    """Hydra compose, fast enough for a 13 x 4 x grid table: configs are composed once per set of
    config-group choices (experiment=, method=, ...), and plain value overrides (train.lr=, seed=,
    method.r=) are applied to a copy the way Hydra applies them, so the run id is the one `mora.train`
    computes for the same overrides. Overrides are values only: one that names a foreign builder (or
    touches hydra.*) is refused, and so is a composed config that would build anything unregistered."""

    def __init__(self, conf_dir: Path = CONF_DIR):
        self.conf_dir = conf_dir
        self.groups = {p.name for p in conf_dir.iterdir() if p.is_dir()}
        self.composed: dict[tuple, Any] = {}
        self.cache: dict[tuple, tuple[str, str, dict[str, int]]] = {}
        self.legacy: dict[Path, dict[str, Path]] = {}
        self._ctx = None

    def __enter__(self):
        from hydra import initialize_config_dir

        self._ctx = initialize_config_dir(config_dir=str(self.conf_dir), version_base="1.3")
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    def _is_value(self, override) -> bool:
        from hydra.core.override_parser.types import OverrideType

        return (override.type == OverrideType.CHANGE and override.package is None
                and "." in override.key_or_group and override.key_or_group.split(".")[0] not in ("hydra",))

    def run_of(self, overrides: list[str], where: str) -> tuple[str, str, dict[str, int]]:
        """(experiment, run id, results versions) of the run the overrides compose."""
        key = tuple(overrides)
        if key in self.cache:
            return self.cache[key]
        import copy

        from hydra import compose
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        parsed = check_overrides(overrides, where)
        try:
            values = [o for o in parsed if self._is_value(o) or (o.type.name == "CHANGE" and o.key_or_group not in self.groups
                                                                 and "/" not in o.key_or_group and o.package is None)]
            structural = tuple(o.input_line for o in parsed if o not in values)
            if structural not in self.composed:
                self.composed[structural] = compose(config_name="config", overrides=list(structural))
            cfg = copy.deepcopy(self.composed[structural])
            for o in values:
                try:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
                except OmegaConfBaseException as exc:
                    raise ValueError(f"could not override {o.key_or_group!r} (no such key?): {exc}") from None
            container = OmegaConf.to_container(cfg, resolve=True)
        except Exception as exc:
            raise ValueError(f"{where}: overrides {list(overrides)} do not compose: {type(exc).__name__}: {exc}") from None
        check_targets(container, where)
        try:  # the id is that of the validated run: a bad option or a missing data file stops here
            rid, versions = hash_identity(run_identity(container)), results_versions(container)
        except Exception as exc:
            raise ValueError(f"{where}: overrides {list(overrides)} are not a valid run: {type(exc).__name__}: {exc}") from None
        self.cache[key] = (str(container["experiment_name"]), rid, versions)
        return self.cache[key]

    def legacy_run(self, runs_dir: Path, experiment: str, rid: str) -> Path | None:
        """The run stored under an older id scheme that the current scheme names `rid` (read once per experiment)."""
        where = runs_dir / experiment
        if where not in self.legacy:
            self.legacy[where] = legacy_runs(runs_dir, experiment)
        return self.legacy[where].get(rid)


def stored_run(composer: Composer, runs_dir: Path, overrides: list[str], where: str) -> dict:
    """Where the run the overrides compose lives, what it recorded and whether that is stale: its own
    directory, else (listed as stale) the directory an older id scheme gave it."""
    experiment, rid, versions = composer.run_of(overrides, where)
    path = runs_dir / experiment / rid
    metrics = read_json(path / "metrics.json") if (path / "metrics.json").is_file() else None
    stale = stale_reason(metrics, versions) if metrics else None
    legacy = composer.legacy_run(runs_dir, experiment, rid) if metrics is None else None
    if legacy is not None:
        metrics = read_json(legacy / "metrics.json")
        stale = f"{OLD_SCHEME} ({legacy}; python -m mora.runs migrate {runs_dir} re-keys it)"
    return {"run_id": rid, "path": path, "overrides": overrides, "metrics": metrics, "stale": stale,
            "legacy": legacy, "versions": versions}


def candidates_for(spec: Spec, section: Section, row: Row, group: Group, composer: Composer, runs_dir: Path,
                   extra: list[str]) -> list[Candidate]:
    out = []
    keys = list(row.sweep)
    for lr in lr_candidates(spec, row, group):
        for values in itertools.product(*(row.sweep[k] for k in keys)) if keys else [()]:
            sweep = dict(zip(keys, values))
            runs = []
            for seed in section.seeds:
                overrides = [f"experiment={group.experiment}", *section.overrides, *group.overrides, *row.overrides,
                             *(f"{k}={v}" for k, v in sweep.items()), *([f"train.lr={lr}"] if lr is not None else []),
                             f"seed={seed}", *extra]
                run = stored_run(composer, runs_dir, overrides, _where(spec.path, section.name, row.label, group.name))
                runs.append({"seed": seed, **run})
            out.append(Candidate(lr, sweep, runs))
    return out


def lookup(metrics: dict, metric: str, step: int | None = None) -> Any:
    """A metric of one run (see the module docstring); None when the run does not have it."""
    if step is not None:
        for entry in metrics.get("evals", []):
            if entry.get("step") == step:
                return entry.get(metric)
        return None
    if metric == "train_loss":
        curve = metrics.get("train_loss") or []
        return curve[-1][1] if curve else None
    if metric.startswith("spectrum/"):
        return (metrics.get("spectrum") or {}).get("by_type", {}).get(metric.split("/", 1)[1])
    for part in ("scores", "final"):
        value = (metrics.get(part) or {}).get(metric)
        if value is not None:
            return value
    return None


def scoring_of(metrics: dict, metric: str) -> str | None:
    """The scoring mode (paper | standard) of the benchmark suite that produced `metric` in one run."""
    for suite in (metrics.get("benchmarks") or {}).values():
        if metric in (suite.get("scores") or {}):
            return suite.get("scoring")
    return None


def cell_scoring(cell: "Cell", metric: str) -> str:
    """The scoring modes behind a cell's value ("paper", or "paper, standard" when its runs differ)."""
    runs = cell.candidate.runs if cell.candidate is not None and cell.value is not None else []
    return ", ".join(sorted({m for r in runs if _completed(r) for m in [scoring_of(r["metrics"], metric)] if m}))


def _completed(run: dict) -> bool:
    return bool(run["metrics"]) and run["metrics"].get("status") == STATUS_COMPLETED


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


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


@dataclass
class GroupChoice:
    candidate: Candidate | None
    candidates: list[Candidate]


def choose(spec: Spec, section: Section, group: Group, candidates: list[Candidate]) -> Candidate | None:
    """The best candidate by the selection rule; ties go to the better mean of the group's columns,
    then to the earlier grid point. None when no candidate has a finished run with the metric."""
    rule = group.select or section.select or spec.select or {}
    mode = rule.get("mode", "max")
    if mode not in ("max", "min"):
        raise ValueError(f"{spec.path}: select.mode must be max or min, got {mode!r}")
    metric, step = rule.get("metric"), rule.get("step")
    columns = [c for c in section.columns if c.group == group.name]

    def columns_mean(metrics: dict) -> float | None:
        values = [lookup(metrics, c.metric, c.step) for c in columns]
        return _mean([float(v) for v in values if v is not None])  # the metrics the run has

    def score(candidate: Candidate, by_metric: bool) -> float | None:
        per_seed = []
        for run in candidate.runs:
            if not _completed(run):
                continue
            value = lookup(run["metrics"], metric, step) if by_metric else columns_mean(run["metrics"])
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


# ---------------------------------------------------------------------------------------------
# the table


@dataclass
class Table:
    spec: Spec
    section: Section
    cells: list[list[Cell]]
    choices: list[dict[str, GroupChoice]]
    notes: list[str]
    stale: list[str] = field(default_factory=list)  # "<run dir>: why" for every stale run a cell shows


def build_table(spec: Spec, section_name: str, runs_dir: str | Path, extra: list[str] | None = None,
                conf_dir: Path = CONF_DIR) -> Table:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ValueError(
            f"results store {runs_dir} does not exist: train the artifact's runs first (python -m mora.train ...; "
            "`make demo` for table2's miniature), or point --runs-dir / MORA_RUNS_DIR at the store"
        )
    if section_name not in spec.sections:
        raise ValueError(f"{spec.path}: no section {section_name!r}; it has {sorted(spec.sections)}")
    section = spec.sections[section_name]
    extra = list(extra or [])
    cells, choices, notes, stale = [], [], [], []
    note_of: dict[tuple, int] = {}
    with Composer(conf_dir) as composer:
        for ri, row in enumerate(section.rows):
            row_choices = {}
            for group in section.groups.values():
                candidates = candidates_for(spec, section, row, group, composer, runs_dir, extra)
                row_choices[group.name] = GroupChoice(choose(spec, section, group, candidates), candidates)
            choices.append(row_choices)
            row_cells = []
            for ci, column in enumerate(section.columns):
                choice = row_choices[column.group]
                paper = paper_reference(spec, section, ri, ci)
                values, stale_here = [], False
                if choice.candidate is not None:
                    for run in choice.candidate.runs:
                        if _completed(run):
                            v = lookup(run["metrics"], column.metric, column.step)
                            if v is not None:
                                values.append(float(v))
                                stale_here = stale_here or bool(run["stale"])
                                line = f"{run['legacy'] or run['path']}: {run['stale']}"
                                if run["stale"] and line not in stale:
                                    stale.append(line)
                if not values:
                    key = (ri, column.group)
                    if key not in note_of:
                        notes.append(_missing_note(row, section.groups[column.group], choice, runs_dir))
                        note_of[key] = len(notes)
                    row_cells.append(Cell(None, None, 0, paper, choice.candidate, "missing", note_of[key]))
                    continue
                std = statistics.stdev(values) if len(values) > 1 else None
                complete = all(_completed(r) for c in choice.candidates for r in c.runs)
                row_cells.append(Cell(_mean(values), std, len(values), paper, choice.candidate,
                                      "ok" if complete else "partial", stale=stale_here))
            cells.append(row_cells)
    return Table(spec, section, cells, choices, notes, stale)


def row_name(row: Row) -> str:
    """The row's label, with its rank when it has one (Table 1 repeats labels across ranks)."""
    return row.label if row.rank in (None, "-", "") else f"{row.label} r={row.rank}"


def _missing_note(row: Row, group: Group, choice: GroupChoice, runs_dir: Path) -> str:
    lines = [f"{row_name(row)} × {group.label or group.name} ({group.experiment}): no finished run with the metric; the grid's runs:"]
    for candidate in choice.candidates:
        for run in candidate.runs:
            metrics = run["metrics"] or {}
            status = metrics.get("status", "not started") + (f": {metrics['error']}" if metrics.get("error") else "")
            status += f"; stale: {run['stale']}" if run["stale"] else ""
            lines.append(f"    {runs_dir / group.experiment / run['run_id']}  [{status}]  {candidate.describe()}, seed {run['seed']}")
    first = choice.candidates[0].runs[0]["overrides"] if choice.candidates and choice.candidates[0].runs else []
    lines.append("    e.g. python -m mora.train " + " ".join(_shell(o) for o in first))
    return "\n".join(lines)


def _shell(token: str) -> str:
    return token if re.fullmatch(r"[\w.=/,:+\-\[\]]+", token) else "'" + token.replace("'", "'\\''") + "'"


def _fmt(value: float | None, fmt: str) -> str:
    return MISSING if value is None else format(value, fmt)


def has_paper(table: "Table") -> bool:
    """Whether any cell has a paper number (figures have none: then cells show ours only)."""
    return any(cell.paper is not None for row in table.cells for cell in row)


def cell_text(cell: Cell, fmt: str, latex: bool = False, paper: bool = True) -> str:
    if cell.value is None:
        ours = (MISSING if not latex else "--") + (f" [{cell.note}]" if cell.note and not latex else "")
    else:
        ours = format(cell.value, fmt)
        if cell.std is not None:
            ours += (f"$\\pm${cell.std:{fmt}}" if latex else f" ± {cell.std:{fmt}}")
        if cell.status == "partial" and not latex:
            ours += "*"
        if cell.stale:
            ours += "$^\\dagger$" if latex else "†"
    if not paper:
        return ours
    reference = (("--" if latex else MISSING) if cell.paper is None else format(cell.paper, fmt))
    return f"{ours} / {reference}"


def _has_rank(section: Section) -> bool:
    return any(r.rank is not None for r in section.rows)


def render_markdown(table: Table) -> str:
    spec, section = table.spec, table.section
    rank = _has_rank(section)
    head = ["method"] + (["r"] if rank else []) + [c.label for c in section.columns]
    paper = has_paper(table)
    cells_are = "ours / paper; ours = mean ± std over seeds" if paper else "mean ± std over seeds"
    lines = [f"**{spec.title}** ({section.name}; cells: {cells_are})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, cells in zip(section.rows, table.cells):
        parts = [row.label] + ([str(row.rank) if row.rank is not None else "-"] if rank else [])
        parts += [cell_text(cell, col.format, paper=paper) for cell, col in zip(cells, section.columns)]
        lines.append("| " + " | ".join(parts) + " |")
    lines.append("")
    if spec.selection:
        lines.append(f"Selection: {spec.selection}.")
    chosen = []
    for row, row_choices in zip(section.rows, table.choices):
        described = {g: c.candidate.describe() for g, c in row_choices.items() if c.candidate}
        if len(set(described.values())) == 1 and len(described) == len(row_choices):
            picks = [next(iter(described.values()))]  # the same grid point on every group
        else:
            picks = [f"{section.groups[g].label or g}: {d}" for g, d in described.items()]
        if picks:
            chosen.append(f"{row_name(row)} ({'; '.join(picks)})")
    if chosen:
        lines.append("Chosen: " + " · ".join(chosen) + ".")
    modes = sorted({cell_scoring(c, col.metric) for cells in table.cells for c, col in zip(cells, section.columns)} - {""})
    if modes:
        lines.append(f"Scoring (benchmark.scoring): {' / '.join(modes)}; paper = the paper's answer checks, standard = "
                     "lm-eval's (README, Benchmarks).")
    if any(c.status == "partial" for cells in table.cells for c in cells):
        lines.append("`*`: chosen from an incomplete grid (some learning rates or seeds have no finished run).")
    if table.stale:
        lines.append("`†`: from stale runs, recorded by older code or under an older id scheme; "
                     "`python -m mora.launch <spec> --section <section> --rerun-stale` trains them again "
                     "(their records move to .stale/, nothing is deleted):")
        lines.append("")
        lines += [f"    {line}" for line in table.stale]
    if table.notes:
        lines.append("")
        lines.append(f"`{MISSING} [n]`: no finished run yet; it would come from:")
        lines.append("")
        lines.append("```")
        for i, note in enumerate(table.notes, 1):
            lines.append(f"[{i}] {note}")
        lines.append("```")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["artifact", "section", "row", "rank", "column", "group", "experiment", "metric", "step", "ours_mean", "ours_std",
              "n_seeds", "paper", "status", "chosen", "run_ids", "grid_run_ids", "scoring"]


def table_records(table: Table) -> list[dict]:
    records = []
    section = table.section
    for row, cells, row_choices in zip(section.rows, table.cells, table.choices):
        for column, cell in zip(section.columns, cells):
            choice = row_choices[column.group]
            chosen = cell.candidate
            records.append({
                "artifact": table.spec.artifact,
                "section": section.name,
                "row": row.label,
                "rank": "" if row.rank is None else str(row.rank),
                "column": column.label,
                "group": column.group,
                "experiment": section.groups[column.group].experiment,
                "metric": column.metric,
                "step": "" if column.step is None else column.step,
                "ours_mean": "" if cell.value is None else round(cell.value, 6),
                "ours_std": "" if cell.std is None else round(cell.std, 6),
                "n_seeds": cell.n,
                "paper": "" if cell.paper is None else cell.paper,
                "status": "stale" if cell.stale else cell.status,
                "chosen": chosen.describe() if chosen else "",
                "run_ids": " ".join(r["run_id"] for r in chosen.runs if _completed(r)) if chosen and cell.value is not None else "",
                "grid_run_ids": " ".join(r["run_id"] for c in choice.candidates for r in c.runs),
                "scoring": cell_scoring(cell, column.metric),
            })
    return records


def render_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table_records(table))
    return out.getvalue()


def _tex(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text)


def render_latex(table: Table) -> str:
    spec, section = table.spec, table.section
    rank = _has_rank(section)
    head = ["Method"] + (["$r$"] if rank else []) + [_tex(c.label) for c in section.columns]
    paper = has_paper(table)
    lines = [
        "% " + spec.title + f" ({section.name}); cells: {'ours / paper' if paper else 'ours'}; generated by python -m mora.report",
        "\\begin{tabular}{l" + ("c" if rank else "") + "c" * len(section.columns) + "}",
        "\\toprule",
        " & ".join(head) + " \\\\",
        "\\midrule",
    ]
    for row, cells in zip(section.rows, table.cells):
        parts = [_tex(row.label)] + ([str(row.rank) if row.rank is not None else "-"] if rank else [])
        parts += [cell_text(cell, col.format, latex=True, paper=paper) for cell, col in zip(cells, section.columns)]
        lines.append(" & ".join(parts) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_curve(runs: list[dict]) -> tuple[list[float], list[float]]:
    """The training loss averaged over seeds at the steps every finished seed logged."""
    curves = [dict((int(s), float(v)) for s, v in r["metrics"].get("train_loss", [])) for r in runs if _completed(r)]
    curves = [c for c in curves if c]
    if not curves:
        return [], []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return steps, [statistics.fmean(c[s] for c in curves) for s in steps]


def plot_curves(table: Table, path: Path) -> Path:
    plt = _plt()
    section = table.section
    groups = list(section.groups.values())
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for row, row_choices in zip(section.rows, table.choices):
            choice = row_choices[group.name].candidate
            steps, losses = mean_curve(choice.runs) if choice else ([], [])
            if steps:
                ax.plot(steps, losses, label=row.label)
            else:
                ax.plot([], [], label=f"{row.label} (no run)", linestyle=":")
        ax.set_title(group.label or group.experiment)
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{table.spec.title} ({section.name})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def plot_spectrum(table: Table, path: Path) -> Path:
    plt = _plt()
    section = table.section
    fig, ax = plt.subplots(figsize=(8, 4.5))
    n = max(1, len(section.rows))
    width = 0.8 / n
    for i, (row, cells) in enumerate(zip(section.rows, table.cells)):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(section.columns))]
        missing = all(c.value is None for c in cells)
        ax.bar(xs, [c.value or 0.0 for c in cells], width, label=row.label + (" (no run)" if missing else ""))
    ax.set_xticks(range(len(section.columns)), [c.label for c in section.columns])
    ax.set_ylabel("singular values > 0.1 (mean over layers)")
    ax.set_title(f"{table.spec.title} ({section.name})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------
# outputs


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def log_wandb(tables: list[Table], figures: list[Path], out_dir: Path, project: str = "mora-bench",
              mode: str | None = None) -> Path | None:
    """One wandb run per report, group = the artifact, job type `report`: a wandb.Table per section
    (its CSV records) and the figures as images. Offline unless WANDB_MODE / `mode` says otherwise."""
    import wandb

    spec = tables[0].spec
    run = wandb.init(
        project=project,
        mode=mode or os.environ.get("WANDB_MODE", "offline"),
        dir=str(out_dir),
        group=spec.artifact,
        job_type="report",
        name=f"{spec.artifact}-report",
        config={"artifact": spec.artifact, "spec": str(spec.path), "sections": [t.section.name for t in tables]},
        reinit="finish_previous",
    )
    try:
        for table in tables:
            records = table_records(table)
            data = [[None if rec[f] == "" else rec[f] for f in CSV_FIELDS] for rec in records]  # empty cells: null
            run.log({f"{spec.artifact}/{table.section.name}": wandb.Table(columns=CSV_FIELDS, data=data)})
        for png in figures:
            run.log({f"{spec.artifact}/{png.stem}": wandb.Image(str(png))})
        directory = Path(run.dir).parent
    finally:
        run.finish()
    return directory


def render(spec_path: str | Path, runs_dir: str | Path, out_dir: str | Path, sections: list[str] | None = None,
           extra: list[str] | None = None, wandb_log: bool = True, conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """Render every requested section of a spec into `out_dir`; returns {markdown, files, tables}."""
    spec = load_spec(spec_path, conf_dir)
    out_dir = Path(out_dir)
    names = sections or list(spec.sections)
    tables, files, markdown = [], [], []
    for name in names:
        table = build_table(spec, name, runs_dir, extra, conf_dir)
        tables.append(table)
        stem = out_dir / f"{spec.artifact}_{name}"
        md = render_markdown(table)
        markdown.append(md)
        for suffix, text in ((".md", md), (".csv", render_csv(table)), (".tex", render_latex(table))):
            _write_text(stem.with_suffix(suffix), text)
            files.append(stem.with_suffix(suffix))
        if spec.kind == "curves":
            files.append(plot_curves(table, stem.with_suffix(".png")))
        elif spec.kind == "spectrum":
            files.append(plot_spectrum(table, stem.with_suffix(".png")))
    wandb_dir = None
    if wandb_log:
        try:
            wandb_dir = log_wandb(tables, [f for f in files if f.suffix == ".png"], out_dir)
        except Exception as exc:  # wandb is a mirror: the files above are the report
            print(f"warning: wandb logging of the report failed ({type(exc).__name__}: {exc}); the files are "
                  "written: fix WANDB_MODE / `pip install wandb`, or pass --no-wandb", file=sys.stderr)
    return {"markdown": "\n".join(markdown), "files": files, "tables": tables, "wandb_dir": wandb_dir}


def pending_commands(spec_path: str | Path, runs_dir: str | Path, sections: list[str] | None = None,
                     extra: list[str] | None = None, conf_dir: Path = CONF_DIR) -> list[str]:
    """`python -m mora.train ...` for every run of the spec's grids that has not finished or is stale
    (printing them is all the report does: launching is the caller's)."""
    spec = load_spec(spec_path, conf_dir)
    runs_dir = Path(runs_dir)
    commands: list[str] = []
    with Composer(conf_dir) as composer:
        for name in sections or list(spec.sections):
            section = spec.sections[name]
            for row in section.rows:
                for group in section.groups.values():
                    for candidate in candidates_for(spec, section, row, group, composer, runs_dir, list(extra or [])):
                        for run in candidate.runs:
                            command = "python -m mora.train " + " ".join(_shell(o) for o in run["overrides"])
                            if (not _completed(run) or run["stale"]) and command not in commands:
                                commands.append(command)
    return commands


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Spec format: see the module docstring.")
    parser.add_argument("specs", nargs="+", help="artifact specs, e.g. experiments/table1.yaml")
    parser.add_argument("--section", action="append", help="render only this section (repeatable); default: all")
    parser.add_argument("--runs-dir", default=os.environ.get("MORA_RUNS_DIR", "runs"), help="the results store")
    parser.add_argument("--out", default="reports", help="where the .md/.csv/.tex/.png files go")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for every cell (repeatable)")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the tables to wandb")
    parser.add_argument("--commands", action="store_true", help="only print the mora.train commands of unfinished runs")
    args = parser.parse_args(argv)
    try:
        if args.commands:
            for spec in args.specs:
                for command in pending_commands(spec, args.runs_dir, args.section, args.override):
                    print(command)
            return
        for spec in args.specs:
            result = render(spec, args.runs_dir, args.out, args.section, args.override, not args.no_wandb)
            print(result["markdown"])
            print("wrote " + ", ".join(str(f) for f in result["files"]))
            if result["wandb_dir"]:
                print(f"wandb: {result['wandb_dir']} (wandb sync {result['wandb_dir']})")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

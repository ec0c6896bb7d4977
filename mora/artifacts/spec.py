"""The artifact spec (`experiments/<artifact>.yaml`): what fills each cell of a paper table or figure.

    artifact, kind, title, metric, format, selection, select, grids   # the spec
    <section>: {experiment, caption, seeds, overrides, select, groups, columns, rows}
    row: {label, rank, overrides, lr_grid, hparams, paper, paper_row, lr}

The format, key by key, with a worked example: docs/artifacts.md. `load_spec` checks everything it can
without composing a config, each problem a ValueError naming the file, section and row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
CONF_DIR = ROOT / "conf"
KINDS = ("table", "curves", "spectrum")
RESERVED = {"artifact", "kind", "title", "metric", "format", "select", "selection", "grids", "notes"}


@dataclass
class Group:
    name: str
    experiment: str
    overrides: list[str] = field(default_factory=list)
    lr_grid: list | None = None
    select: dict | None = None
    label: str | None = None

    @property
    def title(self) -> str:
        return self.label or self.name


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
    paper_row: Any = None
    rank: Any = None

    @property
    def name(self) -> str:
        """The label, with the rank when the row has one (Table 1 repeats labels across ranks)."""
        return self.label if self.rank in (None, "-", "") else f"{self.label} r={self.rank}"


@dataclass
class Section:
    name: str
    seeds: list[int]
    overrides: list[str]
    groups: dict[str, Group]
    columns: list[Column]
    rows: list[Row]
    select: dict | None = None
    caption: str = ""


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

    def section(self, name: str) -> Section:
        if name not in self.sections:
            raise ValueError(f"{self.path}: no section {name!r}; it has {sorted(self.sections)} (--section)")
        return self.sections[name]

    def where(self, *parts: str) -> str:
        return f"{self.path}: " + " / ".join(p for p in parts if p)

    def rule(self, section: Section, group: Group) -> dict:
        """The selection rule in force for a column group: its own `select`, else the section's, else the spec's."""
        return group.select or section.select or self.select or {}


def _list(value: Any, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list, got {value!r}")
    return value


def _strings(value: Any, what: str) -> list[str]:
    return [str(o) for o in _list(value, what)]


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
    spec = Spec(path, str(raw["artifact"]), kind, str(raw.get("title", raw["artifact"])), str(raw.get("selection", "")),
                dict(raw.get("select") or {}), dict(raw.get("grids") or {}), {})
    known = set(available_experiments(conf_dir))
    for name, body in raw.items():
        if name in RESERVED:
            continue
        if not isinstance(body, dict) or "rows" not in body:
            raise ValueError(f"{spec.where(name)}: a section needs `rows:` (unknown top-level key {name!r}?)")
        spec.sections[name] = _section(spec, name, body, raw.get("metric"), raw.get("format", ".1f"), known)
    if not spec.sections:
        raise ValueError(f"{path}: no section (e.g. `paper:` or `mini:`) with rows")
    paper = spec.sections.get("paper")
    for row in paper.rows if paper else []:
        if row.paper is not None and len(row.paper) != len(paper.columns):
            raise ValueError(f"{spec.where('paper', row.label)}: {len(row.paper)} paper numbers for {len(paper.columns)} columns")
    return spec


def _section(spec: Spec, name: str, body: dict, metric: Any, fmt: Any, known: set[str]) -> Section:
    metric, fmt = body.get("metric", metric), body.get("format", fmt)
    groups = {}
    for gname, g in (body.get("groups") or {"main": {"experiment": body.get("experiment")}}).items():
        g = dict(g or {})
        experiment = g.get("experiment", body.get("experiment"))
        where = spec.where(name, f"group {gname}")
        if not experiment:
            raise ValueError(f"{where}: no experiment (set `experiment:` on the group or the section)")
        if experiment not in known:
            raise ValueError(f"{where}: unknown experiment {experiment!r}; conf/experiment/ has {sorted(known)} "
                             f"(add conf/experiment/{experiment}.yaml or fix the name)")
        groups[gname] = Group(gname, experiment, _strings(g.get("overrides"), "group overrides"), g.get("lr_grid"),
                              g.get("select"), g.get("label"))
    columns = []
    for i, c in enumerate(_list(body.get("columns"), f"{spec.path}: {name}.columns")):
        c = {"step": c} if isinstance(c, int) else c
        where = spec.where(name, f"column {i}")
        if not isinstance(c, dict):
            raise ValueError(f"{where}: a column is an eval step (int) or a mapping, got {c!r}")
        group = c.get("group", next(iter(groups)))
        if group not in groups:
            raise ValueError(f"{where}: group {group!r} is not one of {sorted(groups)}")
        if not c.get("metric", metric):
            raise ValueError(f"{where}: no metric (set `metric:` on the column, section or spec)")
        step = c.get("step")
        key = str(c.get("key", step if step is not None else c.get("metric", metric)))
        columns.append(Column(key, str(c.get("label", key)), group, str(c.get("metric", metric)), step,
                              str(c.get("format", fmt))))
    if not columns:
        raise ValueError(f"{spec.where(name)}: no columns")
    rows = []
    for i, r in enumerate(_list(body.get("rows"), f"{spec.path}: {name}.rows")):
        if not isinstance(r, dict) or "label" not in r:
            raise ValueError(f"{spec.where(name, f'row {i}')}: a row is a mapping with at least `label:`")
        grid, sweep = r.get("lr_grid"), dict(r.get("hparams") or {})
        if isinstance(grid, str) and grid not in spec.grids:
            raise ValueError(f"{spec.where(name, r['label'])}: lr_grid {grid!r} is not in `grids:` ({sorted(spec.grids)})")
        for key, values in sweep.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{spec.where(name, r['label'])}: hparams {key} must be a non-empty list of values")
        rows.append(Row(str(r["label"]), _strings(r.get("overrides"), "row overrides"), grid, r.get("lr"), sweep,
                        r.get("paper"), r.get("paper_row"), r.get("rank")))
    return Section(name, [int(s) for s in body.get("seeds", [0])], _strings(body.get("overrides"), "overrides"),
                   groups, columns, rows, body.get("select"), str(body.get("caption", "")))


def number(value: Any) -> Any:
    """YAML reads 3e-4 as a string (no dot): learning rates become floats."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def lr_candidates(spec: Spec, row: Row, group: Group) -> list:
    """The learning rates a row sweeps on a group ([None]: the experiment's own lr)."""
    grid = spec.grids[row.lr_grid] if isinstance(row.lr_grid, str) else row.lr_grid
    if isinstance(grid, dict):
        grid = grid.get(group.name)
    if grid is None:
        grid = group.lr_grid
    if grid is None and row.lr is not None:
        grid = [row.lr]
    return [number(lr) for lr in grid] if grid else [None]


def paper_reference(spec: Spec, section: Section, row_index: int, column_index: int) -> float | None:
    """The paper's number for a cell: the `paper` section's row (same index, or `paper_row` by label
    or index) and column (same index)."""
    paper = spec.sections.get("paper")
    if paper is None:
        return None
    row = section.rows[row_index]
    where = spec.where(section.name, row.label)
    if section is paper:
        ref = row
    elif isinstance(row.paper_row, int):
        if not 0 <= row.paper_row < len(paper.rows):
            raise ValueError(f"{where}: paper_row {row.paper_row} is out of range")
        ref = paper.rows[row.paper_row]
    elif row.paper_row is not None:
        ref = next((r for r in paper.rows if r.label == row.paper_row), None)
        if ref is None:
            raise ValueError(f"{where}: paper_row {row.paper_row!r} is not a paper row label")
    else:
        ref = paper.rows[row_index] if row_index < len(paper.rows) else None
    if ref is None or ref.paper is None or column_index >= len(ref.paper):
        return None
    value = ref.paper[column_index]
    return None if value is None else float(value)

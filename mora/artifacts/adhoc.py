"""A table from the runs in a directory, without a spec: rows are the distinct values of some run keys,
the grid points of a row are its runs that differ in more than the seed, and the selection rule is the
spec's (mora/artifacts/table.py). For a quick look at your own sweep:

    python -m mora.report --runs runs/uuid_mini --rows method,rank --metric char_acc

A key is one of the run's summary keys (metrics.json `summary`: method, rank, kind, task, model, lr,
seed, experiment) or a dotted key of its config.json (method.r, train.lr, data.builder.n_pairs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..identity import canonical, results_versions
from ..runs import CONFIG_NAME, IDENTITY_NAME, METRICS_NAME, read_json, stored_config
from .compose import Composed
from .grid import Candidate, Slot
from .spec import Column, Group, Row, Section, Spec
from .store import Run, seedless_key


def run_key(run: Run, key: str) -> Any:
    summary = (run.metrics or {}).get("summary") or {}
    if key in summary:
        return summary[key]
    node: Any = run.composed.config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"{run.path}: no key {key!r} (a summary key: {', '.join(sorted(summary))}; or a dotted config key)")
        node = node[part]
    return node


def _run_dirs(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if not path.is_dir():
            raise ValueError(f"--runs {path}: not a directory (an experiment's runs, e.g. runs/uuid_mini, or one run)")
        candidates = [path] if (path / CONFIG_NAME).is_file() else sorted(path.iterdir())
        found += [p for p in candidates if (p / CONFIG_NAME).is_file() and (p / METRICS_NAME).is_file()]
    if not found:
        raise ValueError(f"--runs {' '.join(map(str, paths))}: no run directories (config.json + metrics.json) there")
    return found


def table_from_runs(paths: list[Path], rows: list[str], metrics: list[str], steps: list[int] | None = None,
                    mode: str = "max") -> tuple[Spec, Section, list[Slot]]:
    """A spec, its one section and the section's slots, from recorded runs (module docstring)."""
    runs = _run_dirs(paths)
    by_row: dict[tuple, dict[str, list[Run]]] = {}
    for path in runs:
        config = stored_config(path)
        identity = read_json(path / IDENTITY_NAME) if (path / IDENTITY_NAME).is_file() else {}
        point = seedless_key(identity) if identity else path.name
        run = Run(int(config.get("seed", 0)), [], Composed(path.parent.name, path.name, results_versions(config), config, identity),
                  path, store=path.parent.parent).load()
        label = tuple(canonical(run_key(run, k)) for k in rows)
        by_row.setdefault(label, {}).setdefault(point, []).append(run)
    name = " ".join(str(p) for p in paths)
    group = Group("main", runs[0].parent.name)
    columns = [Column(str(s), f"{m} @ {s}", "main", m, s) for m in metrics for s in steps] if steps else \
        [Column(m, m, "main", m) for m in metrics]
    section = Section("runs", [], [], {"main": group}, columns, [])
    slots = []
    for label, points in sorted(by_row.items(), key=lambda kv: str(kv[0])):
        row = Row(", ".join(f"{k}={v}" for k, v in zip(rows, label)), [])
        section.rows.append(row)
        candidates = [Candidate(ps[0].composed.config.get("train", {}).get("lr"), {}, sorted(ps, key=lambda r: r.seed))
                      for ps in points.values()]
        slots.append(Slot(section, row, group, candidates))
    spec = Spec(Path(name), group.experiment, "table", f"{name}: {', '.join(metrics)} by {', '.join(rows)}",
                f"per row, the runs (all seeds of one config) with the {'highest' if mode == 'max' else 'lowest'} "
                f"{metrics[0]}", {"metric": metrics[0], "step": steps[-1] if steps else None, "mode": mode},
                {}, {"runs": section})
    return spec, section, slots

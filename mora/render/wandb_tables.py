"""Built tables into one wandb run per report (group = the artifact, job type `report`): per section, the
table in the paper's layout (method x benchmark, ours beside the paper's number) and the long form (one
row per cell, mora.render.text.CSV_FIELDS) for filtering; figures as images. Offline unless WANDB_MODE
or `mode` says otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from ..artifacts.table import Table
from .text import CSV_FIELDS, rank_column, table_records


def paper_layout(table: Table) -> tuple[list[str], list[list]]:
    """Columns and rows of the table as the paper prints it: method (and r), then per column ours (the
    mean over seeds) and, when the spec has them, the paper's number; a missing number is null."""
    rank, paper = rank_column(table), table.has_paper
    columns = ["method"] + (["r"] if rank else [])
    for column in table.section.columns:
        columns += [f"{column.label} (ours)", f"{column.label} (paper)"] if paper else [column.label]
    data = []
    for row, cells in zip(table.section.rows, table.cells):
        line = [row.label] + ([str(row.rank) if row.rank is not None else "-"] if rank else [])
        for cell in cells:
            line += [None if cell.value is None else round(cell.value, 6)] + ([cell.paper] if paper else [])
        data.append(line)
    return columns, data


def log_wandb(tables: list[Table], figures: list[Path], out_dir: Path, project: str = "mora-bench",
              mode: str | None = None) -> Path:
    import wandb

    spec = tables[0].spec
    run = wandb.init(project=project, mode=mode or os.environ.get("WANDB_MODE", "offline"), dir=str(out_dir),
                     group=spec.artifact, job_type="report", name=f"{spec.artifact}-report",
                     config={"artifact": spec.artifact, "spec": str(spec.path), "sections": [t.section.name for t in tables]},
                     reinit="finish_previous")
    try:
        for table in tables:
            key = f"{spec.artifact}/{table.section.name}"
            columns, data = paper_layout(table)
            long = [[None if rec[f] == "" else rec[f] for f in CSV_FIELDS] for rec in table_records(table)]  # empty: null
            run.log({key: wandb.Table(columns=columns, data=data),
                     f"{key}_cells": wandb.Table(columns=CSV_FIELDS, data=long)})
        for png in figures:
            run.log({f"{spec.artifact}/{png.stem}": wandb.Image(str(png))})
        return Path(run.dir).parent
    finally:
        run.finish()

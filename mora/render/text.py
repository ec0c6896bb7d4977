"""A built table as Markdown (the report's text), CSV records (one line per cell) and LaTeX."""

from __future__ import annotations

import csv
import io
import re

from ..artifacts.table import Cell, Table

MISSING = "–"
CSV_FIELDS = ["artifact", "section", "row", "rank", "column", "group", "experiment", "metric", "step", "ours_mean", "ours_std",
              "n_seeds", "paper", "status", "chosen", "run_ids", "grid_run_ids", "scoring"]


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


def rank_column(table: Table) -> bool:
    return any(r.rank is not None for r in table.section.rows)


def layout(table: Table, latex: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows as the paper lays the table out: method (and r) x columns, `ours / paper` cells."""
    rank = rank_column(table)
    head = ["method"] + (["r"] if rank else []) + [c.label for c in table.section.columns]
    body = []
    for row, cells in zip(table.section.rows, table.cells):
        parts = [row.label] + ([str(row.rank) if row.rank is not None else "-"] if rank else [])
        body.append(parts + [cell_text(c, col.format, latex, table.has_paper) for c, col in zip(cells, table.section.columns)])
    return head, body


def render_markdown(table: Table) -> str:
    spec, section = table.spec, table.section
    cells_are = "ours / paper; ours = mean ± std over seeds" if table.has_paper else "mean ± std over seeds"
    head, body = layout(table)
    lines = [f"**{spec.title}** ({section.name}; cells: {cells_are})", *([f"_{section.caption}_"] if section.caption else []),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in body), ""]
    if spec.selection:
        lines.append(f"Selection: {spec.selection}.")
    chosen = []
    for row, picks in zip(section.rows, table.chosen):
        described = {g: c.describe() for g, c in picks.items() if c}
        if len(set(described.values())) == 1 and len(described) == len(picks):
            parts = [next(iter(described.values()))]  # the same grid point on every group
        else:
            parts = [f"{section.groups[g].title}: {d}" for g, d in described.items()]
        if parts:
            chosen.append(f"{row.name} ({'; '.join(parts)})")
    if chosen:
        lines.append("Chosen: " + " · ".join(chosen) + ".")
    modes = sorted({c.scoring for cells in table.cells for c in cells} - {""})
    if modes:
        lines.append(f"Scoring (benchmark.scoring): {' / '.join(modes)}; paper = the paper's answer checks, standard = "
                     "lm-eval's (README, Benchmarks).")
    if any(c.status == "partial" for cells in table.cells for c in cells):
        lines.append("`*`: chosen from an incomplete grid (some learning rates or seeds have no finished run).")
    if table.stale:
        lines += ["`†`: from stale runs, recorded by older code or under an older id scheme; "
                  "`python -m mora.launch <spec> --section <section> --rerun-stale` trains them again "
                  "(their records move to .stale/, nothing is deleted):", "", *(f"    {line}" for line in table.stale)]
    if table.notes:
        lines += ["", f"`{MISSING} [n]`: no finished run yet; it would come from:", "", "```",
                  *(f"[{i}] {note}" for i, note in enumerate(table.notes, 1)), "```"]
    return "\n".join(lines) + "\n"


def table_records(table: Table) -> list[dict]:
    """One record per cell (CSV_FIELDS): the long form, for filtering."""
    section, records = table.section, []
    for row, cells, slots, chosen in zip(section.rows, table.cells, table.choices, table.chosen):
        for column, cell in zip(section.columns, cells):
            pick = chosen[column.group]
            records.append({
                "artifact": table.spec.artifact, "section": section.name, "row": row.label,
                "rank": "" if row.rank is None else str(row.rank), "column": column.label, "group": column.group,
                "experiment": section.groups[column.group].experiment, "metric": column.metric,
                "step": "" if column.step is None else column.step,
                "ours_mean": "" if cell.value is None else round(cell.value, 6),
                "ours_std": "" if cell.std is None else round(cell.std, 6),
                "n_seeds": cell.n, "paper": "" if cell.paper is None else cell.paper,
                "status": "stale" if cell.stale else cell.status, "chosen": pick.describe() if pick else "",
                "run_ids": " ".join(r.run_id for r in pick.runs if r.completed) if pick and cell.value is not None else "",
                "grid_run_ids": " ".join(r.run_id for _, r in slots[column.group].runs()),
                "scoring": cell.scoring,
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
    section, rank = table.section, rank_column(table)
    head, body = layout(table, latex=True)
    head = ["Method"] + (["$r$"] if rank else []) + [_tex(h) for h in head[1 + rank:]]
    lines = ["% " + table.spec.title + f" ({section.name}); cells: {'ours / paper' if table.has_paper else 'ours'}; "
             "generated by python -m mora.report",
             "\\begin{tabular}{l" + ("c" if rank else "") + "c" * len(section.columns) + "}", "\\toprule",
             " & ".join(head) + " \\\\", "\\midrule",
             *(" & ".join([_tex(r[0]), *r[1:]]) + " \\\\" for r in body), "\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"

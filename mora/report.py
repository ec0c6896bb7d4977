"""Render a paper artifact from the results store: the table (Markdown, CSV, LaTeX, wandb tables) with
our numbers beside the paper's, and its figure (PNG) when it is one.

    python -m mora.report experiments/table1.yaml                  # every section of the spec
    python -m mora.report experiments/table2.yaml --section mini   # the offline miniature only
    python -m mora.report --runs runs/uuid_mini --rows method,rank --metric char_acc   # no spec: your own runs

The report reads only the spec and the results store; it never trains or evaluates. Each cell's runs
are the ones `mora.train` would make for its overrides (mora/artifacts/); a cell with no finished run
is marked and its footnote lists the run ids (and commands) that would fill it; a number from a stale
run (docs/results_store.md) is marked `†`, with the run and the reason under the table. The spec
format, the selection rule and a worked example: docs/artifacts.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .artifacts import CONF_DIR, Composer, Store, expand, load_spec, section_table, train_command
from .artifacts.adhoc import table_from_runs
from .artifacts.table import Table, build_table
from .render.figures import PLOTS
from .render.text import render_csv, render_latex, render_markdown


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_tables(tables: list[Table], out_dir: str | Path, wandb_log: bool = True) -> dict[str, Any]:
    """Each table's .md/.csv/.tex (and .png for figures) in `out_dir`, and the wandb run of the report."""
    out_dir, files, markdown = Path(out_dir), [], []
    for table in tables:
        stem = out_dir / f"{table.spec.artifact}_{table.section.name}"
        markdown.append(render_markdown(table))
        for suffix, text in ((".md", markdown[-1]), (".csv", render_csv(table)), (".tex", render_latex(table))):
            _write_text(stem.with_suffix(suffix), text)
            files.append(stem.with_suffix(suffix))
        if table.spec.kind in PLOTS:
            files.append(PLOTS[table.spec.kind](table, stem.with_suffix(".png")))
    wandb_dir = None
    if wandb_log:
        try:
            from .render.wandb_tables import log_wandb

            wandb_dir = log_wandb(tables, [f for f in files if f.suffix == ".png"], out_dir)
        except Exception as exc:  # wandb is a mirror: the files above are the report
            print(f"warning: wandb logging of the report failed ({type(exc).__name__}: {exc}); the files are "
                  "written: fix WANDB_MODE / `pip install wandb`, or pass --no-wandb", file=sys.stderr)
    return {"markdown": "\n".join(markdown), "files": files, "tables": tables, "wandb_dir": wandb_dir}


def render(spec_path: str | Path, runs_dir: str | Path, out_dir: str | Path, sections: list[str] | None = None,
           extra: list[str] | None = None, wandb_log: bool = True, conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """Render every requested section of a spec into `out_dir`; returns {markdown, files, tables, wandb_dir}."""
    spec = load_spec(spec_path, conf_dir)
    tables = [section_table(spec, spec.section(name), runs_dir, extra or [], conf_dir) for name in sections or spec.sections]
    return write_tables(tables, out_dir, wandb_log)


def pending_commands(spec_path: str | Path, runs_dir: str | Path, sections: list[str] | None = None,
                     extra: list[str] | None = None, conf_dir: Path = CONF_DIR) -> list[str]:
    """`python -m mora.train ...` for every run of the spec's grids that has not finished or is stale
    (printing them is all the report does: launching is the caller's)."""
    spec = load_spec(spec_path, conf_dir)
    commands: list[str] = []
    with Composer(conf_dir) as composer:
        store = Store(runs_dir, composer)
        for name in sections or spec.sections:
            for slot in expand(spec, spec.section(name), store, list(extra or [])):
                for _, run in slot.runs():
                    command = train_command(run.overrides)
                    if (not run.completed or run.stale) and command not in commands:
                        commands.append(command)
    return commands


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Spec format: docs/artifacts.md.")
    parser.add_argument("specs", nargs="*", help="artifact specs, e.g. experiments/table1.yaml")
    parser.add_argument("--section", action="append", help="render only this section (repeatable); default: all")
    parser.add_argument("--runs-dir", default=os.environ.get("MORA_RUNS_DIR", "runs"), help="the results store")
    parser.add_argument("--out", default="reports", help="where the .md/.csv/.tex/.png files go")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for every cell (repeatable)")
    parser.add_argument("--no-wandb", action="store_true", help="do not log the tables to wandb")
    parser.add_argument("--commands", action="store_true", help="only print the mora.train commands of unfinished runs")
    quick = parser.add_argument_group("a table without a spec, from recorded runs (docs/artifacts.md)")
    quick.add_argument("--runs", action="append", type=Path, help="an experiment's runs (runs/uuid_mini) or one run (repeatable)")
    quick.add_argument("--rows", default="method,rank", help="keys whose values make the rows (default: method,rank)")
    quick.add_argument("--metric", default="char_acc", help="column metrics, comma-separated; the first selects (default: char_acc)")
    quick.add_argument("--steps", help="eval steps to show the metrics at, comma-separated (default: the final value)")
    quick.add_argument("--mode", choices=("max", "min"), default="max", help="the better value of the first metric")
    args = parser.parse_args(argv)
    try:
        if bool(args.specs) == bool(args.runs):
            raise ValueError("give artifact specs (experiments/table1.yaml) or --runs DIR, one or the other")
        if args.runs:
            steps = [int(s) for s in args.steps.split(",")] if args.steps else None
            spec, section, slots = table_from_runs(args.runs, args.rows.split(","), args.metric.split(","), steps, args.mode)
            result = write_tables([build_table(spec, section, slots, args.runs[0].parent)], args.out, False)
            print(result["markdown"] + "wrote " + ", ".join(str(f) for f in result["files"]))
            return
        for spec in args.specs:
            if args.commands:
                for command in pending_commands(spec, args.runs_dir, args.section, args.override):
                    print(command)
                continue
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

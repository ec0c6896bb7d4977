"""`make demo`: the paper's Table 2 in miniature, trained for real on a CPU in a few minutes.

Runs the `mini` rows of experiments/table2.yaml, each at its `lr` (the best of its recorded sweep): FFT;
LoRA and MoRA at a low and a high rank, equal budgets. The runs go through the launcher's work queue
(finished ones are found in the results store and not re-run); then the report's table prints character
accuracy at four checkpoints beside the paper's numbers, and the loss curves are drawn (a Figure 3 analogue).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from .artifacts import load_spec, section_table
from .artifacts.spec import ROOT, Section
from .launch import grid_cells, launch_here, to_launch
from .render.figures import plot_curves
from .render.text import render_markdown

SPEC = ROOT / "experiments" / "table2.yaml"


def demo_section(section: Section, seed: int) -> Section:
    """The section with each row at its own `lr` and one seed: what `make demo` trains."""
    rows = [dataclasses.replace(row, lr_grid=[row.lr], sweep={}) for row in section.rows]
    return dataclasses.replace(section, rows=rows, seeds=[seed])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)

    start = time.time()
    spec = load_spec(SPEC)
    section = demo_section(spec.sections["mini"], args.seed)
    runs_dir = Path(os.environ.get("MORA_RUNS_DIR", "runs")).resolve()
    cells = grid_cells(spec, [section], runs_dir, args.overrides)
    todo = to_launch(cells, rerun_stale=False)
    print(f"Table 2 in miniature: {len(cells)} runs ({len(cells) - len(todo)} finished already), {args.jobs} at a time, "
          f"seed {args.seed}", flush=True)
    if todo:
        launch_here(spec, ["demo"], todo, runs_dir, args.jobs)
    table = section_table(spec, section, runs_dir, args.overrides)
    print("\n" + render_markdown(table))
    budgets = [(row.name, (run.metrics or {}).get("budget", {})) for row, chosen in zip(section.rows, table.chosen)
               for run in (chosen["main"].runs[:1] if chosen["main"] else [])]
    print("trainable parameters: " + " · ".join(f"{name} {b.get('adapter_total') or b.get('trainable_total') or 0:,}"
                                                for name, b in budgets))
    experiment = section.groups["main"].experiment
    png = plot_curves(table, runs_dir / experiment / f"table2_mini_seed{args.seed}_loss.png",
                      "UUID memorisation, offline miniature (cf. paper Fig. 3)")
    print(f"\nloss curves: {png}")
    print(f"run directories: {runs_dir / experiment}/<run_id>/ (metrics.json, config.json, train.log, adapter/, merged/)")
    print(f"wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

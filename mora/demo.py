"""`make demo`: the paper's Table 2 in miniature, trained for real on a CPU in a few minutes.

Runs the `mini` rows of experiments/table2.yaml (FFT; LoRA and MoRA at a low and a high rank, equal
budgets), prints character accuracy at four checkpoints beside the paper's numbers, and draws the
loss curves (a Figure 3 analogue). Finished runs are found in the results store and not re-run.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
SPEC = ROOT / "experiments" / "table2.yaml"


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def _run_cell(label: str, overrides: list[str], threads: int) -> tuple[str, dict[str, Any], float]:
    import torch

    torch.set_num_threads(threads)
    # workers are reused across cells, so the label prefix must be replaced each time (force=True)
    logging.basicConfig(level=logging.INFO, format=f"[{label}] %(message)s", force=True)
    logging.getLogger("mora").setLevel(logging.INFO)
    from .train import train

    start = time.time()
    metrics = train(compose(overrides))
    return label, metrics, time.time() - start


def cell_overrides(section: dict, row: dict, seed: int, extra: list[str]) -> list[str]:
    return [
        f"experiment={section['experiment']}",
        *row["overrides"],
        f"train.lr={row['lr']}",
        f"seed={seed}",
        "train.progress_bar=false",
        *extra,
    ]


def render_table(section: dict, paper: dict, results: dict[str, dict]) -> str:
    steps = section["columns"]
    paper_steps = paper["columns"]
    head = " | ".join(f"{s:>5}" for s in steps)
    paper_head = " | ".join(f"{s:>5}" for s in paper_steps)
    lines = [
        f"{'row':<22}| {'params':>7} | ours at step {head} | paper at step {paper_head}",
        "-" * (62 + 16 * len(steps)),
    ]
    for row, paper_row in zip(section["rows"], paper["rows"]):
        metrics = results.get(row["label"], {})
        by_step = {e["step"]: e.get("char_acc") for e in metrics.get("evals", [])}
        ours = " | ".join(f"{by_step[s]:5.1f}" if by_step.get(s) is not None else "    -" for s in steps)
        theirs = " | ".join(f"{v:5.1f}" for v in paper_row["paper"])
        budget = metrics.get("budget", {})
        params = budget.get("adapter_total") or budget.get("trainable_total") or 0
        lines.append(f"{row['label']:<22}| {params:>7,} | {'':12} {ours} | {paper_row['label']:<20}{theirs}")
    return "\n".join(lines)


def plot_losses(section: dict, results: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in section["rows"]:
        curve = results.get(row["label"], {}).get("train_loss", [])
        if curve:
            steps, losses = zip(*curve)
            ax.plot(steps, losses, label=row["label"])
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.set_title("UUID memorisation, offline miniature (cf. paper Fig. 3)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)

    spec = yaml.safe_load(SPEC.read_text())
    section, paper = spec["mini"], spec["paper"]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    start = time.time()
    results: dict[str, dict] = {}
    print(f"Table 2 in miniature: {len(section['rows'])} runs, {args.jobs} at a time, seed {args.seed}")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(_run_cell, row["label"], cell_overrides(section, row, args.seed, args.overrides), threads)
            for row in section["rows"]
        ]
        for done, future in enumerate(as_completed(futures), 1):
            label, metrics, seconds = future.result()
            results[label] = metrics
            final = metrics.get("final", {}).get("char_acc")
            print(f"[{done}/{len(futures)}] {label}: final char accuracy {final:.1f} % ({seconds:.0f} s)")

    runs_dir = Path(os.environ.get("MORA_RUNS_DIR", "runs")) / section["experiment"]
    print()
    print(spec["title"])
    print(render_table(section, paper, results))
    png = plot_losses(section, results, runs_dir / f"table2_mini_seed{args.seed}_loss.png")
    print(f"\nloss curves: {png}")
    print(f"run directories: {runs_dir}/<run_id>/ (metrics.json, config.json, train.log, adapter/, merged/)")
    print(f"wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

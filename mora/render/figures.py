"""A built table as a figure: loss curves (Figures 2-4) or spectrum bars (Figure 5), written as PNG."""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path

from ..artifacts.store import Run
from ..artifacts.table import Table


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_curve(runs: list[Run]) -> tuple[list[float], list[float]]:
    """The training loss averaged over seeds at the steps every finished seed logged."""
    curves = [dict((int(s), float(v)) for s, v in r.metrics.get("train_loss", [])) for r in runs if r.completed]
    curves = [c for c in curves if c]
    if not curves:
        return [], []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return steps, [statistics.fmean(c[s] for c in curves) for s in steps]


def wrapped(title: str, fig, fontsize: float = 10) -> str:
    """The title broken into lines that fit the figure's width (a long spec title is otherwise cut off at
    both edges of a one-panel figure)."""
    chars_per_inch = 144 / fontsize  # ~0.5 em per character at 72 points an inch
    return textwrap.fill(title, width=max(20, int(fig.get_figwidth() * chars_per_inch * 0.9)))


def plot_curves(table: Table, path: Path, title: str | None = None) -> Path:
    plt = _plt()
    groups = list(table.section.groups.values())
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for row, chosen in zip(table.section.rows, table.chosen):
            steps, losses = mean_curve(chosen[group.name].runs) if chosen[group.name] else ([], [])
            if steps:
                ax.plot(steps, losses, label=row.label)
            else:
                ax.plot([], [], label=f"{row.label} (no run)", linestyle=":")
        ax.set_title(group.label or group.experiment)
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(wrapped(title or f"{table.spec.title} ({table.section.name})", fig), fontsize=10)
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
    ax.set_title(wrapped(f"{table.spec.title} ({section.name})", fig), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path, plt)


PLOTS = {"curves": plot_curves, "spectrum": plot_spectrum}


def _save(fig, path: Path, plt) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path

"""Figure of an ablation sweep (experiments/sweep.py): per pipeline, the best
objective and the BO iterations within the budget against the swept setting,
mean +- standard error over seeds.

Usage::

    python -m paper_figures.sweep results/sweep_epsilon

Writes ``<results>/figures/sweep.png`` and ``.pdf``.
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from paper_figures.style import color  # noqa: E402

__all__ = ["draw", "main"]


def draw(results_dir: str, out_dir: str | None = None) -> list[str]:
    """Draw the sweep's figure from ``summary.json``; returns the written paths."""
    with open(os.path.join(results_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    pipes = list(summary["pipelines"])
    fig, axes = plt.subplots(2, len(pipes), figsize=(4.2 * len(pipes), 6.0), squeeze=False)
    c = color(summary["method"])
    for col, pname in enumerate(pipes):
        rows = summary["pipelines"][pname]
        labels = list(rows)
        x = range(len(labels))
        for row, (field, ylabel) in enumerate([("best", "best objective"), ("bo_iterations", "BO iterations")]):
            ax = axes[row][col]
            mean = [rows[k][field][0] for k in labels]
            se = [rows[k][field][1] for k in labels]
            ax.errorbar(x, mean, yerr=se, color=c, marker="o", capsize=3)
            ax.set_xticks(list(x), labels)
            ax.set_ylabel(ylabel)
            if row == 0:
                ax.set_title(pname)
            else:
                ax.set_xlabel(summary["param"])
    n = len(summary["seeds"])
    fig.suptitle(f"{summary['method']}: {summary['param']} ablation, mean ± s.e. over {n} development seeds")
    fig.tight_layout()
    out_dir = out_dir or os.path.join(results_dir, "figures")
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"sweep.{ext}") for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paper_figures.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a results directory of experiments.sweep")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    for p in draw(args.results, args.out):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

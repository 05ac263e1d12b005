"""Figures of the real-pipeline comparison.

Per pipeline, into ``<results>/figures``: ``<pipeline>.png/.pdf`` (best
objective vs wall seconds spent, mean ± s.e. over seeds, and BO iterations
per method; drawn by :func:`paper_figures.synthetic.draw`, the results format
being the same) and ``<pipeline>_iterations.png/.pdf`` (best objective vs
trial index, the warm-up shaded).

Usage::

    python -m paper_figures.real results/real_cpu
"""

from __future__ import annotations

import argparse
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import common  # noqa: E402
from paper_figures import synthetic  # noqa: E402
from paper_figures.style import color  # noqa: E402

__all__ = ["best_vs_iteration", "draw", "main"]


def best_vs_iteration(run: dict, n: int) -> np.ndarray:
    """Best objective after each of the first ``n`` trials (NaN past the run's end)."""
    y = np.array([t["y"] if t["y"] is not None else -np.inf for t in run["trials"]])
    best = np.maximum.accumulate(y)[:n]
    out = np.full(n, np.nan)
    out[: len(best)] = np.where(np.isfinite(best), best, np.nan)
    return out


def draw(results_dir: str, out_dir: str | None = None) -> list[str]:
    """Draw every pipeline's figures; returns the written paths."""
    runs_dir = os.path.join(results_dir, "runs")
    runs_dir = runs_dir if os.path.isdir(runs_dir) else results_dir
    out_dir = out_dir or os.path.join(results_dir, "figures")
    paths = synthetic.draw(runs_dir, out_dir)  # x axis: the budget, measured seconds here
    runs = common.read_runs(runs_dir)
    by_pipe: dict = {}
    for r in runs:
        by_pipe.setdefault(r["pipeline"], {}).setdefault(r["method"], []).append(r)
    for pipe, methods in sorted(by_pipe.items()):
        n = max(len(r["trials"]) for rs in methods.values() for r in rs)
        fig, ax = plt.subplots(figsize=(7, 4))
        for m in sorted(methods, key=lambda m: (m == "eeipu", m)):
            curves = np.stack([best_vs_iteration(r, n) for r in methods[m]])
            with warnings.catch_warnings():  # columns past every seed's end are all-NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(curves, axis=0)
            ax.plot(np.arange(1, n + 1), mean, label=m, color=color(m),
                    lw=2.2 if m == "eeipu" else 1.4)
        n_warm = max(r["n_warmup"] for rs in methods.values() for r in rs)
        ax.axvspan(0.5, n_warm + 0.5, color="k", alpha=0.06, lw=0, label="warm-up")
        ax.set_xlabel("trial")
        ax.set_ylabel("best objective")
        ax.set_title(f"{pipe}: best objective vs trial (mean over seeds)")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        for ext in ("png", "pdf"):
            p = os.path.join(out_dir, f"{pipe}_iterations.{ext}")
            fig.savefig(p, dpi=130)
            paths.append(p)
        plt.close(fig)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description="Draw the real-pipeline comparison's figures from a results directory.")
    ap.add_argument("results_dir")
    ap.add_argument("--out", default=None, help="output folder (default <results_dir>/figures)")
    args = ap.parse_args(argv)
    for p in draw(args.results_dir, args.out):
        print(p)


if __name__ == "__main__":
    main()

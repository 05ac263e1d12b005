"""Figures of a comparison: best objective vs consumed budget, iterations per method.

Reads the ``run_*.json`` files of a results directory (synthetic or real
pipelines: same format) and writes, per pipeline, ``<pipeline>.png`` and
``<pipeline>.pdf`` into ``<results>/figures`` (left: best objective so far vs
budget spent, mean over seeds with a +-1 standard-error band, one line per
method; right: BO iterations per method, mean +- standard error), plus
``summary.md`` (the table) in the same folder.

Usage::

    python -m paper_figures.synthetic results/synthetic_smoke
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments import common  # noqa: E402
from paper_figures.style import color  # noqa: E402

__all__ = ["best_vs_budget", "draw", "main"]



def best_vs_budget(run: dict, grid: np.ndarray) -> np.ndarray:
    """Best objective observed once ``grid`` budget has been spent (step function).

    Before the warm-up is complete the value is NaN.
    """
    spent = np.array([t["spent"] for t in run["trials"]])
    y = np.array([t["y"] if t["y"] is not None else -np.inf for t in run["trials"]])
    best = np.maximum.accumulate(y)
    n_warm = run["n_warmup"]
    idx = np.searchsorted(spent, grid, side="right") - 1
    out = np.where(idx >= n_warm - 1, best[np.clip(idx, 0, len(best) - 1)], np.nan)
    return out


def draw(results_dir: str, out_dir: str | None = None) -> list[str]:
    """Draw every pipeline's figure; returns the written paths."""
    runs = common.read_runs(results_dir)
    out_dir = out_dir or os.path.join(results_dir, "figures")
    os.makedirs(out_dir, exist_ok=True)
    by_pipe: dict = {}
    for r in runs:
        by_pipe.setdefault(r["pipeline"], {}).setdefault(r["method"], []).append(r)
    table = common.summarize(runs)
    paths = []
    for pipe, methods in sorted(by_pipe.items()):
        budget = max(r["budget"] for rs in methods.values() for r in rs)
        grid = np.linspace(0, budget, 400)
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw=dict(width_ratios=[2.2, 1]))
        order = sorted(methods, key=lambda m: (m == "eeipu", m))
        for m in order:
            curves = np.stack([best_vs_budget(r, grid) for r in methods[m]])
            # Drawn from the spend at which every seed has finished its warm-up,
            # so the mean is always over the same seeds.
            ok = np.isfinite(curves).all(0)
            filled = np.where(ok, curves, 0.0)
            mean = np.where(ok, filled.mean(0), np.nan)
            n = curves.shape[0]
            se = np.where(ok, filled.std(0, ddof=1) / np.sqrt(n), np.nan) if n > 1 else np.zeros_like(mean)
            c = color(m)
            ax.plot(grid, mean, label=m, color=c, lw=2.2 if m == "eeipu" else 1.4)
            ax.fill_between(grid, mean - se, mean + se, color=c, alpha=0.15, lw=0)
        opt = methods[order[0]][0].get("optimum")
        if opt is not None and np.isfinite(opt):
            ax.axhline(opt, color="k", ls=":", lw=1, label="optimum")
        ax.set_xlabel("budget spent")
        ax.set_ylabel("best objective")
        ax.set_title(f"{pipe}: best objective vs budget (mean ± s.e.)")
        ax.legend(fontsize=8, loc="lower right")
        rows = table[pipe]
        names = [m for m in order]
        vals = [rows[m]["iterations"] for m in names]
        errs = [rows[m]["iterations_se"] if np.isfinite(rows[m]["iterations_se"]) else 0 for m in names]
        bx.bar(names, vals, yerr=errs, color=[color(m) for m in names], capsize=3)
        bx.set_ylabel("BO iterations within budget")
        bx.set_title("candidates evaluated")
        bx.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        for ext in ("png", "pdf"):
            p = os.path.join(out_dir, f"{pipe}.{ext}")
            fig.savefig(p, dpi=130)
            paths.append(p)
        plt.close(fig)
    md = common.format_table(table, common.headline(table))
    p = os.path.join(out_dir, "summary.md")
    with open(p, "w") as f:
        f.write(md + "\n")
    paths.append(p)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description="Draw comparison figures from a results directory.")
    ap.add_argument("results_dir")
    ap.add_argument("--out", default=None, help="output folder (default <results_dir>/figures)")
    args = ap.parse_args(argv)
    for p in draw(args.results_dir, args.out):
        print(p)


if __name__ == "__main__":
    main()

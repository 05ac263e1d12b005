"""Where the regret of a synthetic run lives: per-stage regret of each run's best point.

The synthetic objective is a sum of one test function per stage, so the regret
of the best point found, ``optimum - y(x_best)``, splits exactly into per-stage
terms ``f_s* - f_s(x_best,s)``. This table tells whether a method's shortfall
comes from a stage that it searched badly or from a stage whose optimum no method
finds (e.g. ``hartmann3`` on ``[-2, 2]^3``: the function is numerically zero
outside the sub-cube ``[0, 1]^3``, 1/64 of the box, so its peak is found by
chance rather than by a surrogate model).

Usage::

    python -m paper_figures.stage_regret results/synthetic_paper        # prints and writes stage_regret.md
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from experiments import common

__all__ = ["stage_regret", "format_stage_regret", "main"]


def stage_regret(runs) -> dict:
    """``{pipeline: {method: dict(mean=(K,), found=(K,), n=int)}}``.

    ``mean`` is the mean over runs of each stage's regret at the run's best
    trial; ``found`` the fraction of runs whose best trial is "near" the stage
    optimum: regret below 10% of the regret at the box centre (a scale-free
    indicator).
    """
    import jax.numpy as jnp

    from pipelines.synthetic import get_pipeline

    out: dict = {}
    for r in runs:
        pipe = get_pipeline(r["pipeline"])
        opt = np.asarray(pipe.stage_optima)
        ys = np.array([t["y"] if t["y"] is not None else -np.inf for t in r["trials"]])
        best = r["trials"][int(np.argmax(ys))]
        vals = np.asarray(pipe.stage_values_raw(jnp.asarray(best["x"], jnp.float32)))
        lo, hi = pipe._columns()
        centre = np.asarray(pipe.stage_values_raw(jnp.asarray((lo + hi) / 2, jnp.float32)))
        reg = opt - vals
        scale = np.maximum(opt - centre, 1e-9)
        d = out.setdefault(r["pipeline"], {}).setdefault(r["method"], {"reg": [], "found": []})
        d["reg"].append(reg)
        d["found"].append(reg < 0.1 * scale)
    table = {}
    for p, by_m in out.items():
        table[p] = {}
        for m, d in by_m.items():
            reg = np.array(d["reg"])
            table[p][m] = dict(mean=reg.mean(0), found=np.array(d["found"]).mean(0), n=len(reg))
    return table


def format_stage_regret(table) -> str:
    from pipelines.synthetic import get_pipeline

    lines = []
    for p in sorted(table):
        fns = get_pipeline(p).functions
        lines.append(f"**{p}**: mean regret of the best point per stage (fraction of runs within 10% of the stage optimum)\n")
        lines.append("| method | " + " | ".join(f"{s}: {f}" for s, f in enumerate(fns)) + " |")
        lines.append("|---|" + "---|" * len(fns))
        for m in sorted(table[p]):
            row = table[p][m]
            cells = [f"{v:.2f} ({100 * fr:.0f}%)" for v, fr in zip(row["mean"], row["found"])]
            lines.append(f"| {m} ({row['n']}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m paper_figures.stage_regret", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results directory (with runs/)")
    args = ap.parse_args(argv)
    runs = [r for r in common.read_runs(args.results) if r["pipeline"].startswith("synthetic")]
    md = format_stage_regret(stage_regret(runs))
    print(md)
    with open(os.path.join(args.results, "stage_regret.md"), "w") as f:
        f.write(md + "\n")


if __name__ == "__main__":
    main()

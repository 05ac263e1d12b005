"""Cold GP refits with 1, 2, 4 or 8 vmapped restarts: final loss and seconds per ask.

A cold refit (every ``refit_every``-th refit of the hyperparameters) fits the GP hyperparameters from
``GPConfig.restarts`` fresh starts under ``vmap``: the default point and
random draws. This script measures what more starts buy and cost:

* **Fit quality.** For several synthetic data sets (the paper's 3-stage
  objective and ln stage costs, a smooth 10-d objective, and draws from a
  Matern-5/2 GP with known hyperparameters) at n = 20, 50, 100 points, a cold
  ``gp.fit`` (100 Adam steps, the default) with R starts, for 5 keys; the
  final loss (negative log posterior per point, lower is better) relative to
  the best loss any R found on that data set and key.
* **Cost.** EEIPU ``ask`` on the 10-d, 3-stage problem of
  ``benchmarks/ask_overhead.py`` at n = 50 and 100: the median warm ask and
  the median cold ask (a refit made due with ``n_refits`` set to a multiple of
  ``refit_every``; the warm ask one past it) for each R. The number of starts
  is static, so warm fits run R copies too.

Usage:
    python benchmarks/gp_restarts.py [--repeats 15]

Prints a table and writes benchmarks/results/gp_restarts.{json,md}.
Wall-clock numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from eeipu_jax import gp, loop
from eeipu_jax.space import Float, SearchSpace, StageSpace

RESTARTS = (1, 2, 4, 8)
SIZES = (20, 50, 100)


def _datasets(n: int, seed: int):
    """``{name: (X, y)}`` unit-cube inputs and raw targets."""
    from pipelines.synthetic import get_pipeline

    rng = np.random.default_rng(seed)
    out = {}
    pipe = get_pipeline("synthetic3")
    U = rng.uniform(size=(n, pipe.dim)).astype(np.float32)
    out["synthetic3 objective"] = (U, np.asarray(jax.vmap(pipe.objective)(jnp.asarray(U)), np.float64))
    costs = np.asarray(jax.vmap(pipe.stage_costs)(jnp.asarray(U)), np.float64)
    out["synthetic3 ln cost, stage 2"] = (U, np.log(costs[:, 1]))
    X = rng.uniform(size=(n, 10)).astype(np.float32)
    out["smooth 10-d"] = (X, -np.sum((X - 0.3) ** 2, axis=-1) + 0.1 * np.sin(7 * X[:, 0]))
    Z = rng.uniform(size=(n, 3))
    ls = np.array([0.15, 0.4, 1.0])
    d = np.sqrt(((Z[:, None, :] / ls - Z[None, :, :] / ls) ** 2).sum(-1))
    a = np.sqrt(5.0) * d
    K = (1 + a + a * a / 3) * np.exp(-a) + 1e-3 * np.eye(n)
    out["GP draw, 3-d"] = (Z.astype(np.float32), np.linalg.cholesky(K) @ rng.normal(size=n))
    return out


def fit_quality(keys_per_set: int = 5):
    rows = []
    fits = {R: jax.jit(gp.fit, static_argnums=(5,)) for R in RESTARTS}
    for n in SIZES:
        for name, (X, y) in _datasets(n, seed=n).items():
            mask = jnp.ones(n, bool)
            ys, _, _ = gp.standardize(jnp.asarray(y, jnp.float32), mask)
            losses = np.zeros((len(RESTARTS), keys_per_set))
            for i, R in enumerate(RESTARTS):
                cfg = dataclasses.replace(gp.GPConfig(), restarts=R)
                init = gp.default_params(X.shape[1], cfg)
                for k in range(keys_per_set):
                    _, loss = fits[R](jax.random.key(k), init, jnp.asarray(X), ys, mask, cfg, None, True)
                    losses[i, k] = float(loss)
            best = losses.min(axis=0)
            for i, R in enumerate(RESTARTS):
                gap = losses[i] - best
                rows.append(dict(data=name, n=n, restarts=R, mean_loss=float(losses[i].mean()),
                                 mean_gap=float(gap.mean()), max_gap=float(gap.max())))
    return rows


def _space(d: int = 10, k: int = 3) -> SearchSpace:
    per = np.array_split(np.arange(d), k)
    return SearchSpace([StageSpace(f"s{i}", [Float(f"x{j}", 0.0, 1.0) for j in cols]) for i, cols in enumerate(per)])


def ask_cost(repeats: int):
    space = _space()
    soc = np.asarray(space.stage_of_column)
    rows = []
    for R in RESTARTS:
        cfg = loop.BOConfig.from_space(space, method="eeipu", gp=gp.GPConfig(restarts=R))
        for n in (50, 100):
            rng = np.random.default_rng(0)
            state = loop.init(cfg, budget=1e9, capacity=loop.capacity_for(n + 1))
            for _ in range(n):
                x = rng.uniform(size=space.dim)
                c = np.stack([1.0 + 3.0 * x[soc == k].mean() for k in range(3)])
                state = loop.tell(state, x, float(-np.sum((x - 0.3) ** 2) + 0.1 * np.sin(7 * x[0])), c, 0)
            out = {}
            for label, n_refits in (("warm", 1), ("cold", cfg.refit_every)):
                # a refit due at every ask (the last one at one trial), cold or warm by the refit count
                s = state._replace(n_fit=jnp.asarray(1, jnp.int32), n_refits=jnp.asarray(n_refits, jnp.int32))
                jax.block_until_ready(loop.ask(jax.random.key(0), s, cfg))  # compile / warm caches
                times = []
                for r in range(repeats):
                    t0 = time.perf_counter()
                    jax.block_until_ready(loop.ask(jax.random.key(r + 1), s, cfg))
                    times.append(time.perf_counter() - t0)
                out[label] = float(np.median(times))
            rows.append(dict(restarts=R, n=n, warm_median_s=out["warm"], cold_median_s=out["cold"],
                             cold_over_warm=out["cold"] / out["warm"]))
            print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "gp_restarts.json"))
    args = ap.parse_args()

    quality = fit_quality()
    by = {}
    for r in quality:
        by.setdefault(r["restarts"], []).append(r)
    lines = ["# Cold GP refits: restarts vs final loss and ask time", "",
             "Command: `PYTHONPATH=. python benchmarks/gp_restarts.py`", "",
             f"jax {jax.__version__}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); "
             "wall-clock times depend on the machine and its load.", "",
             "## Final loss of a cold fit (per point; gap to the best over all R, same data and key)", "",
             "| data | n | R=1 gap | R=2 gap | R=4 gap | R=8 gap |", "|---|---|---|---|---|---|"]
    keyed = {(r["data"], r["n"], r["restarts"]): r for r in quality}
    for n in SIZES:
        for name in dict.fromkeys(r["data"] for r in quality):
            cells = [f"{keyed[(name, n, R)]['mean_gap']:.4f} (max {keyed[(name, n, R)]['max_gap']:.3f})"
                     for R in RESTARTS]
            lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "Mean gap over all data sets: " + ", ".join(
        f"R={R}: {np.mean([r['mean_gap'] for r in by[R]]):.4f}" for R in RESTARTS), ""]
    print("\n".join(lines), flush=True)

    cost = ask_cost(args.repeats)
    lines += ["## EEIPU ask (d=10, K=3; objective + 3 cost GPs), median seconds", "",
              "| R | n | warm ask | cold ask | cold / warm |", "|---|---|---|---|---|"]
    for r in cost:
        lines.append(f"| {r['restarts']} | {r['n']} | {r['warm_median_s']:.4f} | {r['cold_median_s']:.4f} | "
                     f"{r['cold_over_warm']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(jax=jax.__version__, cpu_count=os.cpu_count(), quality=quality, ask_cost=cost), f, indent=1)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

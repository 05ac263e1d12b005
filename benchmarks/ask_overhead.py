"""Seconds per ``ask`` (all GP fits + candidate scoring + refinement) vs data size.

Setting: d = 10 hyperparameters in K = 3 stages, n = 20, 50, 100, 200 observations
of a smooth synthetic objective with stage costs, EEIPU (objective GP + 3 stage-cost
GPs, 512 + 5 x 2 x 32 candidates, 4 refined). For each n the state is filled to n
rows, ``ask`` is compiled once (timed separately), then called ``--repeats`` times
with fresh keys on the same state: the mean includes the periodic cold refits
(every ``refit_every`` asks, 100 Adam steps from a fresh start) at their real rate,
the median is the warm-start ask.

Usage:
    python benchmarks/ask_overhead.py [--repeats 20] [--method eeipu]

Prints a table and writes benchmarks/results/ask_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from eeipu_jax import loop
from eeipu_jax.space import Float, SearchSpace, StageSpace


def make_space(d: int = 10, k: int = 3) -> SearchSpace:
    per = np.array_split(np.arange(d), k)
    return SearchSpace([StageSpace(f"s{i}", [Float(f"x{j}", 0.0, 1.0) for j in cols]) for i, cols in enumerate(per)])


def objective(X):
    return -np.sum((X - 0.3) ** 2, axis=-1) + 0.1 * np.sin(7 * X[..., 0])


def stage_costs(X, soc):
    soc = np.asarray(soc)
    return np.stack([1.0 + 3.0 * X[..., soc == k].mean(-1) for k in range(soc.max() + 1)], -1)


def _compiled_asks() -> int:
    """Number of compiled variants of the jitted ask (its compilation cache size)."""
    return loop._ask._cache_size()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 100, 200])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--method", default="eeipu")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "ask_overhead.json"))
    args = ap.parse_args()

    space = make_space()
    cfg = loop.BOConfig.from_space(space, method=args.method)

    rows = []
    rng = np.random.default_rng(0)
    for n in args.sizes:
        X = rng.uniform(size=(n, space.dim))
        state = loop.init(cfg, budget=1e9, capacity=loop.capacity_for(n + 1))
        for x, y, c in zip(X, objective(X), stage_costs(X, space.stage_of_column)):
            state = loop.tell(state, x, float(y), c, 0)
        before = _compiled_asks()
        t0 = time.perf_counter()
        prop, _ = loop.ask(jax.random.key(0), state, cfg)
        jax.block_until_ready(prop)
        compile_s = time.perf_counter() - t0
        times = []
        s = state
        for r in range(args.repeats):
            t0 = time.perf_counter()
            prop, s = loop.ask(jax.random.key(r + 1), s, cfg)
            jax.block_until_ready(prop)
            times.append(time.perf_counter() - t0)
        rows.append(
            dict(
                n=n,
                capacity=int(state.X.shape[0]),
                first_call_s=compile_s,
                mean_s=float(np.mean(times)),
                median_s=float(np.median(times)),
                max_s=float(np.max(times)),
                compilations=_compiled_asks() - before,
            )
        )

    print(f"ask overhead: method={args.method}, d={space.dim}, K={space.n_stages}, "
          f"{args.repeats} asks per size, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, jax {jax.__version__}")
    print(f"{'n':>5} {'capacity':>8} {'compile+1st (s)':>16} {'mean (s)':>9} {'median (s)':>11} "
          f"{'max (s)':>8} {'compiles':>9}")
    for r in rows:
        print(f"{r['n']:>5} {r['capacity']:>8} {r['first_call_s']:>16.2f} {r['mean_s']:>9.3f} "
              f"{r['median_s']:>11.3f} {r['max_s']:>8.3f} {r['compilations']:>9}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(method=args.method, d=space.dim, K=space.n_stages, repeats=args.repeats,
                       jax=jax.__version__, cpu_count=os.cpu_count(), rows=rows), f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Seconds per ``ask`` (all GP fits + candidate scoring + refinement) vs data size.

Setting (benchmarks/bo_step_problem.py): d = 10 hyperparameters in K = 3 stages,
n = 20, 50, 100, 200, 500, 1000 observations of a smooth synthetic objective with
stage costs, EEIPU (objective GP + 3 stage-cost GPs, 512 + 5 x 2 x 32 candidates,
4 refined per memo depth). For each n the state is filled to n rows at capacity
``capacity_for(n + 1)``, ``ask`` is compiled and called once (timed separately:
compile + first call, a cold fit), then called ``--repeats`` times with fresh
keys, each on the state the previous one returned. The GPs are refitted from
fresh starts every ``refit_every`` (10) asks, so with 20 repeats the mean holds
the cold refits at their real rate, the median is a warm-start ask and the max
is a cold refit ("cold" counts the timed asks that refitted cold; the first
call, n_bo = 0, is one too). "variants" is the number of compiled versions of the jitted
ask after that size (one per capacity bucket: it must grow by one per size).

Usage:
    python benchmarks/ask_overhead.py [--sizes 20 50 ...] [--repeats 20] [--method eeipu]

Prints a table and writes benchmarks/results/ask_overhead.{json,md}. Wall-clock
figures from a shared machine are indicative (the load average is recorded).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bo_step_problem import arg_parser, filled_state, machine, machine_line, make_space, write_results  # noqa: E402,E501
from eeipu_jax import loop  # noqa: E402


def _compiled_asks() -> int:
    """Number of compiled variants of the jitted ask (its compilation cache size)."""
    return loop._ask._cache_size()


def time_asks(cfg, state, repeats: int):
    """``(first_call_s, [seconds of each later ask], new variants)`` on ``state``."""
    before = _compiled_asks()
    t0 = time.perf_counter()
    prop, s = loop.ask(jax.random.key(0), state, cfg)
    jax.block_until_ready(prop)
    first = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        prop, s = loop.ask(jax.random.key(r + 1), s, cfg)
        jax.block_until_ready(prop)
        times.append(time.perf_counter() - t0)
    return first, times, _compiled_asks() - before


def table(rows) -> list[str]:
    head = (f"| {'n':>5} | {'capacity':>8} | {'compile+1st (s)':>15} | {'median (s)':>10} | {'mean (s)':>8} "
            f"| {'max (s)':>8} | {'cold':>4} | {'new variants':>12} | {'variants':>8} |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        lines.append(f"| {r['n']:>5} | {r['capacity']:>8} | {r['first_call_s']:>15.2f} | {r['median_s']:>10.3f} "
                     f"| {r['mean_s']:>8.3f} | {r['max_s']:>8.3f} | {r['cold_timed']:>4} | {r['new_variants']:>12} "
                     f"| {r['variants']:>8} |")
    return lines


def main():
    ap = arg_parser(__doc__, "ask_overhead", [20, 50, 100, 200, 500, 1000], 20, "timed asks per size")
    ap.add_argument("--method", default="eeipu")
    args = ap.parse_args()
    if args.repeats < 1 or any(n < 1 for n in args.sizes):
        ap.error("--repeats and every size must be >= 1")

    space = make_space()
    cfg = loop.BOConfig.from_space(space, method=args.method)
    rows = []
    for n in args.sizes:
        state = filled_state(cfg, space, n)
        first, times, new = time_asks(cfg, state, args.repeats)
        rows.append(dict(n=n, capacity=int(state.X.shape[0]), first_call_s=first,
                         median_s=float(np.median(times)), mean_s=float(np.mean(times)),
                         max_s=float(np.max(times)), new_variants=new, variants=_compiled_asks(),
                         # the k-th timed ask runs with n_bo = k: cold when k % refit_every == 0
                         cold_timed=sum(k % cfg.refit_every == 0 for k in range(1, args.repeats + 1))))
        print(f"  n={n}: median {rows[-1]['median_s']:.3f} s", flush=True)

    info = machine()
    title = (f"ask overhead: method={args.method}, d={space.dim}, K={space.n_stages}, {args.repeats} asks per size "
             f"after the first, refit_every={cfg.refit_every}")
    lines = table(rows)
    print(title)
    print(machine_line(info))
    print("\n".join(lines))
    write_results(args.out, dict(method=args.method, d=space.dim, K=space.n_stages, repeats=args.repeats,
                                 refit_every=cfg.refit_every, machine=info, rows=rows),
                  "ask overhead", [f"{title}.", "", f"{machine_line(info)}.", "", *lines])

if __name__ == "__main__":
    main()

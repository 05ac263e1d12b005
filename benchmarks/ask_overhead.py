"""Seconds per ``ask`` (surrogate update + candidate scoring + refinement) vs data size.

Setting (benchmarks/bo_step_problem.py): d = 10 hyperparameters in K = 3 stages,
n = 20, 50, 100, 200, 500, 1000 observations of a smooth synthetic objective with
stage costs, EEIPU (objective GP + 3 stage-cost GPs, 512 + 5 x 2 x 32 candidates,
4 refined per memo depth). For each n the state is filled to n rows at capacity
``capacity_for(n + 1)`` and then run as a study runs it:

* ``compile+1st``: compilation of ``ask`` for the bucket plus its first call
  (the first ask of a state refits the hyperparameters, cold);
* ``--repeats`` rounds of ``ask`` then ``tell`` (the proposal, with the
  benchmark's objective and stage costs) with fresh keys: the trials grow by
  one per round, the kept Cholesky factors take one row per ask, and the
  hyperparameters are refitted whenever the schedule says so
  (``refit_growth``; "refits" counts them). Median, mean and max of these asks,
  and the median ``tell``;
* ``cold refit`` / ``warm refit``: the median of 3 asks on the same state with a
  refit forced due (``bo_step_problem.refit_due``): what the asks that refit cost,
  whenever the schedule reaches them. ``cold / median`` is the ratio of the
  slowest kind of ask to the usual one.

Before the sizes, the first ``ask`` of a fresh run (a warm-up proposal, the
first JAX work of the process) is timed: "first ask of a run".

The capacity buckets a study of ``--study`` trials crosses are listed with the
compile time of each (``compile+1st`` minus a cold refit), so the one-off cost of
growing is visible next to the per-ask cost. "variants" is the number of
compiled versions of the jitted ask after that size (one per capacity bucket).

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

from bo_step_problem import (arg_parser, filled_state, machine, machine_line, make_space, objective,  # noqa: E402
                             refit_due, stage_costs, write_results)
from eeipu_jax import loop  # noqa: E402


def _compiled_asks() -> int:
    """Number of compiled variants of the jitted ask (its compilation cache size)."""
    return loop.compiled_asks()


def _timed_ask(key, state, cfg):
    t0 = time.perf_counter()
    prop, s = loop.ask(key, state, cfg)
    jax.block_until_ready((prop, s))
    return time.perf_counter() - t0, prop, s


def time_study(cfg, state, repeats: int):
    """The asks of a study from ``state``: see the module doc.

    Returns:
        A dict of timings (seconds) and counts for one size.
    """
    soc = np.asarray(cfg.stage_of_column)
    before = _compiled_asks()
    first, _, s = _timed_ask(jax.random.key(0), state, cfg)
    asks, tells, refits = [], [], 0
    for r in range(repeats):
        n_refits = int(s.n_refits)
        t, prop, s = _timed_ask(jax.random.key(r + 1), s, cfg)
        asks.append(t)
        refits += int(s.n_refits) > n_refits
        x = np.asarray(prop.x, np.float64)
        t0 = time.perf_counter()
        s = loop.tell(s, x, float(objective(x)), stage_costs(x, soc), int(prop.memo_depth))
        jax.block_until_ready(s)
        tells.append(time.perf_counter() - t0)
    cold = float(np.median([_timed_ask(jax.random.key(900 + r), refit_due(s, True), cfg)[0] for r in range(3)]))
    warm = float(np.median([_timed_ask(jax.random.key(950 + r), refit_due(s, False), cfg)[0] for r in range(3)]))
    median = float(np.median(asks))
    return dict(first_call_s=first, compile_s=max(first - cold, 0.0), median_s=median, mean_s=float(np.mean(asks)),
                max_s=float(np.max(asks)), refits=refits, cold_refit_s=cold, warm_refit_s=warm,
                cold_over_median=cold / median, tell_s=float(np.median(tells)),
                new_variants=_compiled_asks() - before)


def table(rows) -> list[str]:
    cols = [("n", 5, "d", "n"), ("capacity", 8, "d", "capacity"), ("compile+1st (s)", 15, ".2f", "first_call_s"),
            ("median (s)", 10, ".3f", "median_s"), ("mean (s)", 8, ".3f", "mean_s"), ("max (s)", 8, ".3f", "max_s"),
            ("refits", 6, "d", "refits"), ("cold refit (s)", 14, ".3f", "cold_refit_s"),
            ("warm refit (s)", 14, ".3f", "warm_refit_s"), ("cold / median", 13, ".1f", "cold_over_median"),
            ("tell (s)", 8, ".4f", "tell_s"), ("variants", 8, "d", "variants")]
    lines = ["| " + " | ".join(f"{name:>{w}}" for name, w, _, _ in cols) + " |",
             "|" + "|".join("-" * (w + 2) for _, w, _, _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:>{w}{f}}" for _, w, f, k in cols) + " |")
    return lines


def buckets_of_study(rows, n_trials: int, cfg) -> tuple[list[str], dict]:
    """The capacities a study of ``n_trials`` trials compiles ``ask`` for, with the
    compile times measured here (the nearest measured capacity where one is missing)."""
    caps, c = [], loop.capacity_for(cfg.n_warmup + 1)
    while c < n_trials + 1:
        caps.append(c)
        c = loop.capacity_for(c + 1)
    caps.append(c)
    measured = {r["capacity"]: r["compile_s"] for r in rows}
    lines, total = [], 0.0
    for c in caps:
        near = min(measured, key=lambda m: abs(np.log2(m / c)))
        total += measured[near]
        lines.append(f"{c} ({measured[near]:.1f} s{'' if near == c else f', as measured at {near}'})")
    return lines, dict(capacities=caps, total_compile_s=total)


def main():
    ap = arg_parser(__doc__, "ask_overhead", [20, 50, 100, 200, 500, 1000], 20, "ask/tell rounds per size")
    ap.add_argument("--method", default="eeipu")
    ap.add_argument("--study", type=int, default=1000, help="trials of the study whose capacity buckets are listed")
    args = ap.parse_args()
    if args.repeats < 1 or any(n < 12 for n in args.sizes):
        ap.error("--repeats must be >= 1 and every size >= 12 (past the 10 warm-up trials)")

    space = make_space()
    cfg = loop.BOConfig.from_space(space, method=args.method)
    first_warmup, _, _ = _timed_ask(jax.random.key(0), loop.init(cfg, budget=1e9), cfg)
    first_line = f"First ask of a run (a warm-up proposal, compilation included): {first_warmup:.2f} s."
    print(f"  {first_line}", flush=True)
    rows = []
    for n in args.sizes:
        state = filled_state(cfg, space, n)
        r = time_study(cfg, state, args.repeats)
        rows.append(dict(n=n, capacity=int(state.X.shape[0]), variants=_compiled_asks(), **r))
        print(f"  n={n}: median {r['median_s']:.3f} s, cold refit {r['cold_refit_s']:.3f} s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)

    info = machine()
    title = (f"ask overhead: method={args.method}, d={space.dim}, K={space.n_stages}, {args.repeats} ask/tell rounds "
             f"per size after the first ask, refit_growth={loop.default_params(cfg).refit_growth}, refit_every={cfg.refit_every} "
             f"(every refit_every-th refit is cold), fit_rows={cfg.fit_rows}")
    lines = table(rows)
    bucket_lines, study = buckets_of_study(rows, args.study, cfg)
    study_line = (f"A study of {args.study} trials compiles ask for {len(study['capacities'])} capacities: "
                  f"{', '.join(bucket_lines)}; {study['total_compile_s']:.0f} s of compilation in all "
                  f"(without the persistent compilation cache).")
    print(title)
    print(machine_line(info))
    print("\n".join(lines))
    print(study_line)
    print(first_line)
    write_results(args.out, dict(method=args.method, d=space.dim, K=space.n_stages, repeats=args.repeats,
                                 first_warmup_ask_s=first_warmup,
                                 refit_growth=loop.default_params(cfg).refit_growth, refit_every=cfg.refit_every, fit_rows=cfg.fit_rows,
                                 machine=info, rows=rows, study=dict(trials=args.study, **study)),
                  "ask overhead", [f"{title}.", "", f"{machine_line(info)}.", "", *lines, "", study_line, "", first_line])


if __name__ == "__main__":
    main()

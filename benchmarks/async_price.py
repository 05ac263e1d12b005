"""The price of asynchrony in simulation: W workers against one, at the same summed-cost budget.

Runs :func:`eeipu_jax.simulate.run_async` on a synthetic pipeline (simulated
stage costs, so the times below are simulated seconds, not wall-clock
measurements, and do not depend on the machine) for ``--workers`` W and
``--seeds`` seeds, and reports per W:

* the best objective when the summed-cost budget is spent (the price of
  asynchrony: each of W workers asks without the results of the W - 1
  running trials),
* the simulated makespan (time the last trial ends) and its speed-up
  against W = 1,
* the best objective at the simulated time W = 1 needed to spend half of its
  budget (best objective at equal time),
* trials run, memoized trials, trials that reused a running trial's prefix
  and their total wait.

Usage::

    python benchmarks/async_price.py                       # synthetic3, EEIPU, W = 1 2 4, 3 seeds
    python benchmarks/async_price.py --workers 1 4 --seeds 2 --budget 150 --method ei

Writes ``benchmarks/results/async_price.json`` and ``.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="synthetic3")
    ap.add_argument("--method", default="eeipu")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=None, help="summed-cost budget (default: the pipeline's)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "async_price"))
    args = ap.parse_args(argv)

    import jax

    from eeipu_jax import loop, simulate
    from eeipu_jax.cpu import pin_xla_threads
    from pipelines.synthetic import get_pipeline

    pin_xla_threads()
    pipe = get_pipeline(args.pipeline)
    budget = float(pipe.budget if args.budget is None else args.budget)
    cfg = loop.BOConfig.from_space(pipe.space, method=args.method)
    runs = {}
    for w in args.workers:
        for s in range(args.seeds):
            r = simulate.run_async(jax.random.key(s), pipe, cfg, budget, w)
            runs[(w, s)] = r
            print(f"W={w} seed={s}: {len(r.y)} trials, best {np.max(r.y):.4f}, makespan {r.end.max():.1f}",
                  flush=True)

    def half_time(s):  # simulated time at which W = 1 had spent half its budget
        r = runs[(min(args.workers), s)]
        spent = np.cumsum(r.charged[np.argsort(r.end)])
        return float(np.sort(r.end)[np.searchsorted(spent, 0.5 * budget)])

    rows = []
    base = {s: runs[(min(args.workers), s)].end.max() for s in range(args.seeds)}
    for w in args.workers:
        rs = [runs[(w, s)] for s in range(args.seeds)]
        rows.append({
            "workers": w,
            "best_at_budget": [float(np.max(r.y)) for r in rs],
            "makespan": [float(r.end.max()) for r in rs],
            "speedup": [float(base[s] / runs[(w, s)].end.max()) for s in range(args.seeds)],
            "best_at_half_time_of_w1": [runs[(w, s)].best_at(half_time(s)) for s in range(args.seeds)],
            "trials": [len(r.y) for r in rs],
            "memoized": [int(np.sum(r.memo_depth > 0)) for r in rs],
            "from_running_prefix": [int(np.sum(r.from_pending)) for r in rs],
            "wait": [float(np.sum(r.wait)) for r in rs],
            "misses": [r.n_misses for r in rs],
        })
    result = {"pipeline": args.pipeline, "method": args.method, "budget": budget, "seeds": args.seeds,
              "command": "python benchmarks/async_price.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": rows}

    def ms(v):
        return f"{np.mean(v):.4g} ± {np.std(v):.2g}"

    lines = [
        f"# Price of asynchrony (simulated): {args.pipeline}, {args.method}, budget {budget:g}, "
        f"{args.seeds} seeds",
        "",
        f"`{result['command']}`. Simulated stage costs: times are simulated seconds (machine-independent).",
        "",
        "| W | best at budget | makespan | speed-up vs W=1 | best at W=1's half-budget time | trials | memoized"
        " | from a running prefix | wait | misses |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {ms(r['best_at_budget'])} | {ms(r['makespan'])} | {ms(r['speedup'])} | "
            f"{ms(r['best_at_half_time_of_w1'])} | {ms(r['trials'])} | {ms(r['memoized'])} | "
            f"{ms(r['from_running_prefix'])} | {ms(r['wait'])} | {sum(r['misses'])} |"
        )
    md = "\n".join(lines) + "\n"
    print(md)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    return result


if __name__ == "__main__":
    main()

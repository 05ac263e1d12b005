"""Parallel trials on Ray: throughput, best objective against wall time, and the price of asynchrony.

The pipeline is a three-stage synthetic layout
(``hartmann3[0,1]-beale2[0,1]-hartmann3[0,1]``: stage costs of low spread, so
the last trials of a run do not leave workers idle for long) whose stages
SLEEP their simulated cost times ``--scale`` (:func:`pipelines.sleepy.sleepy`), so W workers need no W
cores. For each method (EEIPU, EI, EIPS) and W in ``--workers`` one
:class:`eeipu_jax.Study` runs until its budget of summed trial seconds
(``--budget``: the sum of every trial's charged seconds, whatever W) is
spent. W = 1 is the single-process loop (no Ray); W > 1 runs on a local Ray
with ``--ray-cpus`` logical CPUs (sleeping trials need none of the cores).

Reported per (method, W):

* ``trials/s``: trials per wall second of the run (from the first trial's
  start to the last trial's end), and the speed-up against W = 1;
* ``dup``: duplicated stage computations
  (:func:`eeipu_jax.runtime.driver.duplicate_computations`; target 0);
* ``best@wall``: the best objective found within the wall time the largest W
  took (equal wall time: does more workers find better points sooner?);
* ``best@budget``: the best objective once the summed-seconds budget is spent
  (equal summed cost: the price of asynchrony is W = 1's value minus this);
* ``util``: summed trial seconds over ``W`` x wall seconds, the share of
  worker time spent in trials (a trials/s speed-up also reflects the trial
  mix, which changes with W for a memoizing method);
* the wall seconds and trials of the run, and the memoized trials.

The optimizer runs with ``--bo`` settings cheaper than the defaults
(``n_random=256, mc_samples=64, n_refine=0``) so that one driver keeps 8
workers fed on a 2-core machine; its seconds are not charged to the budget.

Usage::

    PYTHONPATH=. python benchmarks/parallel.py --seeds 0 1      # ~40 minutes on the 2-core machine
    PYTHONPATH=. python benchmarks/parallel.py --methods eeipu --workers 1 2 --budget 20   # a quick look

Writes ``benchmarks/results/parallel.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BO = dict(n_random=256, mc_samples=64, n_refine=0)
# Three stages with costs of low spread (a random trial costs 7.5 to 9.9 units, 5th to 95th percentile;
# synthetic3's range over 5 to 181), so a run's last trials do not leave the other workers idle for long.
LAYOUT = "hartmann3[0,1]-beale2[0,1]-hartmann3[0,1]"


def _best_until(records: list[dict], t0: float, wall: float) -> float:
    ys = [r["y"] for r in records if r["status"] == "ok" and r["time"] - t0 <= wall]
    return float(max(ys)) if ys else float("nan")


def run_one(method: str, workers: int, seed: int, budget: float, scale: float, n_warmup: int, root: str,
            warm_trials: int, layout: str) -> dict:
    from eeipu_jax.runtime import Study
    from eeipu_jax.runtime.driver import duplicate_computations
    from eeipu_jax.runtime.records import read_trials
    from pipelines.sleepy import sleepy

    def optimize(study, **kw):
        if workers == 1:
            return study.optimize(**kw)
        return study.optimize(workers=workers, resources={"num_cpus": 1}, **kw)

    # Untimed first: the same study at a negligible sleep, so the optimizer's compilations (one per
    # pending capacity W and state capacity bucket; the space is the same) happen before the timed run.
    warm = Study.create(os.path.join(root, f"warm-{method}-w{workers}-s{seed}"), sleepy(layout, 1e-4),
                        method, 1e9, seed, n_warmup=n_warmup, bo=BO)
    optimize(warm, max_trials=warm_trials)
    pipeline = sleepy(layout, scale)
    out = os.path.join(root, f"{method}-w{workers}-s{seed}")
    study = Study.create(out, pipeline, method, budget, seed, n_warmup=n_warmup, bo=BO)
    t0 = time.time()
    summary = optimize(study)
    records = read_trials(os.path.join(out, "trials.jsonl"))
    # the run starts when its first trial starts (Ray's actors start before it, untimed)
    start = min(r["time"] - r["trial_seconds"] for r in records)
    end = max(r["time"] for r in records)
    # equal summed cost: the trials up to the first whose cumulative charge reaches the budget (as
    # in a sequential run; those in flight then finish and are recorded, but are not counted here)
    upto = next((i for i, r in enumerate(records) if r["spent"] >= budget), len(records) - 1)
    best_budget = float(max((r["y"] for r in records[: upto + 1] if r["status"] == "ok"), default=float("nan")))
    # while the budget lasts every worker is kept busy; after it, the trials in flight drain
    busy = records[upto]["time"] - start
    return {
        "method": method, "workers": workers, "seed": seed,
        "trials": len(records), "wall": end - start, "setup": start - t0,
        "trials_per_second": len(records) / (end - start),
        "busy_trials_per_second": (upto + 1) / busy,
        "spent": summary["spent"], "memoized": summary["n_memoized"],
        "dup": duplicate_computations(records, pipeline.n_stages),
        "waited": summary.get("parallel", {}).get("waited_for_prefix", 0),
        "best_budget": best_budget,
        "curve": [[r["time"] - start, r["y"] if r["status"] == "ok" else None, r["spent"]] for r in records],
        "start": start,
    }


def _markdown(res: dict) -> str:
    lines = [
        f"Pipeline: {res['layout']} with stages sleeping {res['scale']:g} s per cost unit; budget {res['budget']:g} "
        f"summed trial seconds; n_warmup {res['n_warmup']}; seeds {res['seeds']}; optimizer settings {BO}; "
        f"machine: {res['machine']} (shared with other work while it ran). Command: `{res['command']}`.",
        "",
        f"best@wall: best objective within {res['equal_wall']:.1f} wall seconds (the shortest run's wall time); "
        "best@budget: best objective at the summed-seconds budget (the price of asynchrony is W = 1's value "
        "minus W's). Means over seeds.",
        "",
        "trials/s: trials per wall second of the whole run (first trial's start to last trial's end); "
        "busy: until the trial that spent the budget (every worker busy), without the final drain of the "
        "trials still in flight; speed-ups against W = 1 of the same method, and divided by W.",
        "",
        "util: summed trial seconds over W x wall seconds (the share of worker time spent in trials; a "
        "trials/s speed-up also reflects the trial mix: EEIPU memoizes less with more trials in flight).",
        "",
        "| method | W | trials | wall s | trials/s | speed-up | / W | busy trials/s | busy speed-up | / W "
        "| util | dup | waited | memoized | best@wall | best@budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["table"]:
        w = row["workers"]
        lines.append(
            f"| {row['method']} | {w} | {row['trials']:.1f} | {row['wall']:.1f} | "
            f"{row['trials_per_second']:.3f} | {row['speedup']:.2f} | {row['speedup'] / w:.2f} | "
            f"{row['busy_trials_per_second']:.3f} | {row['busy_speedup']:.2f} | {row['busy_speedup'] / w:.2f} | "
            f"{row['utilization']:.2f} | {row['dup']} | {row['waited']:.1f} | {row['memoized']:.1f} | {row['best_wall']:.3f} | "
            f"{row['best_budget']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["eeipu", "ei", "eips"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--layout", default=LAYOUT, help="synthetic pipeline or layout (pipelines.synthetic)")
    # ~15 trials per worker at W = 8: a run of 4 or 5 trials per worker (budget 90 at scale 0.5, the first
    # version) measures the final drain and the W - 1 extra random warm-up trials more than the throughput
    parser.add_argument("--budget", type=float, default=150.0, help="summed trial seconds per run")
    parser.add_argument("--scale", type=float, default=0.25, help="sleep seconds per unit of simulated cost")
    parser.add_argument("--n-warmup", type=int, default=5)
    parser.add_argument("--warm-trials", type=int, default=130,
                        help="trials of the untimed compile pass before each run (cover its state capacity)")
    parser.add_argument("--ray-cpus", type=int, default=8, help="logical CPUs of the local Ray")
    parser.add_argument("--out", default=RESULTS, help="results directory")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    from eeipu_jax.cpu import pin_xla_threads

    pin_xla_threads()
    if max(args.workers) > 1:
        from eeipu_jax.runtime.parallel import connect

        connect(num_cpus=max(args.ray_cpus, max(args.workers)))
    root = tempfile.mkdtemp(prefix="eeipu_parallel_")
    runs = []
    try:
        for seed in args.seeds:
            for method in args.methods:
                for w in args.workers:
                    r = run_one(method, w, seed, args.budget, args.scale, args.n_warmup, root, args.warm_trials,
                                args.layout)
                    print(f"{method:6s} W={w} seed {seed}: {r['trials']} trials in {r['wall']:.1f} s "
                          f"({r['trials_per_second']:.3f}/s, busy {r['busy_trials_per_second']:.3f}/s), "
                          f"dup {r['dup']}, best {r['best_budget']:.3f}", flush=True)
                    runs.append(r)
                    write(args, argv, runs)  # after every run, so an interrupted benchmark keeps its results
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(write(args, argv, runs))
    return 0


def write(args, argv, runs: list[dict]) -> str:
    """Summarize ``runs`` (means over seeds), write parallel.{json,md}; returns the markdown."""
    equal_wall = min(r["wall"] for r in runs)
    table = []
    for method in args.methods:
        for w in args.workers:
            rs = [r for r in runs if r["method"] == method and r["workers"] == w]
            base = [r for r in runs if r["method"] == method and r["workers"] == min(args.workers)]
            if not rs or not base:
                continue
            tps = float(np.mean([r["trials_per_second"] for r in rs]))
            busy = float(np.mean([r["busy_trials_per_second"] for r in rs]))
            table.append({
                "method": method, "workers": w, "seeds": len(rs),
                "trials": float(np.mean([r["trials"] for r in rs])),
                "wall": float(np.mean([r["wall"] for r in rs])),
                "trials_per_second": tps,
                "speedup": tps / float(np.mean([r["trials_per_second"] for r in base])),
                "busy_trials_per_second": busy,
                "busy_speedup": busy / float(np.mean([r["busy_trials_per_second"] for r in base])),
                "utilization": float(np.mean([r["spent"] / (w * r["wall"]) for r in rs])),
                "dup": int(sum(r["dup"] for r in rs)),
                "waited": float(np.mean([r["waited"] for r in rs])),
                "memoized": float(np.mean([r["memoized"] for r in rs])),
                "best_wall": float(np.mean([_best_until([{"y": y, "status": "ok" if y is not None else "failed",
                                                          "time": t} for t, y, _ in r["curve"]], 0.0, equal_wall)
                                            for r in rs])),
                "best_budget": float(np.mean([r["best_budget"] for r in rs])),
            })
    res = {
        "layout": args.layout, "scale": args.scale, "budget": args.budget, "n_warmup": args.n_warmup,
        "seeds": sorted({r["seed"] for r in runs}),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "PYTHONPATH=. python benchmarks/parallel.py" + (f" {' '.join(argv)}" if argv else ""),
        "equal_wall": equal_wall, "table": table, "runs": runs,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "parallel.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = _markdown(res)
    with open(os.path.join(args.out, "parallel.md"), "w") as f:
        f.write(md)
    return md


if __name__ == "__main__":
    raise SystemExit(main())

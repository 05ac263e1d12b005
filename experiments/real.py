"""The real-pipeline comparison: methods x pipelines x seeds at a fixed wall-clock budget.

Usage::

    python -m experiments.real --config real_cpu                    # the CPU-size comparison
    python -m experiments.real --config real_cpu --set seeds=1 --set budget=30.0 --set "methods=['ei','eeipu']"

Each run is a crash-safe tuning run (:func:`experiments.run.run_tuning`: orbax
stage cache, trials.jsonl, BOState checkpoints) in ``<out>/tuning/<pipeline>/<method>/seed<k>``
with its own stage cache. Before its timed run, each worker process runs one
untimed trial of the pipeline (imports, data preparation and JAX compilation),
so that no method's first trial pays the process's start-up. Finished runs are
converted into the synthetic benchmark's results format
(``<out>/runs/run_<pipeline>_<method>_<seed>.json``), so the summary, the
headline ratios and the figures are computed by the same code; a run whose
results file exists is skipped (resume, or add methods to a results directory).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from experiments import common

__all__ = ["run_one", "convert", "main"]

PAPER = {"candidates": 1.03, "gain": 1.08}  # the paper's real-pipeline headline figures (+103%, +108%)


def convert(run_dir: str, out_path: str, *, pipeline: str, method: str, seed: int, budget: float,
            n_warmup: int, extra: dict | None = None) -> None:
    """A tuning run's ``trials.jsonl`` as a results file (:func:`experiments.common.write_run`).

    Failed trials keep ``y = NaN``; ``x`` holds the unit-cube point.
    """
    from experiments.run import read_trials

    recs = read_trials(os.path.join(run_dir, "trials.jsonl"))
    if not recs:
        raise ValueError(f"{run_dir}: no trials")
    f = np.float64
    common.write_run(
        out_path, pipeline=pipeline, method=method, seed=seed, budget=budget, n_warmup=n_warmup,
        x_raw=np.array([r["x"] for r in recs], f),
        y=np.array([np.nan if r["y"] is None else r["y"] for r in recs], f),
        stage_costs=np.array([[np.nan if c is None else c for c in r["stage_costs"]] for r in recs], f),
        memo_depth=np.array([r["memo_depth"] for r in recs]),
        charged=np.array([r["charged"] for r in recs], f),
        eta=np.array([np.nan if r.get("eta") is None else r["eta"] for r in recs], f),
        extra=dict(extra or {}, statuses=[r["status"] for r in recs]),
    )


def _process_warmup(pipeline_name: str, seed: int) -> float:
    """One untimed trial at the middle of the box (imports, data, compilation)."""
    from pipelines.registry import get_pipeline
    from pipelines.runner import Runner

    pipe = get_pipeline(pipeline_name)
    t0 = time.perf_counter()
    Runner(pipe, seed=seed, cache=None).run(pipe.space.from_unit(np.full(pipe.space.dim, 0.5)))
    return time.perf_counter() - t0


def run_one(pipeline: str, method: str, seed: int, cfg: dict, out: str) -> dict:
    """One tuning run and its results file (runs in a worker process)."""
    from experiments.run import RunSpec, run_tuning

    warm_seconds = _process_warmup(pipeline, seed)
    run_dir = os.path.join(out, "tuning", pipeline, method, f"seed{seed}")
    spec = RunSpec(pipeline=pipeline, method=method, budget=float(cfg["budget"]), seed=seed, out=run_dir,
                   n_warmup=int(cfg["n_warmup"]), cache_policy=cfg["cache_policy"], progress=False,
                   resume=os.path.exists(os.path.join(run_dir, "trials.jsonl")),
                   stage_timeout=cfg.get("stage_timeout"))
    t0 = time.perf_counter()
    summary = run_tuning(spec)
    seconds = time.perf_counter() - t0
    convert(run_dir, os.path.join(out, "runs", f"run_{pipeline}_{method}_{seed}.json"), pipeline=pipeline,
            method=method, seed=seed, budget=float(cfg["budget"]), n_warmup=int(cfg["n_warmup"]),
            extra=dict(driver="tuning-run", job_seconds=seconds, process_warmup_seconds=warm_seconds))
    return dict(pipeline=pipeline, method=method, seed=seed, seconds=seconds, n_trials=summary.get("n_trials"))


def _init_worker(counter):
    with counter.get_lock():
        os.environ["EEIPU_JAX_CPU"] = str(counter.value)
        counter.value += 1


def headline_vs_paper(head: dict) -> str:
    """The two headline figures beside the paper's."""
    avg = head.get("mean", {})
    if not avg:
        return ""
    c, g = avg.get("candidates"), avg.get("gain")
    fmt = lambda v: "n/a" if v is None or not np.isfinite(v) else f"{100 * v:+.0f}%"  # noqa: E731
    return (f"EEIPU vs the average baseline, averaged over pipelines: {fmt(c)} candidates "
            f"(paper: +{100 * PAPER['candidates']:.0f}%), {fmt(g)} gain of the metric after warm-up "
            f"(paper: +{100 * PAPER['gain']:.0f}%).")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="real_cpu", help="config name in experiments/configs or a path")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (repeatable)")
    ap.add_argument("--out", default=None, help="results directory (default results/<config name>)")
    ap.add_argument("--workers", type=int, default=None, help="parallel runs (processes); default min(2, CPUs)")
    ap.add_argument("--no-figures", action="store_true", help="skip drawing figures")
    args = ap.parse_args(argv)

    cfg = common.apply_overrides(common.load_config(args.config), args.overrides)
    from eeipu_jax.acquisition import get_method
    from pipelines.registry import get_pipeline

    for m in cfg.methods:
        get_method(m)
    for p in cfg.pipelines:
        get_pipeline(p)
    if cfg.seeds < 1 or not cfg.budget > 0:
        raise ValueError(f"seeds must be >= 1 and budget > 0, got {cfg.seeds}, {cfg.budget}")
    out = args.out or os.path.join("results", cfg.name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per run; workers inherit it

    seeds = range(cfg.seed_offset, cfg.seed_offset + cfg.seeds)
    jobs = [(p, m, s) for p in cfg.pipelines for m in cfg.methods for s in seeds
            if not os.path.exists(os.path.join(out, "runs", f"run_{p}_{m}_{s}.json"))]
    workers = args.workers or min(2, os.cpu_count() or 1)
    cfg_dict = cfg.to_dict()
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=f"{cfg.name}: runs", unit="run", file=sys.stdout)
    timings = []
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(counter,)) as pool:
        futs = {pool.submit(run_one, p, m, s, cfg_dict, out): (p, m, s) for p, m, s in jobs}
        for fut in cf.as_completed(futs):
            timings.append(fut.result())
            bar.set_postfix_str("/".join(map(str, futs[fut])))
            bar.update()
    bar.close()
    wall = time.perf_counter() - t0

    runs = [r for r in common.read_runs(os.path.join(out, "runs"))
            if r["pipeline"] in cfg.pipelines and r["method"] in cfg.methods and r["seed"] in seeds]
    table = common.summarize(runs)
    head = common.headline(table)
    md = common.format_table(table, head) + "\n\n" + headline_vs_paper(head)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(f"Config `{cfg.name}`, {cfg.seeds} seeds, budget {cfg.budget:g} s per run, wall {wall:.0f} s.\n\n{md}\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(dict(table=table, headline=head, wall_seconds=wall, runs=timings), f, indent=2)
    print()
    print(md)
    print(f"\nwall time {wall:.0f} s; results in {out}/")
    if not args.no_figures:
        from paper_figures import synthetic as figs

        print("figures: " + ", ".join(figs.draw(out)))
    return table


if __name__ == "__main__":
    main()

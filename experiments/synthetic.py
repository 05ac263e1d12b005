"""The synthetic comparison: methods x pipelines x seeds at a fixed budget.

Usage::

    python -m experiments.synthetic --config synthetic_smoke      # minutes, the README default
    python -m experiments.synthetic --config synthetic_paper      # 3/5/10 stages, 10 seeds
    python -m experiments.synthetic --config synthetic_paper --set seeds=3 --set "methods=['ei','eeipu']"

Each (pipeline, method) job runs all seeds in one compiled loop with the jitted
driver (:func:`eeipu_jax.simulate.run_jitted`; ``--batching`` picks ``lax.map``
or ``vmap`` over seeds, ``--driver python`` uses the Python ask/tell loop
instead). Jobs run in ``--workers`` processes. Results:
``<out>/runs/run_<pipeline>_<method>_<seed>.json``, ``<out>/summary.md`` and
``summary.json``; figures are drawn by :mod:`paper_figures.synthetic` into
``<out>/figures``.
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

__all__ = ["run_job", "main"]


def _bo_config(pipe, method: str, cfg):
    from eeipu_jax import loop

    kw = dict(cfg.get("bo", {}))
    return loop.BOConfig.from_space(pipe.space, method=method, **kw)


def run_job(pipeline_name: str, method: str, cfg_dict: dict, out_dir: str, driver: str,
            batching: str = "auto") -> dict:
    """Run every seed of one (pipeline, method) and write the results files.

    Runs in a worker process; returns a small dict of timings.
    """
    import jax

    from eeipu_jax import simulate
    from eeipu_jax.utils import enable_compilation_cache
    from pipelines.synthetic import get_pipeline

    enable_compilation_cache()
    pipe = get_pipeline(pipeline_name)
    budget = float(cfg_dict.get("budget") or pipe.budget)
    bo = _bo_config(pipe, method, cfg_dict)
    seeds = list(range(cfg_dict["seed_offset"], cfg_dict["seed_offset"] + cfg_dict["seeds"]))
    # Every method of a seed shares the warm-up: the key depends on the seed only.
    keys = jax.numpy.stack([jax.random.key(s) for s in seeds])
    kw = dict(
        epsilon=cfg_dict["epsilon"],
        cache_policy=cfg_dict["cache_policy"],
        warmup=cfg_dict["warmup"],
        max_trials=cfg_dict["max_trials"],
        capacity=cfg_dict["capacity"],
    )
    batching = simulate.resolve_batching(batching)
    t0 = time.perf_counter()
    if driver == "jitted":
        results = simulate.run_jitted(keys, pipe, bo, budget, batching=batching, **kw)
    elif driver == "python":
        results = [simulate.run_python(k, pipe, bo, budget, **kw) for k in keys]
    else:
        raise ValueError(f"driver must be 'jitted' or 'python', got {driver!r}")
    seconds = time.perf_counter() - t0
    for seed, r in zip(seeds, results):
        x_raw = np.asarray(jax.vmap(pipe.to_raw)(jax.numpy.asarray(r.X)))
        common.write_run(
            os.path.join(out_dir, "runs", f"run_{pipeline_name}_{method}_{seed}.json"),
            pipeline=pipeline_name, method=method, seed=seed, budget=budget, n_warmup=r.n_warmup,
            x_raw=x_raw, y=r.y, stage_costs=r.stage_costs, memo_depth=r.memo_depth,
            charged=r.charged, eta=r.eta,
            extra=dict(driver=driver if driver == "python" else f"jitted-{batching}", job_seconds=seconds,
                       optimum=pipe.optimum),
        )
    return dict(pipeline=pipeline_name, method=method, seconds=seconds, seeds=len(seeds))


def _init_worker(counter):
    """Give each worker process its own CPU for XLA (see eeipu_jax._runtime)."""
    with counter.get_lock():
        os.environ["EEIPU_JAX_CPU"] = str(counter.value)
        counter.value += 1


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m experiments.synthetic",
        description="Run the synthetic comparison (methods x pipelines x seeds) and summarize it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument("--config", default="synthetic_smoke",
                    help="config name in experiments/configs or a path to a file with get_config()")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (repeatable)")
    ap.add_argument("--out", default=None, help="results directory (default results/<config name>)")
    ap.add_argument("--driver", choices=["jitted", "python"], default="jitted",
                    help="jitted: whole loop under lax.while_loop, over a batch of seeds; python: ask/tell loop")
    ap.add_argument("--batching", choices=["auto", "map", "vmap"], default="auto",
                    help="how the jitted driver runs the seeds: vmap (lockstep), map (one after the other) "
                         "or auto (map on CPU, vmap on an accelerator); see eeipu_jax.simulate.run_jitted")
    ap.add_argument("--workers", type=int, default=None,
                    help="parallel jobs (processes); default min(2, CPUs)")
    ap.add_argument("--no-figures", action="store_true", help="skip drawing figures")
    ap.add_argument("--force", action="store_true",
                    help="rerun jobs whose results files already exist (default: skip them, so an "
                         "interrupted comparison resumes and new methods can be added to a results dir)")
    args = ap.parse_args(argv)

    cfg = common.apply_overrides(common.load_config(args.config), args.overrides)
    from eeipu_jax.acquisition import get_method
    from pipelines.synthetic import get_pipeline

    for m in cfg.methods:
        get_method(m)  # clear error before any compute
    for p in cfg.pipelines:
        get_pipeline(p)
    if cfg.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {cfg.seeds}")
    out = args.out or os.path.join("results", cfg.name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)

    seeds = range(cfg.seed_offset, cfg.seed_offset + cfg.seeds)

    def finished(p, m):
        return all(os.path.exists(os.path.join(out, "runs", f"run_{p}_{m}_{s}.json")) for s in seeds)

    jobs = [(p, m) for p in cfg.pipelines for m in cfg.methods if args.force or not finished(p, m)]
    skipped = len(cfg.pipelines) * len(cfg.methods) - len(jobs)
    if skipped:
        print(f"{skipped} job(s) already have results in {out}/runs (skipped; --force reruns them)")
    workers = args.workers or min(2, os.cpu_count() or 1)
    cfg_dict = cfg.to_dict()
    timings = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=f"{cfg.name}: runs", unit="job", file=sys.stdout)
    if workers <= 1:
        for p, m in jobs:
            bar.set_postfix_str(f"{p}/{m}")
            timings.append(run_job(p, m, cfg_dict, out, args.driver, args.batching))
            bar.update()
    else:
        ctx = mp.get_context("spawn")  # JAX is not fork-safe
        counter = ctx.Value("i", 0)
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                    initargs=(counter,)) as pool:
            futs = {pool.submit(run_job, p, m, cfg_dict, out, args.driver, args.batching): (p, m) for p, m in jobs}
            for fut in cf.as_completed(futs):
                timings.append(fut.result())
                bar.set_postfix_str("/".join(futs[fut]))
                bar.update()
    bar.close()
    wall = time.perf_counter() - t0

    runs = common.read_runs(os.path.join(out, "runs"))
    runs = [r for r in runs if r["pipeline"] in cfg.pipelines and r["method"] in cfg.methods and r["seed"] in seeds]
    table = common.summarize(runs)
    head = common.headline(table)
    md = common.format_table(table, head)
    with open(os.path.join(out, "summary.md"), "w") as f:
        from eeipu_jax.simulate import resolve_batching

        driver = args.driver if args.driver == "python" else f"jitted ({resolve_batching(args.batching)} over seeds)"
        f.write(f"Config `{cfg.name}`, {cfg.seeds} seeds, driver {driver}, wall {wall:.0f} s.\n\n{md}\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(dict(table=table, headline=head, wall_seconds=wall, jobs=timings), f, indent=2)
    print()
    print(md)
    print(f"\nwall time {wall:.0f} s; results in {out}/")
    if not args.no_figures:
        from paper_figures import synthetic as figs

        paths = figs.draw(out)
        print("figures: " + ", ".join(paths))
    return table


if __name__ == "__main__":
    main()

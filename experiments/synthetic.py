"""The synthetic comparison: methods x pipelines x seeds at a fixed budget.

Usage::

    python -m experiments.synthetic --config synthetic_smoke      # minutes, the README default
    python -m experiments.synthetic --config synthetic_paper      # 3/5/10 stages, 10 seeds
    python -m experiments.synthetic --config synthetic_paper --set seeds=3 --set "methods=['ei','eeipu']"

Every setting is checked before anything is written or computed (:func:`check_config`):
a wrong one is named on one line and the exit status is 2.

Each (pipeline, method) job runs all seeds in one compiled loop with the jitted
driver (:func:`eeipu_jax.simulate.run_jitted`; ``--batching`` picks ``lax.map``
or ``vmap`` over seeds, ``--driver python`` uses the Python ask/tell loop
instead). Jobs run in ``--workers`` processes. Results:
``<out>/runs/run_<pipeline>_<method>_<seed>.json``, ``<out>/summary.md`` and
``summary.json``; the command that draws the figures into ``<out>/figures``
(``python -m paper_figures.synthetic <out>``) is printed at the end.
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

__all__ = ["run_job", "check_config", "main", "AUTHORS_SYNTHETIC"]

#: The paper's synthetic headline: EEIPU against the average baseline over its synthetic pipelines.
AUTHORS_SYNTHETIC = {"candidates": 1.46, "gain": 0.38}


def _seed_words(seeds) -> str:
    seeds = list(seeds)
    kind = "development" if max(seeds) < 100 else "validation" if min(seeds) >= 100 else "mixed"
    return f"{seeds[0]}-{seeds[-1]} ({kind} seeds)"


def _bo_config(pipe, method: str, cfg):
    """``(config, params)`` of one method: the config's ``bo`` settings and ``epsilon``."""
    from eeipu_jax import loop

    kw = common.method_settings(method, cfg.get("bo") or {})
    return loop.configure(pipe.space, method, epsilon=cfg["epsilon"], **kw)


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
    budget = float(pipe.budget if cfg_dict.get("budget") is None else cfg_dict["budget"])
    bo, params = _bo_config(pipe, method, cfg_dict)
    seeds = list(range(cfg_dict["seed_offset"], cfg_dict["seed_offset"] + cfg_dict["seeds"]))
    # Every method of a seed shares the warm-up: the key depends on the seed only.
    keys = jax.numpy.stack([jax.random.key(s) for s in seeds])
    kw = dict(
        params=params,
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


_WARMUPS = ("cost_aware", "random")
_POLICIES = ("top_q", "all")


def check_config(cfg) -> None:
    """Check every field of a synthetic comparison config before anything runs.

    ``budget`` is a finite number > 0 or ``None`` (each pipeline's own
    budget); seeds fit :data:`eeipu_jax.runtime.runner.MAX_SEED`; ``bo`` holds
    settings of the right types (:func:`experiments.common.method_settings`),
    and the config they make is built for every pipeline and method;
    ``max_trials`` exceeds the warm-up.

    Raises:
        experiments.common.ConfigError: the first wrong field, named.
    """
    from eeipu_jax.methods import get_method
    from eeipu_jax.runtime.runner import MAX_SEED
    from pipelines.synthetic import get_pipeline

    try:
        fields = {k: cfg[k] for k in ("pipelines", "methods", "seeds", "seed_offset", "budget", "epsilon",
                                      "cache_policy", "warmup", "max_trials", "capacity")}
    except (KeyError, AttributeError) as e:
        raise common.ConfigError(f"the config has no field {e.args[0]!r}") from None
    pipelines = common.check_names(fields["pipelines"], "pipelines", get_pipeline)
    methods = common.check_names(fields["methods"], "methods", get_method)
    seeds = common.check_int(fields["seeds"], "seeds", 1)
    offset = common.check_int(fields["seed_offset"], "seed_offset", 0, MAX_SEED)
    if offset + seeds - 1 > MAX_SEED:
        raise common.ConfigError(f"seed_offset + seeds - 1 = {offset + seeds - 1} exceeds the largest seed {MAX_SEED}")
    common.check_positive(fields["budget"], "budget", allow_none=True, none_means="each pipeline's own budget")
    common.check_positive(fields["epsilon"], "epsilon")
    for name, allowed in (("cache_policy", _POLICIES), ("warmup", _WARMUPS)):
        if fields[name] not in allowed:
            raise common.ConfigError(f"{name} must be one of {list(allowed)}, got {fields[name]!r}")
    max_trials = common.check_int(fields["max_trials"], "max_trials", 1)
    common.check_int(fields["capacity"], "capacity", 1)
    for p in pipelines:
        for m in methods:
            try:
                config, _ = _bo_config(get_pipeline(p), m, fields | {"bo": cfg.get("bo") or {}})
            except common.ConfigError:
                raise
            except Exception as e:
                raise common.ConfigError(f"bo {dict(cfg.get('bo') or {})} for {p}/{m}: {type(e).__name__}: {e}") from None
            if max_trials <= config.n_warmup:
                raise common.ConfigError(f"max_trials ({max_trials}) must exceed the warm-up (n_warmup {config.n_warmup})")


def _expected_cost(job) -> float:
    """A rough cost of a (pipeline, method) job for scheduling (not a measurement):
    memoizing methods run several times more BO steps within a budget, and a
    step's cost grows with the number of stages (one cost GP each) and columns."""
    from eeipu_jax.methods import get_method
    from pipelines.synthetic import get_pipeline

    pipe, method = job
    space = get_pipeline(pipe).space
    return (4.0 if get_method(method).memoize else 1.0) * space.n_stages * space.dim


def _init_worker(counter):
    """Give each worker process its own CPU for XLA (see :mod:`eeipu_jax.cpu`)."""
    from eeipu_jax.cpu import pin_xla_threads

    with counter.get_lock():
        os.environ["EEIPU_JAX_CPU"] = str(counter.value)
        counter.value += 1
    pin_xla_threads()


def main(argv=None) -> int:
    """Run the comparison; returns the exit status (2: a setting is wrong, nothing was run)."""
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
    ap.add_argument("--force", action="store_true",
                    help="rerun jobs whose results files already exist (default: skip them, so an "
                         "interrupted comparison resumes and new methods can be added to a results dir)")
    args = ap.parse_args(argv)
    from eeipu_jax.cpu import pin_xla_threads

    pin_xla_threads()  # before the first JAX computation (serial jobs run in this process)

    try:  # every setting before anything is written or computed
        cfg = common.load_checked_config(args.config, args.overrides)
        check_config(cfg)
        if args.workers is not None:
            common.check_int(args.workers, "--workers", 1)
        out = common.check_writable_dir(args.out or os.path.join("results", str(cfg.name)), "--out")
    except common.ConfigError as e:
        return common.fail(str(e))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)

    seeds = range(cfg.seed_offset, cfg.seed_offset + cfg.seeds)

    def finished(p, m):
        return all(os.path.exists(os.path.join(out, "runs", f"run_{p}_{m}_{s}.json")) for s in seeds)

    jobs = [(p, m) for p in cfg.pipelines for m in cfg.methods if args.force or not finished(p, m)]
    jobs.sort(key=_expected_cost, reverse=True)  # longest first: the workers finish together
    skipped = len(cfg.pipelines) * len(cfg.methods) - len(jobs)
    if skipped:
        print(f"{skipped} job(s) already have results in {out}/runs (skipped; --force reruns them)")
    workers = min(args.workers or min(2, os.cpu_count() or 1), max(1, len(jobs)))
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
    wall = common.total_wall(out, time.perf_counter() - t0, bool(jobs), fresh=bool(args.force))

    runs = common.read_runs(os.path.join(out, "runs"))
    runs = [r for r in runs if r["pipeline"] in cfg.pipelines and r["method"] in cfg.methods and r["seed"] in seeds]
    table = common.summarize(runs)
    head = common.headline(table)
    if head.get("mean"):
        head["mean"].update({f"{k}_se": v for k, v in common.headline_se(runs).items()})
    md = common.format_table(table, head)
    if head.get("mean"):
        md += (f"\n\nThe authors' synthetic headline (arXiv 2411.03731, their 3-, 5- and 10-stage pipelines): "
               f"EEIPU {AUTHORS_SYNTHETIC['candidates']:+.0%} candidates, {AUTHORS_SYNTHETIC['gain']:+.0%} gain "
               "vs the average baseline. Seeds here: " + _seed_words(seeds) + ".")
    with open(os.path.join(out, "summary.md"), "w") as f:
        from eeipu_jax.simulate import resolve_batching

        driver = args.driver if args.driver == "python" else f"jitted ({resolve_batching(args.batching)} over seeds)"
        f.write(f"Config `{cfg.name}`, {cfg.seeds} seeds, driver {driver}, wall {wall:.0f} s.\n\n{md}\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(dict(table=table, headline=head, wall_seconds=wall, jobs=timings), f, indent=2)
    print()
    print(md)
    print(f"\nwall time {wall:.0f} s (all invocations that ran jobs); results in {out}/")
    # Figures are the paper_figures package's job (it reads these results files).
    print(f"figures: python -m paper_figures.synthetic {out}   (writes {os.path.join(out, 'figures')}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

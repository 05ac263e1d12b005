"""The real-pipeline comparison: methods x pipelines x seeds at one wall-clock budget.

Usage::

    python -m experiments.real --config real_cpu                       # the full CPU comparison
    python -m experiments.real --config real_smoke                     # stacking, EI vs EEIPU, 30 s
    python -m experiments.real --config real_cpu --set seeds=5 --set "pipelines=['stacking']"

Each (pipeline, method, seed) job is one crash-safe tuning run
(an :class:`eeipu_jax.Study`, in-process) with its own run and
stage-cache directories, ``<out>/tuning/<pipeline>/<method>/seed<k>/``. Every
method of a seed starts from the same warm-up configurations (the optimizer's
key depends on the seed only) and gets the same budget of measured seconds.
When a run ends its ``trials.jsonl`` is converted into the synthetic
benchmark's results format, ``<out>/runs/run_<pipeline>_<method>_<seed>.json``
(:func:`experiments.common.write_run`), so the summaries
(:func:`experiments.common.summarize`, :func:`~experiments.common.headline`)
and the figures (``python -m paper_figures.real <out>``) work unchanged.

First each pipeline with runs left is prepared once (:func:`prepare_pipeline`:
data, pretraining, compilation into the persistent cache), then the jobs run
in ``--workers`` processes (default 2), each with
``OMP_NUM_THREADS=1`` unless it is set; a progress bar counts finished runs.
Rerunning the same command resumes: runs with a results file are skipped, an
interrupted run continues from its checkpoint (``Study.create(...,
load_if_exists=True)``).

Every setting is checked before anything is written or computed
(:func:`check_config`, which checks each job's tuning-run settings with
:meth:`eeipu_jax.Study.check`): a wrong one is named on one line and the exit
status is 2.

Outputs: ``<out>/summary.md`` (iterations and best objective per method,
mean ± standard error, and the paper's two headline figures computed its way,
beside the paper's +103% / +108%) and ``<out>/summary.json``; the command that
draws the figures into ``<out>/figures`` is printed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import multiprocessing as mp
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from experiments import common

__all__ = ["run_job", "prepare_pipeline", "trials_to_run", "plan_jobs", "check_config", "main", "PAPER_HEADLINE"]

logger = logging.getLogger(__name__)

#: The paper's headline figures (abstract of arXiv 2411.03731), averaged over its real pipelines.
PAPER_HEADLINE = {"candidates": 1.03, "gain": 1.08}


def _budget(cfg: dict, pipeline: str) -> float:
    return float((cfg.get("budgets") or {}).get(pipeline, cfg["budget"]))


def _cache_max_bytes(cfg: dict) -> int | None:
    from eeipu_jax.runtime.cache import parse_bytes

    value = cfg.get("cache_max_bytes")
    return None if value is None else parse_bytes(value)


def _run_dir(out: str, pipeline: str, method: str, seed: int) -> str:
    return os.path.join(out, "tuning", pipeline, method, f"seed{seed}")


def _result_path(out: str, pipeline: str, method: str, seed: int) -> str:
    return os.path.join(out, "runs", f"run_{pipeline}_{method}_{seed}.json")


def trials_to_run(trials_path: str, *, pipeline_name: str, method: str, seed: int, budget: float,
                  n_warmup: int, out_path: str, extra: dict | None = None) -> int:
    """Convert one tuning run's ``trials.jsonl`` into a results file.

    ``x`` holds each trial's raw hyperparameter values in the search space's
    column order (the unit-cube coordinates where a value is not numeric);
    failed trials have ``y = None``.

    Returns:
        The number of trials converted.
    """
    from eeipu_jax.runtime.records import read_trials
    from pipelines.registry import get_pipeline

    records = read_trials(trials_path)
    if not records:
        raise ValueError(f"{trials_path} holds no trials")
    space_names = [(s.name, [p.name for p in s.params]) for s in get_pipeline(pipeline_name).stages]

    def raw_row(rec):
        try:
            return [float(rec["params"][s][p]) for s, names in space_names for p in names]
        except (TypeError, ValueError, KeyError):
            return [float(v) for v in rec["x"]]

    def num(v):
        return float("nan") if v is None else float(v)

    common.write_run(
        out_path, pipeline=pipeline_name, method=method, seed=seed, budget=budget, n_warmup=n_warmup,
        x_raw=np.array([raw_row(r) for r in records], np.float64),
        y=np.array([num(r["y"]) if r["status"] == "ok" else np.nan for r in records]),
        stage_costs=np.array([[num(c) for c in r["stage_costs"]] for r in records]),
        memo_depth=np.array([r["memo_depth"] for r in records]),
        charged=np.array([r["charged"] for r in records]),
        eta=np.array([num(r.get("eta")) for r in records]),
        extra=dict(
            status=[r["status"] for r in records],
            stage_seconds=[[num(c) for c in r["stage_seconds"]] for r in records],
            params=[r["params"] for r in records],
            **(extra or {}),
        ),
    )
    return len(records)


def run_job(pipeline_name: str, method: str, seed: int, cfg: dict, out: str) -> dict:
    """One tuning run (resumed if interrupted), then its results file. Runs in a worker."""
    from eeipu_jax import Study
    from eeipu_jax.runtime.cli import default_jax_cache_dir

    result = _result_path(out, pipeline_name, method, seed)
    if os.path.exists(result):
        return dict(pipeline=pipeline_name, method=method, seed=seed, skipped=True, seconds=0.0)
    run_dir = _run_dir(out, pipeline_name, method, seed)
    budget = _budget(cfg, pipeline_name)
    t0 = time.perf_counter()
    study = Study.create(run_dir, pipeline_name, method, budget, int(seed), load_if_exists=True,
                         jax_cache_dir=default_jax_cache_dir(), **_study_options(cfg, method))
    summary = study.optimize(cfg.get("max_trials"))
    seconds = time.perf_counter() - t0
    trials_to_run(
        os.path.join(run_dir, "trials.jsonl"), pipeline_name=pipeline_name, method=method, seed=seed,
        budget=budget, n_warmup=int(cfg["n_warmup"]), out_path=result,
        extra=dict(job_seconds=seconds, summary_spent=summary["spent"], n_failed=summary["n_failed"]),
    )
    return dict(pipeline=pipeline_name, method=method, seed=seed, skipped=False, seconds=seconds,
                n_trials=summary["n_trials"], best=(summary["best"] or {}).get("y"))


def _study_options(cfg: dict, method: str) -> dict:
    """The :meth:`eeipu_jax.Study.create` options of a config for one method's jobs."""
    return dict(cache_policy=cfg["cache_policy"], cache_max_bytes=_cache_max_bytes(cfg),
                n_warmup=int(cfg["n_warmup"]), stage_timeout=cfg.get("stage_timeout"), epsilon=float(cfg["epsilon"]),
                bo=common.method_settings(method, cfg.get("bo") or {}, reserved=("n_warmup",)),
                charge_optimizer=cfg.get("charge_optimizer", False))


def prepare_pipeline(pipeline_name: str, jax_cache_dir: str | None = None) -> dict:
    """Run a pipeline's ``prepare()`` once, untimed: the tfds data, any one-off
    pretraining and, with the persistent compilation cache on (as in every
    tuning run), the stage functions' compilation, so that the runs that
    follow load them instead of each compiling them. Runs in a worker."""
    from eeipu_jax.utils import enable_compilation_cache
    from pipelines.registry import get_pipeline

    enable_compilation_cache(os.path.abspath(jax_cache_dir) if jax_cache_dir else None)
    t0 = time.perf_counter()
    get_pipeline(pipeline_name).prepare()
    return dict(pipeline=pipeline_name, prepare_seconds=time.perf_counter() - t0)


def plan_jobs(cfg) -> tuple[list[tuple[str, str, int]], list[str]]:
    """``(jobs, skipped_pipelines)`` of a config that passed :func:`check_config`.

    Raises:
        experiments.common.ConfigError: no pipeline of the config is registered.
    """
    from pipelines.registry import available_pipelines

    known = set(available_pipelines())
    pipelines = [p for p in cfg.pipelines if p in known or ":" in p]
    skipped = [p for p in cfg.pipelines if p not in pipelines]
    if not pipelines:
        raise common.ConfigError(
            f"none of the pipelines {list(cfg.pipelines)} is registered; registered: {sorted(known)}")
    seeds = range(cfg.seed_offset, cfg.seed_offset + cfg.seeds)
    # Seed-major order: with a limited time, every method gets the same seeds first.
    return [(p, m, s) for p in pipelines for s in seeds for m in cfg.methods], skipped


def check_config(cfg) -> None:
    """Check every field of a real comparison config before anything runs.

    The fields of the config itself (names, seeds, budgets finite and > 0 per
    pipeline, warm-up, cache and BO settings), then every (pipeline, method)
    job's tuning-run settings as :meth:`eeipu_jax.Study.check` checks them (the
    pipeline is built, its data not prepared); unregistered pipelines are
    left to :func:`plan_jobs`, which skips them.

    Raises:
        experiments.common.ConfigError: the first wrong field, named.
    """
    from eeipu_jax import Study
    from eeipu_jax.methods import get_method
    from eeipu_jax.runtime.runner import MAX_SEED
    from pipelines.registry import available_pipelines

    try:
        c = {k: cfg[k] for k in ("pipelines", "methods", "seeds", "seed_offset", "budget", "n_warmup", "epsilon",
                                 "cache_policy")}
    except (KeyError, AttributeError) as e:
        raise common.ConfigError(f"the config has no field {e.args[0]!r}") from None
    pipelines = common.check_names(c["pipelines"], "pipelines", lambda p: None)
    methods = common.check_names(c["methods"], "methods", get_method)
    seeds = common.check_int(c["seeds"], "seeds", 1)
    offset = common.check_int(c["seed_offset"], "seed_offset", 0, MAX_SEED)
    if offset + seeds - 1 > MAX_SEED:
        raise common.ConfigError(f"seed_offset + seeds - 1 = {offset + seeds - 1} exceeds the largest seed {MAX_SEED}")
    common.check_positive(c["budget"], "budget")
    budgets = cfg.get("budgets") or {}
    if not hasattr(budgets, "items"):
        raise common.ConfigError(f"budgets must map pipeline names to seconds, got {budgets!r}")
    for p, b in budgets.items():
        common.check_positive(b, f"budgets[{p!r}]")
    common.check_int(c["n_warmup"], "n_warmup", 1)
    common.check_positive(c["epsilon"], "epsilon")
    if c["cache_policy"] not in ("top_q", "all"):
        raise common.ConfigError(f"cache_policy must be one of ['top_q', 'all'], got {c['cache_policy']!r}")
    common.check_positive(cfg.get("stage_timeout"), "stage_timeout", allow_none=True, none_means="no limit")
    if cfg.get("max_trials") is not None:
        common.check_int(cfg.get("max_trials"), "max_trials", 1)
    try:
        _cache_max_bytes(cfg)
    except ValueError as e:
        raise common.ConfigError(f"cache_max_bytes: {e}") from None
    for m in methods:
        common.method_settings(m, cfg.get("bo") or {}, reserved=("n_warmup",))
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    known = set(available_pipelines())
    for p in (p for p in pipelines if p in known or ":" in p):
        for m in methods:
            try:
                Study.check(p, m, _budget(cfg_dict, p), offset, **_study_options(cfg_dict, m))
            except common.ConfigError as e:
                raise common.ConfigError(f"{p}/{m}: {e}") from None


def _init_worker(counter):
    """One CPU per worker for XLA, and single-threaded BLAS/OpenMP in the learners."""
    from eeipu_jax.cpu import pin_xla_threads

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with counter.get_lock():
        os.environ["EEIPU_JAX_CPU"] = str(counter.value)
        counter.value += 1
    pin_xla_threads()


def _headline_md(head: dict) -> str:
    if not head.get("mean"):
        return ""
    m = head["mean"]
    return (
        "\n## Headline figures (the paper's definitions, reference section 5.3)\n\n"
        "| figure | here (EEIPU vs the average baseline, mean over pipelines) | paper |\n|---|---|---|\n"
        f"| more candidates within the budget | {common.format_mean(m, 'candidates')} "
        f"| +{PAPER_HEADLINE['candidates']:.0%} |\n"
        f"| larger gain of the metric after warm-up | {common.format_mean(m, 'gain')} "
        f"| +{PAPER_HEADLINE['gain']:.0%} |\n\n"
        "Candidates = BO trials after warm-up within the budget (the last one may overshoot); gain = best "
        "objective at the end minus best at the end of warm-up. The paper's numbers average its own three "
        "real pipelines (Home Credit stacking, drone segmentation, T5 distillation on GPUs); ours are offline "
        "CPU stand-ins, so only the direction is comparable.\n"
    )


def optimizer_share(out: str, cfg) -> dict:
    """The optimizer's share of each method's wall time, per pipeline, from the runs' records.

    For each run: seconds of ``ask`` (and the tell before it) over those plus
    the trials' own seconds (``ask_seconds`` and ``trial_seconds`` of
    ``trials.jsonl``); the mean over the seeds found. Runs recorded before the
    optimizer's seconds were kept are left out.

    Returns:
        ``{pipeline: {method: {"fraction": mean share, "seconds": mean seconds, "runs": n}}}``.
    """
    from eeipu_jax.runtime.records import optimizer_seconds, read_trials

    shares: dict = {}
    for p in cfg.pipelines:
        for m in cfg.methods:
            fr, secs = [], []
            for s in range(cfg.seed_offset, cfg.seed_offset + cfg.seeds):
                path = os.path.join(_run_dir(out, p, m, s), "trials.jsonl")
                if not os.path.exists(path):
                    continue
                opt, total = optimizer_seconds(read_trials(path))
                if total == 0:
                    continue  # recorded before the optimizer's seconds were kept
                fr.append(opt / total)
                secs.append(opt)
            if fr:
                shares.setdefault(p, {})[m] = {"fraction": float(np.mean(fr)), "seconds": float(np.mean(secs)),
                                               "runs": len(fr)}
    return shares


def _optimizer_md(shares: dict, charged: bool) -> str:
    if not shares:
        return ""
    methods = list(dict.fromkeys(m for by_m in shares.values() for m in by_m))
    lines = ["\n## The optimizer's share of wall time\n",
             "Seconds of `ask` (with the tell before it) over those plus the trials' own seconds, mean over "
             "seeds; " + ("charged to the budget (`charge_optimizer`)" if charged else
                          "not charged to the budget (the paper's rule)") + ".\n",
             "| pipeline | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for p, by_m in shares.items():
        cells = (f"{by_m[m]['fraction']:.1%} ({by_m[m]['seconds']:.1f} s)" if m in by_m else "-" for m in methods)
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summarize_results(out: str, cfg, wall: float | None = None, jobs: list | None = None) -> str:
    """Write ``summary.md`` / ``summary.json`` from the results files; returns the markdown."""
    runs = common.read_runs(os.path.join(out, "runs"))
    runs = [r for r in runs if r["pipeline"] in cfg.pipelines and r["method"] in cfg.methods]
    table = common.summarize(runs)
    head = common.headline(table)
    shares = optimizer_share(out, cfg)
    md = common.format_table(table, head) + "\n" + _headline_md(head) + _optimizer_md(shares, bool(cfg.get("charge_optimizer", False)))
    budgets = ", ".join(f"{p}: {_budget(cfg.to_dict(), p):g} s" for p in table)
    intro = (f"Config `{cfg.name}`: seeds {cfg.seed_offset}..{cfg.seed_offset + cfg.seeds - 1}, "
             f"warm-up {cfg.n_warmup}, budgets {budgets}" + (f", wall {wall:.0f} s" if wall else "") + ".\n\n")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(intro + md)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(dict(table=table, headline=head, paper=PAPER_HEADLINE, wall_seconds=wall, jobs=jobs or [],
                       optimizer_share=shares),
                  f, indent=2, default=lambda v: None)
    return intro + md


def main(argv=None) -> int:
    """Run the comparison; returns the exit status (2: a setting is wrong, nothing was run)."""
    ap = argparse.ArgumentParser(
        prog="python -m experiments.real",
        description="Run the real-pipeline comparison (methods x pipelines x seeds) and summarize it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument("--config", default="real_cpu",
                    help="config name in experiments/configs or a path to a file with get_config()")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (repeatable)")
    ap.add_argument("--out", default=None, help="results directory (default results/<config name>)")
    ap.add_argument("--workers", type=int, default=2, help="parallel runs (processes)")
    args = ap.parse_args(argv)
    from eeipu_jax.cpu import pin_xla_threads

    pin_xla_threads()  # before the first JAX computation (serial jobs run in this process)

    try:  # every setting before anything is written or computed
        cfg = common.load_checked_config(args.config, args.overrides)
        check_config(cfg)
        jobs, skipped = plan_jobs(cfg)
        common.check_int(args.workers, "--workers", 1)
        out = common.check_writable_dir(args.out or os.path.join("results", str(cfg.name)), "--out")
    except common.ConfigError as e:
        return common.fail(str(e))
    for p in skipped:
        print(f"warning: pipeline {p!r} is not registered here; skipped", file=sys.stderr)
    cfg.pipelines = [p for p in cfg.pipelines if p not in skipped]
    os.makedirs(out, exist_ok=True)
    cfg_dict = cfg.to_dict()
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the worker processes

    timings = []
    t0 = time.perf_counter()
    todo = [j for j in jobs if not os.path.exists(_result_path(out, *j))]
    to_prepare = sorted({p for p, _, _ in todo})
    bar = tqdm(total=len(jobs), desc=f"{cfg.name}: runs", unit="run", file=sys.stdout)
    workers = min(args.workers, max(1, len(todo)))
    if workers == 1:
        for p in to_prepare:
            bar.set_postfix_str(f"prepare {p}")
            timings.append(prepare_pipeline(p))
        for p, m, s in jobs:
            bar.set_postfix_str(f"{p}/{m}/seed{s}")
            timings.append(run_job(p, m, s, cfg_dict, out))
            bar.update()
    else:
        ctx = mp.get_context("spawn")  # JAX is not fork-safe
        counter = ctx.Value("i", 0)
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                    initargs=(counter,)) as pool:
            bar.set_postfix_str("prepare " + ", ".join(to_prepare))
            timings += [f.result() for f in [pool.submit(prepare_pipeline, p) for p in to_prepare]]
            futs = {pool.submit(run_job, p, m, s, cfg_dict, out): (p, m, s) for p, m, s in jobs}
            for fut in cf.as_completed(futs):
                timings.append(fut.result())
                p, m, s = futs[fut]
                bar.set_postfix_str(f"{p}/{m}/seed{s}")
                bar.update()
    bar.close()
    wall = common.total_wall(out, time.perf_counter() - t0, bool(todo))
    md = summarize_results(out, cfg, wall, timings)
    print()
    print(md)
    print(f"\nwall time {wall:.0f} s (all invocations that ran jobs); results in {out}/")
    # Figures are the paper_figures package's job (it reads these results files).
    print(f"figures: python -m paper_figures.real {out}   (writes {os.path.join(out, 'figures')}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

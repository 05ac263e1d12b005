"""The paper's ablations as sweeps: seeds x settings of one method as one compiled program.

Usage::

    python -m experiments.sweep epsilon        # EEIPU, epsilon in 0.01 .. 1, 10 seeds, synthetic3 and synthetic5
    python -m experiments.sweep cooling        # EEIPU, the cooling schedule: linear, constant, none, ...
    python -m experiments.sweep epsilon --seeds 3 --pipelines synthetic3 --out /tmp/eps

For each pipeline the whole grid (every seed x every setting) is one batch of
:func:`eeipu_jax.simulate.run_jitted`: the settings are :class:`~eeipu_jax.config.Params`
floats (traced), so one program per capacity runs them all, and with several
devices the batch is split over them (``--devices``; at once on accelerators,
one device after the other on a CPU, where
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` simulates four).
The memoization ablation (Q = 0) is a method of its own, ``eeipu_nomemo``:
``python -m experiments.synthetic --set "methods=['eeipu','eeipu_nomemo']"``.

Seeds are development seeds (0 .. seeds-1): the sweeps explore; the README's
validation table (seeds 100 onward) took no part in choosing the defaults.

Writes ``<out>/runs/run_<pipeline>_<setting>_<seed>.json`` (the synthetic
comparison's run format), ``<out>/summary.json`` and ``summary.md`` (per
setting: BO iterations within the budget, best objective, share of BO trials
that restored a prefix; mean ± standard error over seeds), then draw the figure
with ``python -m paper_figures.sweep <out>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from experiments import common

__all__ = ["ABLATIONS", "run_ablation", "main"]

#: name -> (method, param name shown, [(label, Params changes)], default pipelines)
ABLATIONS = {
    "epsilon": ("eeipu", "epsilon", [(f"{e:g}", dict(epsilon=e)) for e in (0.01, 0.03, 0.1, 0.3, 1.0)],
                ["synthetic3", "synthetic5"]),
    "cooling": ("eeipu", "cooling", [("linear", dict(eta_start=1.0, eta_end=0.0)),
                                     ("half", dict(eta_start=0.5, eta_end=0.0)),
                                     ("constant", dict(eta_start=1.0, eta_end=1.0)),
                                     ("none", dict(eta_start=0.0, eta_end=0.0))],
                ["synthetic3", "synthetic5"]),
}


def run_ablation(name: str, pipelines: list[str], seeds: int, out: str, *, bo: dict | None = None,
                 max_trials: int = 400, batching: str = "auto", devices: int | None = None) -> dict:
    """Run one ablation: per pipeline, every seed x setting in one :func:`run_jitted` call.

    Returns:
        The summary: ``{pipeline: {label: stats}}`` plus timings.
    """
    import jax

    from eeipu_jax import loop, simulate
    from pipelines.synthetic import get_pipeline

    method, shown, settings, _ = ABLATIONS[name]
    devs = jax.devices()[: devices or len(jax.devices())]
    summary = {"ablation": name, "method": method, "param": shown, "seeds": list(range(seeds)),
               "devices": len(devs), "backend": jax.default_backend(), "pipelines": {}, "seconds": {}}
    for pname in pipelines:
        pipe = get_pipeline(pname)
        config, base = loop.configure(pipe.space, method, **dict(bo or {}))
        grid = [(label, s) for label, _ in settings for s in range(seeds)]
        params = simulate.stack_params([loop.replace_params(base, method, **change)
                                        for _, change in settings for _ in range(seeds)])
        keys = jax.numpy.stack([jax.random.key(s) for _, s in grid])
        t0 = time.perf_counter()
        results = simulate.run_jitted(keys, pipe, config, params=params, max_trials=max_trials,
                                      batching=batching, devices=devs)
        summary["seconds"][pname] = time.perf_counter() - t0
        rows = {}
        for (label, seed), r in zip(grid, results):
            x_raw = np.asarray(jax.vmap(pipe.to_raw)(jax.numpy.asarray(r.X)))
            common.write_run(os.path.join(out, "runs", f"run_{pname}_{label}_{seed}.json"), pipeline=pname,
                             method=f"{method}[{shown}={label}]", seed=seed, budget=r.budget, n_warmup=r.n_warmup,
                             x_raw=x_raw, y=r.y, stage_costs=r.stage_costs, memo_depth=r.memo_depth,
                             charged=r.charged, eta=r.eta, extra=dict(setting=label, optimum=pipe.optimum))
            bo_rows = slice(r.n_warmup, None)
            rows.setdefault(label, []).append((r.n_bo, float(np.nanmax(r.y)), float(np.mean(r.memo_depth[bo_rows] > 0))
                                               if r.n_bo else 0.0))
        summary["pipelines"][pname] = {label: _stats(v) for label, v in rows.items()}
        print(f"{pname}: {len(grid)} runs ({len(settings)} settings x {seeds} seeds) in "
              f"{summary['seconds'][pname]:.1f} s on {len(devs)} device(s)", flush=True)
    return summary


def _stats(rows) -> dict:
    a = np.asarray(rows, np.float64)
    se = a.std(axis=0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(a.shape[1])
    return {"bo_iterations": [float(a[:, 0].mean()), float(se[0])], "best": [float(a[:, 1].mean()), float(se[1])],
            "memoized_share": [float(a[:, 2].mean()), float(se[2])], "n": len(a)}


def format_summary(summary: dict) -> str:
    lines = [f"# Ablation: {summary['method']}, {summary['param']} "
             f"(development seeds 0-{len(summary['seeds']) - 1}, {summary['devices']} {summary['backend']} device(s))",
             ""]
    for pname, rows in summary["pipelines"].items():
        lines += [f"## {pname} ({summary['seconds'][pname]:.0f} s)", "",
                  f"| {summary['param']} | BO iterations | best objective | BO trials restoring a prefix |",
                  "|---|---|---|---|"]
        for label, st in rows.items():
            it, best, memo = st["bo_iterations"], st["best"], st["memoized_share"]
            lines.append(f"| {label} | {it[0]:.1f} ± {it[1]:.1f} | {best[0]:.3f} ± {best[1]:.3f} | "
                         f"{100 * memo[0]:.0f}% ± {100 * memo[1]:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("ablation", choices=sorted(ABLATIONS))
    ap.add_argument("--pipelines", nargs="+", default=None, help="synthetic pipelines (default: the ablation's)")
    ap.add_argument("--seeds", type=int, default=10, help="development seeds 0..N-1 (default 10)")
    ap.add_argument("--out", default=None, help="results directory (default results/sweep_<ablation>)")
    ap.add_argument("--max-trials", type=int, default=400)
    ap.add_argument("--batching", default="auto", choices=["auto", "map", "vmap"])
    ap.add_argument("--devices", type=int, default=None, help="shard the batch over this many devices (default all)")
    ap.add_argument("--bo", action="append", default=[], metavar="NAME=VALUE",
                    help="a BOConfig field for every run, e.g. --bo n_random=256")
    args = ap.parse_args(argv)
    from eeipu_jax.cpu import pin_xla_threads
    from eeipu_jax.utils import enable_compilation_cache
    from pipelines.synthetic import get_pipeline

    method, _, _, default_pipelines = ABLATIONS[args.ablation]
    pipelines = args.pipelines or default_pipelines
    try:
        for p in pipelines:
            get_pipeline(p)
        common.check_int(args.seeds, "--seeds", 1, 10_000)
        common.check_int(args.max_trials, "--max-trials", 2)
        bo = dict(common.method_settings(method, dict(kv.split("=", 1) for kv in args.bo)))
    except (ValueError, common.ConfigError) as e:
        return common.fail(str(e))
    pin_xla_threads()
    enable_compilation_cache()
    out = args.out or os.path.join("results", f"sweep_{args.ablation}")
    summary = run_ablation(args.ablation, pipelines, args.seeds, out, bo=bo, max_trials=args.max_trials,
                           batching=args.batching, devices=args.devices)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    text = format_summary(summary)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"figure: python -m paper_figures.sweep {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

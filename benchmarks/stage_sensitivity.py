"""How much each stage of the real pipelines moves the objective, against seed noise, and what a trial costs.

For each pipeline (``stacking``, ``segmentation``, ``language``; their
``cpu`` sizes):

* **random configurations**: ``--random`` configurations drawn uniformly in
  the search space (unit cube, snapped, as the warm-up draws its
  candidates), each run once with pipeline seed 0: mean / min / max of the
  objective, and the cost of a trial;
* **seed noise**: the pipeline's reference configuration (a reasonable
  setting of every stage, :data:`REFERENCE`) and the best random
  configuration, each run with pipeline seeds ``0 .. --seeds - 1``
  (``Runner(pipeline, seed=s)``: the seed sets every stage's PRNG key); the
  standard deviation over seeds is the noise;
* **stage sensitivity**: for each stage, ``--draws`` configurations that
  keep the other stages at the reference and draw this stage's
  hyperparameters uniformly (seed 0): range and standard deviation of the
  objective, and the range in units of the reference's seed noise;
* **cost shares**: each stage's share of the measured stage seconds, over
  every trial run above (all full trials, no cache).

Costs are the runner's measured wall seconds per stage (after
``block_until_ready``) and the process CPU seconds per trial. Run it pinned
to one core, so wall and CPU time both describe one core; on a machine shared
with other jobs the wall seconds are inflated and the CPU seconds are the
better estimate of an unloaded core (the JSON keeps both and the load average).
Compilation is not in the costs: the pipelines compile in ``prepare()``.

Ablations (``--pipelines`` also takes the names in :data:`VARIANTS`: a
pipeline's ``cpu`` size with some fields changed, e.g. without its
pretraining), usually with ``--draws 0`` (no stage sweeps).

Usage::

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/stage_sensitivity.py
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/stage_sensitivity.py --pipelines segmentation --draws 4
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/stage_sensitivity.py --draws 0 --seeds 3 \
        --pipelines segmentation-unpretrained language-unpretrained-student --out benchmarks/results/pretraining_ablation

Writes ``benchmarks/results/stage_sensitivity.json`` and ``.md`` (or
``--out``). The first run on a data directory also prepares the datasets and
the pretrained networks (minutes; not part of any cost).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import time

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

#: A reasonable configuration of each pipeline: the other stages' values in the stage sweeps.
REFERENCE = {
    "stacking": {
        "level0": {"n_estimators0": 10, "learning_rate0": 0.1, "max_depth0": 4, "n_estimators1": 10, "max_depth1": 8,
                   "learning_rate1": 0.1},
        "meta": {"C": 1.0, "tol": 1e-4, "max_iter": 100},
    },
    "segmentation": {
        "augment": {"mean_r": 0.4, "mean_g": 0.45, "mean_b": 0.3, "std_r": 0.15, "std_g": 0.15, "std_b": 0.15},
        "train": {"batch_size": 8, "peak_lr": 1e-2, "weight_decay": 1e-4},
        "crf": {"sigma": 1.0, "compat": 1.0, "confidence": 1.0},
    },
    "language": {
        "preprocess": {"batch_size": 16},
        "teacher": {"lr": 1e-3, "weight_decay": 1e-4},
        **{f"distill{i}": {"lr": 1e-3, "temperature": 2.0, "weight_decay": 1e-4} for i in (1, 2, 3)},
    },
}


#: Ablation variants: name -> (module, fields of its ``cpu`` size to change).
VARIANTS = {
    "segmentation-unpretrained": ("segmentation", {"pretrain_steps": 0}),  # U-Net from a random initialization
    "language-unpretrained-student": ("language", {"student_pretrain_steps": 0}),  # random student, as the authors'
}


def _pipeline(name: str):
    """A registered pipeline, or a :data:`VARIANTS` entry built from its module's ``cpu`` size."""
    from pipelines.registry import get_pipeline

    if name not in VARIANTS:
        return get_pipeline(name)
    import importlib

    module_name, fields = VARIANTS[name]
    module = importlib.import_module(f"pipelines.{module_name}")
    module.SIZES.setdefault(name, dataclasses.replace(module.SIZES["cpu"], **fields))
    return module.make_pipeline(name, name=name)


def _trial(pipe, config: dict, seed: int) -> dict:
    from eeipu_jax.runtime.runner import Runner

    runner = Runner(pipe, seed=seed)
    runner.data()  # prepare (memoized across runners) outside the timing
    c0 = time.process_time()
    res = runner.run(config)
    cpu = time.process_time() - c0
    if not res.ok:
        raise RuntimeError(f"{pipe.name} trial failed at stage {res.failed_stage}: {res.error}\n{res.traceback}")
    return {"config": config, "seed": seed, "objective": res.objective, "metrics": res.metrics,
            "stage_seconds": [float(c) for c in res.stage_costs], "wall": float(res.charged), "cpu": cpu}


def _trivial(name: str, pipe) -> tuple[float, str]:
    """The score of a trivial predictor, computed independently of the pipeline's model."""
    if name.startswith("segmentation"):
        data = pipe.prepare()
        y = np.asarray(data["y_val"]).ravel()
        present = np.unique(y)
        # all pixels predicted as the majority class: its IoU is its frequency, every other class 0
        freq = np.bincount(y).max() / y.size
        return float(freq / len(present)), "every pixel the majority class"
    if name.startswith("language"):
        return 0.0, "empty output"
    return 0.5, "constant score"


def study(name: str, n_random: int, n_seeds: int, n_draws: int, log) -> dict:
    pipe = _pipeline(name)
    pipe = dataclasses.replace(pipe, prepare=functools.cache(pipe.prepare))  # one preparation for all runners
    space = pipe.space
    t0 = time.perf_counter()
    pipe.prepare()
    prepare_seconds = time.perf_counter() - t0
    log(f"{name}: prepared in {prepare_seconds:.1f} s")
    ref = REFERENCE[VARIANTS[name][0] if name in VARIANTS else name]
    rng = np.random.default_rng(0)

    random_trials = []
    for u in space.sample(rng, n_random):
        random_trials.append(_trial(pipe, space.from_unit(u), 0))
        log(f"  random {len(random_trials)}: {random_trials[-1]['objective']:.4f} ({random_trials[-1]['cpu']:.2f} s cpu)")
    best = max(random_trials, key=lambda t: t["objective"])["config"]
    noise = {}
    for label, config in (("reference", ref), ("best random", best)):
        trials = [_trial(pipe, config, s) for s in range(n_seeds)]
        objs = [t["objective"] for t in trials]
        noise[label] = {"trials": trials, "std": float(np.std(objs, ddof=1)), "mean": float(np.mean(objs))}
        log(f"  noise {label}: {np.round(objs, 4).tolist()} std {noise[label]['std']:.4f}")
    stages = []
    for k, stage in enumerate(pipe.stages if n_draws else ()):
        trials = []
        for u in space.sample(rng, n_draws):
            config = {s.name: dict(ref[s.name]) for s in pipe.stages}
            config[stage.name] = space.from_unit(u)[stage.name]
            trials.append(_trial(pipe, config, 0))
        objs = np.array([t["objective"] for t in trials])
        stages.append({"stage": stage.name, "trials": trials, "min": float(objs.min()), "max": float(objs.max()),
                       "range": float(objs.max() - objs.min()), "std": float(objs.std(ddof=1))})
        log(f"  stage {stage.name}: {np.round(objs, 4).tolist()}")
    every = random_trials + [t for v in noise.values() for t in v["trials"]] + [t for s in stages for t in s["trials"]]
    seconds = np.array([t["stage_seconds"] for t in every])
    shares = seconds.mean(axis=0) / seconds.mean(axis=0).sum()
    costs = [{"stage": st.name, "cost_share": float(shares[k]), "mean_seconds": float(seconds[:, k].mean())}
             for k, st in enumerate(pipe.stages)]
    for s in stages:
        s.update(next(c for c in costs if c["stage"] == s["stage"]))
    objs = np.array([t["objective"] for t in random_trials])
    trivial, trivial_what = _trivial(name, pipe)
    return {
        "pipeline": name, "version": pipe.version, "prepare_seconds": prepare_seconds,
        "trivial": trivial, "trivial_what": trivial_what, "reference": ref,
        "random": {"trials": random_trials, "mean": float(objs.mean()), "min": float(objs.min()),
                   "max": float(objs.max()), "std": float(objs.std(ddof=1))},
        "noise": noise, "stages": stages, "costs": costs,
        "trial_wall": {"mean": float(np.mean([t["wall"] for t in every])),
                       "median": float(np.median([t["wall"] for t in every]))},
        "trial_cpu": {"mean": float(np.mean([t["cpu"] for t in every])),
                      "min": float(np.min([t["cpu"] for t in every])),
                      "max": float(np.max([t["cpu"] for t in every]))},
        "n_trials": len(every),
    }


def _markdown(results: dict) -> str:
    m = results["machine"]
    out = [
        "# Stage sensitivity of the real pipelines (`cpu` sizes)",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} cores, pinned to cores {m['affinity']} "
        f"(`taskset`), OMP_NUM_THREADS={results['omp_num_threads']}; "
        f"shared with other jobs (load average {m['load_start']} at the start, {m['load_end']} at the end), so wall "
        "seconds are inflated; CPU seconds are the process's own. Objective of every trial: seed 0 unless stated; "
        f"noise: standard deviation over pipeline seeds 0-{results['seeds'] - 1}.",
        "",
        "## Random configurations",
        "",
        f"{results['random']} configurations drawn uniformly in the search space (as the warm-up draws candidates).",
        "",
        "| pipeline | trivial score | mean | min | max | noise (reference) | noise (best random) "
        "| (max - min) / noise | CPU s per trial (mean, min-max) | wall s per trial (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["pipelines"]:
        rd, nz = r["random"], r["noise"]
        worst_noise = max(nz["reference"]["std"], nz["best random"]["std"])
        out.append(
            f"| {r['pipeline']} | {r['trivial']:.4f} ({r['trivial_what']}) | {rd['mean']:.4f} | {rd['min']:.4f} "
            f"| {rd['max']:.4f} | {nz['reference']['std']:.4f} | {nz['best random']['std']:.4f} "
            f"| {(rd['max'] - rd['min']) / max(worst_noise, 1e-12):.1f} "
            f"| {r['trial_cpu']['mean']:.2f} ({r['trial_cpu']['min']:.2f}-{r['trial_cpu']['max']:.2f}) "
            f"| {r['trial_wall']['median']:.2f} |")
    out += ["", "Objective of each random configuration (seed 0):", ""]
    for r in results["pipelines"]:
        out.append(f"* {r['pipeline']}: " + ", ".join(f"{t['objective']:.3f}" for t in r["random"]["trials"]))
    if results["draws"]:
        out += [
            "",
            "## Stage sensitivity",
            "",
            f"Each stage's hyperparameters drawn {results['draws']} times, the other stages at the reference "
            "configuration (below), seed 0. Noise: the reference configuration over seeds. Cost share: the stage's "
            "mean measured seconds over all full trials of the pipeline, divided by the trial's.",
            "",
            "| pipeline | stage | objective min | max | range | std | range / noise | cost share | mean stage s (wall) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["pipelines"]:
            noise = r["noise"]["reference"]["std"]
            for s in r["stages"]:
                out.append(f"| {r['pipeline']} | {s['stage']} | {s['min']:.4f} | {s['max']:.4f} | {s['range']:.4f} "
                           f"| {s['std']:.4f} | {s['range'] / max(noise, 1e-12):.1f} | {s['cost_share']:.2f} "
                           f"| {s['mean_seconds']:.3f} |")
            out.append(f"| {r['pipeline']} | (seed noise, reference) | | | | {noise:.4f} | | | |")
    else:
        out += ["", "Cost shares (mean stage seconds over all trials / the trial's):", ""]
        for r in results["pipelines"]:
            out.append(f"* {r['pipeline']}: " + ", ".join(f"{c['stage']} {c['cost_share']:.2f}" for c in r["costs"]))
    out += ["", "Reference configurations:", ""]
    for r in results["pipelines"]:
        out.append(f"* {r['pipeline']} (version `{r['version']}`): `{json.dumps(r['reference'])}`")
    return "\n".join(out) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipelines", nargs="+", default=["stacking", "segmentation", "language"])
    ap.add_argument("--random", type=int, default=10, help="random configurations per pipeline")
    ap.add_argument("--seeds", type=int, default=5, help="pipeline seeds for the noise")
    ap.add_argument("--draws", type=int, default=8, help="draws per stage")
    ap.add_argument("--out", default=os.path.join(RESULTS, "stage_sensitivity"), help="path without extension")
    args = ap.parse_args(argv)

    from eeipu_jax.utils import enable_compilation_cache

    enable_compilation_cache()
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    results = {
        "command": " ".join(["python", "benchmarks/stage_sensitivity.py"] + list(sys.argv[1:] if argv is None else argv)),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "affinity": affinity,
                    "load_start": [round(x, 2) for x in os.getloadavg()]},
        "random": args.random, "seeds": args.seeds, "draws": args.draws, "pipelines": [],
    }
    for name in args.pipelines:
        results["pipelines"].append(study(name, args.random, args.seeds, args.draws, lambda s: print(s, flush=True)))
    results["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    md = _markdown(results)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print(md)
    return results


if __name__ == "__main__":
    main()

"""One short check of this repository on a GPU machine, writing one report (under 5 minutes).

Nothing here has been measured on an accelerator yet. On a machine with an
NVIDIA GPU (``pip install -e '.[test]'`` and ``pip install -U "jax[cuda12]"``
done first), from the repository root::

    PYTHONPATH=. python benchmarks/gpu_check.py                 # writes benchmarks/results/gpu_check.{json,md}
    PYTHONPATH=. python benchmarks/gpu_check.py --cpu-dry-run   # the same steps on CPU (tiny sizes), to test the script

Steps, each in its own process with a time limit (a step that fails or runs
out of time is reported as such and the next one runs):

1. ``tests``: the default test suite on the GPU backend (``JAX_PLATFORMS=cuda``,
   stopped at ``--tests-seconds``; the report gives pytest's last lines);
2. ``ask``: seconds of ``loop.ask`` (compile + first call, median of 5) at
   n = 100 and 500 observations (benchmarks/bo_step_problem.py), GPU against CPU;
3. ``driver``: the jitted synthetic driver (``simulate.run_jitted``, seeds
   vmapped) on ``synthetic3``, 8 seeds, 40 trials each, GPU against CPU (a dry
   run: 2 seeds, 12 trials, the tests' smaller candidate batch);
4. ``sweep``: the epsilon ablation's shape (3 epsilon values x 8 seeds, 40
   trials, batch sharded over every device: ``simulate.run_jitted`` with a
   batch of Params), its runs per second on the accelerator against CPU (a
   dry run: 2 seeds, 12 trials);
5. ``pipelines``: one trial of each real pipeline at its ``-gpu`` size
   (``stacking-gpu``, ``segmentation-gpu``, ``language-gpu``; their data must
   be in the tfds cache already: there is no download);
6. ``ray``: a 2-worker Ray study of ``toy-small`` with one GPU per trial, and
   the devices each worker sees (skipped with fewer than two GPUs).

``--cpu-dry-run`` runs every step on the CPU backend instead, with the tests
cut to ``--dry-tests`` (default ``tests/test_gp.py``), ``-tiny`` pipelines and
a Ray study without GPUs, so the script itself is checked where no GPU is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

_ASK = r"""
import json, sys, time
sys.path.insert(0, "benchmarks")
import jax, numpy as np
from bo_step_problem import filled_state, make_space
from eeipu_jax import loop
space = make_space()
cfg = loop.BOConfig.from_space(space, method="eeipu", n_warmup=10)
out = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
for n in (100, 500):
    state = filled_state(cfg, space, n)
    t0 = time.perf_counter(); prop, s = loop.ask(jax.random.key(0), state, cfg); jax.block_until_ready(prop)
    first = time.perf_counter() - t0
    times = []
    for r in range(5):
        t0 = time.perf_counter(); prop, s = loop.ask(jax.random.key(r + 1), s, cfg); jax.block_until_ready(prop)
        times.append(time.perf_counter() - t0)
    out[f"n{n}"] = {"compile_and_first_s": first, "median_s": float(np.median(times))}
print("RESULT " + json.dumps(out))
"""

_DRIVER = r"""
import json, sys, time
import jax, numpy as np
from eeipu_jax import loop, simulate
from pipelines.synthetic import get_pipeline
problem = get_pipeline("synthetic3")
seeds, trials, small = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "small"
extra = dict(n_random=128, n_per_prefix=16) if small else {}
cfg = loop.BOConfig.from_space(problem.space, method="eeipu", n_warmup=5 if small else 10, **extra)
keys = jax.random.split(jax.random.key(0), seeds)
t0 = time.perf_counter()
runs = simulate.run_jitted(keys, problem, cfg, max_trials=trials, batching="vmap", capacity=16 if small else 32)
wall = time.perf_counter() - t0
print("RESULT " + json.dumps({"backend": jax.default_backend(), "seeds": seeds, "trials": trials, "wall_s": wall,
                              "best": [float(np.nanmax(r.y)) for r in runs]}))
"""

_SWEEP = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from eeipu_jax import loop, simulate
from pipelines.synthetic import get_pipeline
seeds, trials, small = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "small"
problem = get_pipeline("synthetic3")
extra = dict(n_random=128, n_per_prefix=16, n_warmup=5) if small else {}
config, base = loop.configure(problem.space, "eeipu", **extra)
eps = (0.01, 0.1, 1.0)
params = simulate.stack_params([loop.replace_params(base, "eeipu", epsilon=e) for e in eps for _ in range(seeds)])
keys = jnp.stack([jax.random.key(s) for _ in eps for s in range(seeds)])
out = {"backend": jax.default_backend(), "devices": len(jax.devices()), "runs": len(eps) * seeds}
for name in ("first", "again"):
    t0 = time.perf_counter()
    rs = simulate.run_jitted(keys, problem, config, params=params, max_trials=trials, batching="vmap",
                             capacity=16 if small else 32)
    out[name + "_s"] = time.perf_counter() - t0
out["runs_per_s"] = out["runs"] / out["again_s"]
out["best"] = [float(np.nanmax(r.y)) for r in rs]
print("RESULT " + json.dumps(out))
"""

_PIPELINES = r"""
import json, sys, time, traceback
import jax, numpy as np
import pipelines.registry
from eeipu_jax.runtime import Runner, get_pipeline
out = {"backend": jax.default_backend()}
for name in sys.argv[1:]:
    try:
        p = get_pipeline(name)
        params = p.space.from_unit(np.full(p.space.dim, 0.5, np.float32))
        runner = Runner(p, seed=0)
        t0 = time.perf_counter(); runner.data(); prepare = time.perf_counter() - t0
        r = runner.run(params)
        out[name] = {"status": r.status, "objective": r.objective, "charged_s": r.charged, "prepare_s": prepare,
                     "stage_seconds": [float(s) for s in r.stage_seconds], "error": r.error}
    except Exception as e:
        out[name] = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
print("RESULT " + json.dumps(out))
"""

_RAY = r"""
import json, sys, tempfile
import ray
from eeipu_jax.runtime import CachePolicy, Study
from eeipu_jax.runtime.driver import TrialWorker
from eeipu_jax.runtime.parallel import connect
import pipelines.registry
gpus = float(sys.argv[1])
connect(num_cpus=4)
out = {"cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}}
with tempfile.TemporaryDirectory() as d:
    study = Study.create(d + "/run", "toy-small", "eeipu", 1e9, 0, n_warmup=2)
    s = study.optimize(4, workers=2, resources={"num_cpus": 1, "num_gpus": gpus})
    out["study"] = {"n_trials": s["n_trials"], "n_failed": s["n_failed"], "parallel": s["parallel"]}
    actor = ray.remote(TrialWorker).options(num_cpus=1, num_gpus=gpus)
    p = study.pipeline
    workers = [actor.remote(p, 0, d + "/cache", CachePolicy("top_q"), True, True, None) for _ in range(2)]
    out["worker_devices"] = ray.get([w.devices.remote() for w in workers])
print("RESULT " + json.dumps(out))
"""


def _step(name: str, code: str, args: list[str], platform_name: str, seconds: float) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=platform_name, PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=seconds)
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"")[-1500:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-1500:]
        return {"step": name, "platform": platform_name, "status": "timeout", "seconds": seconds, "tail": str(tail)}
    wall = time.perf_counter() - t0
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    status = "ok" if proc.returncode == 0 and result is not None else "failed"
    return {"step": name, "platform": platform_name, "status": status, "seconds": wall, "result": result,
            "tail": "" if status == "ok" else (proc.stdout[-1500:] + proc.stderr[-2500:])}


def _tests(platform_name: str, paths: list[str], seconds: float) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=platform_name, PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds)
        status, out = ("ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"), proc.stdout
    except subprocess.TimeoutExpired as e:
        status = f"stopped at {seconds:g} s"
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    return {"step": "tests", "platform": platform_name, "status": status, "seconds": time.perf_counter() - t0,
            "command": " ".join(cmd[1:]), "tail": out[-3000:]}


def _gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _markdown(report: dict) -> str:
    lines = [f"# GPU check ({'CPU dry run' if report['dry_run'] else 'GPU'})", "",
             f"Machine: {report['machine']}; GPUs (nvidia-smi): {report['gpus']}; "
             f"command: `{report['command']}`; total {report['total_seconds']:.0f} s.", "",
             "| step | platform | status | seconds |", "|---|---|---|---|"]
    for s in report["steps"]:
        lines.append(f"| {s['step']} | {s['platform']} | {s['status']} | {s['seconds']:.1f} |")
    lines.append("")
    for s in report["steps"]:
        lines.append(f"## {s['step']} ({s['platform']})")
        lines.append("")
        if s.get("result") is not None:
            lines += ["```json", json.dumps(s["result"], indent=1)[:4000], "```"]
        if s.get("tail"):
            lines += ["```", s["tail"][-3000:], "```"]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="run every step on CPU with tiny sizes")
    ap.add_argument("--tests-seconds", type=float, default=120.0, help="time limit of the test suite step")
    ap.add_argument("--dry-tests", nargs="+", default=["tests/test_gp.py"], help="tests of a dry run")
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "ask", "driver", "sweep", "pipelines", "ray"])
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)

    dry = args.cpu_dry_run
    gpus = _gpu_count()
    if not dry and gpus == 0:
        print("no GPU found (nvidia-smi -L lists none); use --cpu-dry-run to check the script on CPU", file=sys.stderr)
        return 2
    accel = "cpu" if dry else "cuda"
    t_start = time.perf_counter()
    steps = []

    def run(step):
        steps.append(step)
        print(f"{step['step']:10s} {step['platform']:5s} {step['status']} ({step['seconds']:.1f} s)", flush=True)

    if "tests" not in args.skip:
        run(_tests(accel, args.dry_tests if dry else [], args.tests_seconds))
    if "ask" not in args.skip:
        for plat in (["cpu"] if dry else [accel, "cpu"]):
            run(_step("ask", _ASK, [], plat, 150))
    if "driver" not in args.skip:
        for plat in (["cpu"] if dry else [accel, "cpu"]):
            run(_step("driver", _DRIVER, ["2", "12", "small"] if dry else ["8", "40", "default"], plat, 240))
    if "sweep" not in args.skip:
        for plat in (["cpu"] if dry else [accel, "cpu"]):
            run(_step("sweep", _SWEEP, ["2", "12", "small"] if dry else ["8", "40", "default"], plat, 300))
    if "pipelines" not in args.skip:
        names = ["stacking-tiny", "segmentation-tiny", "language-tiny"] if dry else \
            ["stacking-gpu", "segmentation-gpu", "language-gpu"]
        run(_step("pipelines", _PIPELINES, names, accel, 240))
    if "ray" not in args.skip:
        if dry or gpus >= 2:
            run(_step("ray", _RAY, ["0" if dry else "1"], accel, 180))
        else:
            steps.append({"step": "ray", "platform": accel, "status": f"skipped ({gpus} GPU: needs 2)",
                          "seconds": 0.0})
    report = {
        "dry_run": dry, "gpus": gpus, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "PYTHONPATH=. python benchmarks/gpu_check.py" + (" " + " ".join(argv) if argv else ""),
        "total_seconds": time.perf_counter() - t_start, "steps": steps,
    }
    os.makedirs(args.out, exist_ok=True)
    name = "gpu_check_dry_run" if dry else "gpu_check"
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(_markdown(report))
    print(f"report: {os.path.join(args.out, name + '.md')}")
    return 0 if all(s["status"] == "ok" or s["status"].startswith("skipped") for s in steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())

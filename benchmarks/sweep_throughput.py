"""Sweep throughput: seed x setting runs per second of one compiled sweep, on 1 and 4 devices.

The grid is the epsilon ablation's shape (EEIPU on ``synthetic3``, 5 epsilon
values x ``--seeds`` seeds, ``--max-trials`` trials each, a smaller candidate
batch than the default so the benchmark takes minutes), run as one batch of
:func:`eeipu_jax.simulate.run_jitted`. Each device count runs in its own process
(``XLA_FLAGS=--xla_force_host_platform_device_count=D`` on a CPU; the real
devices elsewhere) with each batching asked for (``--batchings``, default ``map``):

* ``first``: the first sweep of the process (compilation included);
* ``again``: the same sweep with other seeds (compiled already): runs / second.

On a 2-core CPU, 4 simulated devices share one pinned XLA thread (the scripts'
set-up, :mod:`eeipu_jax.cpu`), so expect no gain: the point of the CPU figures
is that the multi-device path runs; the gain is an accelerator's (``gpu_check.py``
runs the same sweep on a GPU). On a CPU ``run_jitted`` runs the devices' shares
one after the other (``concurrent=False``, its CPU default: the sharded
program, with the devices at once, deadlocked in jaxlib on this sweep, README
"Accelerators"), and each device compiles the program for itself, so the first
sweep pays one compilation per device. The default batching is ``map``, the
CPU's: with ``--batchings vmap`` this sweep hung on one device too (jaxlib
0.10.2, every XLA thread asleep); ``vmap`` is for accelerators.

Usage:
    PYTHONPATH=. python benchmarks/sweep_throughput.py [--devices 1 4] [--seeds 4] [--max-trials 40]

Writes benchmarks/results/sweep_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bo_step_problem import RESULTS, machine, machine_line, write_results  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SWEEP = r"""
import json, sys, time
from eeipu_jax.cpu import pin_xla_threads
pin_xla_threads()  # as every script here: an unpinned pool deadlocks vmapped batched LAPACK (eeipu_jax.cpu)
import jax, jax.numpy as jnp, numpy as np
from eeipu_jax import loop, simulate
from pipelines.synthetic import get_pipeline
seeds, max_trials, batching = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
pipe = get_pipeline("synthetic3")
config, base = loop.configure(pipe.space, "eeipu", n_random=128, n_per_prefix=16, mc_samples=256)
eps = (0.01, 0.03, 0.1, 0.3, 1.0)
params = simulate.stack_params([loop.replace_params(base, "eeipu", epsilon=e) for e in eps for _ in range(seeds)])
out = {"backend": jax.default_backend(), "devices": len(jax.devices()), "runs": len(eps) * seeds}
for name, offset in (("first", 0), ("again", 1000)):
    keys = jnp.stack([jax.random.key(offset + s) for _ in eps for s in range(seeds)])
    t0 = time.perf_counter()
    rs = simulate.run_jitted(keys, pipe, config, params=params, max_trials=max_trials, batching=batching)
    out[name] = time.perf_counter() - t0
    out[name + "_trials"] = int(sum(len(r.y) for r in rs))
print("RESULT " + json.dumps(out))
"""


def run(devices: int, seeds: int, max_trials: int, batching: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               EEIPU_JAX_XLA_CACHE="off")
    env.setdefault("JAX_PLATFORMS", "cpu")
    out = subprocess.run([sys.executable, "-c", _SWEEP, str(seeds), str(max_trials), batching], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--max-trials", type=int, default=40)
    ap.add_argument("--batchings", nargs="+", default=["map"], choices=["map", "vmap"])
    ap.add_argument("--out", default=os.path.join(RESULTS, "sweep_throughput"))
    args = ap.parse_args()
    rows = []
    for batching in args.batchings:
        for d in args.devices:
            r = run(d, args.seeds, args.max_trials, batching)
            r.update(batching=batching, runs_per_s=r["runs"] / r["again"])
            rows.append(r)
            print(f"{batching} on {d} device(s): first {r['first']:.1f} s, again {r['again']:.1f} s "
                  f"({r['runs_per_s']:.2f} runs/s, {r['again_trials']} trials)", flush=True)
    info = machine()
    lines = ["| batching | devices | runs | first sweep (compile incl.) | again | runs / s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['batching']} | {r['devices']} | {r['runs']} | {r['first']:.1f} s | {r['again']:.1f} s | "
              f"{r['runs_per_s']:.2f} |" for r in rows]
    write_results(args.out, dict(rows=rows, machine=info, seeds=args.seeds, max_trials=args.max_trials),
                  "sweep throughput", [f"{machine_line(info)}.", "", *lines])


if __name__ == "__main__":
    main()

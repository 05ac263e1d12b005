"""Wall time of the full synthetic comparison: Python ask/tell driver vs jitted driver.

Runs ``experiments.synthetic`` on the same config (default: every method, the
3-, 5- and 10-stage pipelines, 10 seeds) once per driver:

* ``jitted-map``: whole BO loop under ``lax.while_loop``, seeds one after the
  other with ``lax.map`` (the CPU default);
* ``jitted-vmap``: the same loop vmapped over seeds (lockstep);
* ``python``: one ask/tell loop per seed (each ``ask`` is one jitted call);

each in a fresh process with an empty XLA compilation cache, so every driver
pays its own compilations. Reports wall seconds (total and per job), the
speed-up of each jitted variant over the Python driver, and checks that the
drivers agree on the results (BO iterations per method and pipeline; single
trajectories drift apart by float rounding over a hundred BO steps, so the
best objectives agree only statistically).

Usage:
    python benchmarks/synthetic_drivers.py [--config synthetic_paper] [--set seeds=10] [--workers 2]
        [--drivers jitted-map,python]

Writes benchmarks/results/synthetic_drivers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


DRIVERS = {
    "jitted-map": ["--driver", "jitted", "--batching", "map"],
    "jitted-vmap": ["--driver", "jitted", "--batching", "vmap"],
    "python": ["--driver", "python"],
}


def run_driver(driver: str, config: str, overrides: list[str], workers: int, out: str) -> float:
    cache = tempfile.mkdtemp(prefix=f"xla-{driver}-")
    env = dict(os.environ, EEIPU_JAX_XLA_CACHE=cache, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "experiments.synthetic", "--config", config, *DRIVERS[driver],
           "--out", out, "--workers", str(workers)]
    for o in overrides:
        cmd += ["--set", o]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="synthetic_paper")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--drivers", default="jitted-map,jitted-vmap,python",
                    help=f"comma-separated subset of {sorted(DRIVERS)} (must include python)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="keep every driver's results files in DIR/<driver> (default: a temporary "
                         "directory); each is then a complete results directory for paper_figures")
    args = ap.parse_args()
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    unknown = [d for d in drivers if d not in DRIVERS]
    if unknown or "python" not in drivers or len(drivers) < 2:
        sys.exit(f"--drivers: need python and at least one of jitted-map, jitted-vmap; got {drivers}")

    tmp = args.keep or tempfile.mkdtemp(prefix="drivers-")
    for driver in drivers:
        if os.path.exists(os.path.join(tmp, driver)):
            sys.exit(f"{os.path.join(tmp, driver)} exists: results there would be reused, not timed")
    res = {}
    for driver in drivers:
        out = os.path.join(tmp, driver)
        wall = run_driver(driver, args.config, args.overrides, args.workers, out)
        with open(os.path.join(out, "summary.json")) as f:
            summ = json.load(f)
        res[driver] = dict(wall_seconds=wall, table=summ["table"],
                           jobs={f"{j['pipeline']}/{j['method']}": j["seconds"] for j in summ["jobs"]})

    jitted = [d for d in drivers if d != "python"]
    py = res["python"]
    speedup = {d: py["wall_seconds"] / res[d]["wall_seconds"] for d in jitted}
    lines = [
        f"Synthetic comparison `{args.config}` {' '.join(args.overrides)}, {args.workers} worker processes, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), fresh XLA cache per driver.",
        "",
        "| driver | wall seconds | speed-up over python |",
        "|---|---|---|",
    ]
    for d in drivers:
        lines.append(f"| {d} | {res[d]['wall_seconds']:.0f} | {py['wall_seconds'] / res[d]['wall_seconds']:.2f}x |")
    lines += [
        "",
        "| job | " + " | ".join(f"{d} s" for d in drivers) + " | BO iterations (" + " / ".join(drivers) + ") |",
        "|---|" + "---|" * (len(drivers) + 1),
    ]
    agree = True
    for job in sorted(py["jobs"]):
        pipe, method = job.split("/")
        its = [res[d]["table"][pipe][method]["iterations"] for d in drivers]
        lines.append(f"| {job} | " + " | ".join(f"{res[d]['jobs'][job]:.0f}" for d in drivers) + " | "
                     + " / ".join(f"{v:.1f}" for v in its) + " |")
        agree &= max(its) - min(its) <= 1.0 + 0.1 * max(its)
    lines.append("")
    lines.append("Drivers agree on mean BO iterations per job (within 10%): " + ("yes" if agree else "NO"))
    md = "\n".join(lines)
    print(md)
    print(f"results files: {tmp}/{{{','.join(drivers)}}}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "synthetic_drivers.json"), "w") as f:
        json.dump(dict(config=args.config, overrides=args.overrides, workers=args.workers, speedup=speedup,
                       agree=agree,
                       **{d: {k: v for k, v in r.items() if k != "table"} for d, r in res.items()}), f, indent=2)
    with open(os.path.join(args.out, "synthetic_drivers.md"), "w") as f:
        f.write(md + "\n")


if __name__ == "__main__":
    main()

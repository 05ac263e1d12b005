"""Wall time of the full synthetic comparison: Python ask/tell driver vs jitted driver.

Runs ``experiments.synthetic`` twice on the same config (default: every method,
the 3-, 5- and 10-stage pipelines, 10 seeds), once with ``--driver jitted``
(whole BO loop under ``lax.while_loop``, vmapped over seeds) and once with
``--driver python`` (one ask/tell loop per seed), each in a fresh process with
an empty XLA compilation cache so both pay their own compilations. Reports
wall seconds (total and per job), the speed-up, and checks that both drivers
agree on the results (BO iterations and best objective per method and
pipeline, which should match up to float rounding).

Usage:
    python benchmarks/synthetic_drivers.py [--config synthetic_paper] [--set seeds=10] [--workers 2]

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


def run_driver(driver: str, config: str, overrides: list[str], workers: int, out: str) -> float:
    cache = tempfile.mkdtemp(prefix=f"xla-{driver}-")
    env = dict(os.environ, EEIPU_JAX_XLA_CACHE=cache, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "experiments.synthetic", "--config", config, "--driver", driver,
           "--out", out, "--workers", str(workers), "--no-figures"]
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
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="keep both drivers' results files in DIR/jitted and DIR/python (default: a temporary "
                         "directory); DIR/jitted is then a complete results directory for paper_figures")
    args = ap.parse_args()

    tmp = args.keep or tempfile.mkdtemp(prefix="drivers-")
    for driver in ("jitted", "python"):
        if os.path.exists(os.path.join(tmp, driver)):
            sys.exit(f"{os.path.join(tmp, driver)} exists: results there would be reused, not timed")
    res = {}
    for driver in ("jitted", "python"):
        out = os.path.join(tmp, driver)
        wall = run_driver(driver, args.config, args.overrides, args.workers, out)
        with open(os.path.join(out, "summary.json")) as f:
            summ = json.load(f)
        res[driver] = dict(wall_seconds=wall, table=summ["table"],
                           jobs={f"{j['pipeline']}/{j['method']}": j["seconds"] for j in summ["jobs"]})

    speedup = res["python"]["wall_seconds"] / res["jitted"]["wall_seconds"]
    lines = [
        f"Synthetic comparison `{args.config}` {' '.join(args.overrides)}, {args.workers} worker processes, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), fresh XLA cache per driver.",
        "",
        f"| driver | wall seconds |",
        f"|---|---|",
        f"| jitted (while_loop, vmapped over seeds) | {res['jitted']['wall_seconds']:.0f} |",
        f"| python (ask/tell loop per seed) | {res['python']['wall_seconds']:.0f} |",
        "",
        f"Speed-up of the jitted driver: {speedup:.1f}x.",
        "",
        "| job | jitted s | python s | iterations (jitted / python) | best (jitted / python) |",
        "|---|---|---|---|---|",
    ]
    agree = True
    for job, tj in sorted(res["jitted"]["jobs"].items()):
        pipe, method = job.split("/")
        a, b = res["jitted"]["table"][pipe][method], res["python"]["table"][pipe][method]
        lines.append(
            f"| {job} | {tj:.0f} | {res['python']['jobs'][job]:.0f} | {a['iterations']:.1f} / {b['iterations']:.1f} "
            f"| {a['best']:.3f} / {b['best']:.3f} |"
        )
        agree &= abs(a["iterations"] - b["iterations"]) <= 0.5 + 0.05 * a["iterations"]
    lines.append("")
    lines.append("Drivers agree on iterations per job (within float rounding): " + ("yes" if agree else "NO"))
    md = "\n".join(lines)
    print(md)
    print(f"results files: {tmp}/{{jitted,python}}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "synthetic_drivers.json"), "w") as f:
        json.dump(dict(config=args.config, overrides=args.overrides, workers=args.workers, speedup=speedup,
                       **{d: {k: v for k, v in r.items() if k != "table"} for d, r in res.items()}), f, indent=2)
    with open(os.path.join(args.out, "synthetic_drivers.md"), "w") as f:
        f.write(md + "\n")


if __name__ == "__main__":
    main()

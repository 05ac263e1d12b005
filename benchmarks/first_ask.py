"""The first BO step of a fresh process: without and with the persistent compilation cache.

What a user waits for at the first ``ask`` after the warm-up, in a new process:
the BO-step problem of ask_overhead.py (bo_step_problem.py: EEIPU, d = 10 in
K = 3 stages, default config) filled to each of ``--sizes`` observations, then
one ``loop.ask`` timed in a child process, with JAX's compile events
(``jax.monitoring``) split into tracing, lowering and XLA (or, from the cache,
loading the executable). Three children per size and round:

* ``cache off``: ``EEIPU_JAX_XLA_CACHE=off`` (the figure of ask_overhead.py's
  "compile+1st" column, there measured after other sizes in the same process);
* ``cache, empty``: the persistent compilation cache on, in a fresh directory
  (compiles and writes the program: a study's, the ``eeipu`` command's or an
  experiment's first process);
* ``cache, filled``: the same directory again (a resumed run, the next seed or
  worker process, a second study of the same space and config: the program
  is loaded, tracing and lowering still run).

``--rounds`` rounds, each child a fresh process; the table gives each round's
figures (this machine's timings vary by 10-20% from run to run).

Usage:
    python benchmarks/first_ask.py [--sizes 100 1000] [--rounds 3]

Writes benchmarks/results/first_ask.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bo_step_problem import RESULTS, machine_line, write_results  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import jax
from jax import monitoring
from bo_step_problem import filled_state, machine, make_space  # pins XLA's pool as the other scripts do
from eeipu_jax import loop
from eeipu_jax.utils import enable_compilation_cache
if sys.argv[3] != "off":
    enable_compilation_cache(sys.argv[3])
space = make_space()
cfg = loop.BOConfig.from_space(space, method="eeipu")
state = filled_state(cfg, space, int(sys.argv[2]))
jax.block_until_ready(state)
events = {}
def listen(name, secs, **kw):
    if str(kw.get("fun_name", "")) in ("_ask", "jit(_ask)"):
        key = name.rsplit("/", 1)[-1]
        events[key] = events.get(key, 0.0) + secs
monitoring.register_event_duration_secs_listener(listen)
t = time.perf_counter()
prop, _ = loop.ask(jax.random.key(0), state, cfg)
jax.block_until_ready(prop)
total = time.perf_counter() - t
print("RESULT " + json.dumps(dict(first_ask_s=total, events=events, capacity=int(state.X.shape[0]), machine=machine())))
"""


def child(n: int, cache: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("EEIPU_JAX_XLA_CACHE", None)
    if cache == "off":
        env["EEIPU_JAX_XLA_CACHE"] = "off"
    out = subprocess.run([sys.executable, "-c", CHILD, HERE, str(n), cache], capture_output=True, text=True,
                         env=env, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"child (n={n}, cache={cache}) failed:\n{out.stderr[-3000:]}")
    res = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    ev = res["events"]
    res.update(trace_s=ev.get("jaxpr_trace_duration"), lower_s=ev.get("jaxpr_to_mlir_module_duration"),
               xla_s=ev.get("backend_compile_duration"))
    return res


def fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(RESULTS, "first_ask"))
    args = ap.parse_args(argv)
    rows = []
    for r in range(args.rounds):
        for n in args.sizes:
            with tempfile.TemporaryDirectory() as d:
                for label, cache in (("cache off", "off"), ("cache, empty", d), ("cache, filled", d)):
                    res = child(n, cache)
                    row = dict(round=r + 1, n=n, capacity=res["capacity"], mode=label, first_ask_s=res["first_ask_s"],
                               trace_s=res["trace_s"], lower_s=res["lower_s"], xla_s=res["xla_s"],
                               load=res["machine"]["load_average"])
                    rows.append(row)
                    print(f"round {r + 1} n={n} {label:14s} first ask {row['first_ask_s']:.2f} s "
                          f"(trace {fmt(row['trace_s'])}, lower {fmt(row['lower_s'])}, XLA or load {fmt(row['xla_s'])})",
                          flush=True)
                    info = res["machine"]
    head = ("| round | n | capacity | persistent cache | first ask (s) | tracing (s) | lowering (s) | XLA or cache load (s) | load |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [f"| {w['round']} | {w['n']} | {w['capacity']} | {w['mode']} | {w['first_ask_s']:.2f} | "
             f"{fmt(w['trace_s'])} | {fmt(w['lower_s'])} | {fmt(w['xla_s'])} | {w['load'][0]} |" for w in rows]
    body = [machine_line(info), "",
            "The first `ask` after the warm-up in a fresh process (EEIPU, d = 10, K = 3, default config), "
            "each row its own process; with the cache filled, the XLA column is loading "
            "the compiled program (JAX reports it as the backend's compile event); the rest of the first ask is "
            "running it.", "", head, *lines]
    print("\n".join(body))
    write_results(args.out, dict(rows=rows, machine=info), "First ask of a process, with and without the "
                  "persistent compilation cache", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where compiling ``ask`` goes: tracing, lowering and XLA, under each set of compile options.

The BO-step problem of ask_overhead.py (bo_step_problem.py: EEIPU, d = 10 in
K = 3 stages, default config) at ``--sizes`` observations. For each size and
each option set (``--options``), in one process (XLA's persistent cache off):

* ``trace``: ``jax.jit(...).trace`` of the jitted ``ask`` (Python);
* ``lower``: to StableHLO;
* ``compile``: XLA (HLO passes, LLVM code generation, thunk emission);
* ``fusions``: fused computations in the optimized HLO (one compiled kernel each,
  roughly: the size that code generation pays for);
* ``median ask``: each option set's compiled program run on the same state
  and key, the option sets in turn, ``--repeats`` rounds (a cold refit: the
  first ask of a filled state; see ask_overhead.py for the ask kinds of a
  study).

Option sets: ``library`` (``eeipu_jax.cpu.compiler_options()``, what the
library compiles its programs with), ``xla-default`` (XLA's own values,
``eeipu_jax.cpu.XLA_CPU_DEFAULTS``), ``o1`` (``xla_backend_optimization_level=1``
alone), ``classic`` (classic emitters alone). Code generation runs on XLA's CPU pool, which the scripts pin to one
thread (bo_step_problem.py): on 2 threads it would take about half as long.

Usage:
    python benchmarks/compile_profile.py [--sizes 100 1000] [--options library xla-default] [--repeats 5]

Writes benchmarks/results/compile_profile.{json,md}.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("EEIPU_JAX_XLA_CACHE", "off")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bo_step_problem import arg_parser, filled_state, machine, machine_line, make_space, write_results  # noqa: E402
from eeipu_jax import cpu, loop  # noqa: E402

OPTION_SETS = {
    "library": cpu.compiler_options(),
    "xla-default": cpu.XLA_CPU_DEFAULTS,
    "o1": {"xla_backend_optimization_level": 1},
    "classic": {"xla_cpu_use_fusion_emitters": False},
}


def compile_with(cfg, state, options) -> tuple[dict, object]:
    """Trace, lower and compile ``loop.ask_traced`` with ``options``.

    JAX caches the trace and the lowering of a function for its arguments (the
    options enter only XLA's compile), so after the first option set of a size
    they are not measured again (``None``).
    """
    fn = jax.jit(loop.ask_traced, static_argnames=("config",), compiler_options=options)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    traced = fn.trace(key, state, cfg)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    hlo = compiled.as_text()
    fresh = (t2 - t0) > 0.05
    return dict(trace_s=t1 - t0 if fresh else None, lower_s=t2 - t1 if fresh else None, compile_s=t3 - t2,
                fusions=sum(1 for line in hlo.splitlines() if " fusion(" in line and "calls=" in line)), compiled


def time_round_robin(programs: dict, state, repeats: int) -> dict:
    """Median time of each compiled program, run in turn ``repeats`` times (no order effect)."""
    key = jax.random.key(0)
    for c in programs.values():  # one untimed run each
        jax.block_until_ready(c(key, state))
    times = {name: [] for name in programs}
    for _ in range(repeats):
        for name, c in programs.items():
            t = time.perf_counter()
            jax.block_until_ready(c(key, state))
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(v)) for name, v in times.items()}


def _s(v) -> str:
    return "(cached)" if v is None else f"{v:.2f} s"


def main():
    ap = arg_parser(__doc__, "compile_profile", [100, 1000], 5, "runs of the compiled program per row")
    ap.add_argument("--options", nargs="+", default=["library", "xla-default"], choices=sorted(OPTION_SETS))
    args = ap.parse_args()
    space = make_space()
    cfg = loop.BOConfig.from_space(space, method="eeipu")
    # One throwaway trace first: the process's first trace pays one-off imports and set-up.
    jax.jit(loop.ask_traced, static_argnames=("config",)).trace(
        jax.random.key(0), loop.canonicalize(filled_state(cfg, space, 20)), cfg)
    rows = []
    for n in args.sizes:
        state = loop.canonicalize(filled_state(cfg, space, n))
        programs, size_rows = {}, []
        for name in args.options:
            r, programs[name] = compile_with(cfg, state, OPTION_SETS[name])
            size_rows.append(dict(n=n, capacity=int(state.X.shape[0]), options=name, **r))
        medians = time_round_robin(programs, state, args.repeats)
        for r in size_rows:
            r["median_ask_s"] = medians[r["options"]]
            print(f"  n={n} {r['options']}: trace {_s(r['trace_s'])}, lower {_s(r['lower_s'])}, compile "
                  f"{r['compile_s']:.2f} s, {r['fusions']} fusions, median ask {r['median_ask_s']:.3f} s", flush=True)
        rows += size_rows
    info = machine()
    lines = [machine_line(info), "",
             f"`library` = {OPTION_SETS['library']}", "",
             "| n | capacity | options | trace | lower | XLA compile (s) | fusions | median ask (s) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['capacity']} | {r['options']} | {_s(r['trace_s'])} | {_s(r['lower_s'])} | "
              f"{r['compile_s']:.2f} | {r['fusions']} | {r['median_ask_s']:.3f} |" for r in rows]
    print("\n".join(lines))
    write_results(args.out, dict(machine=info, library_options=OPTION_SETS["library"], rows=rows),
                  "compile profile of ask (EEIPU, d = 10, K = 3)", lines)


if __name__ == "__main__":
    main()

"""Where the time of one EEIPU ``ask`` goes: its phases jitted and timed one by one.

Same problem and state as benchmarks/ask_overhead.py (bo_step_problem.py: d = 10
in K = 3 stages by default, ``--dim`` and ``--stages`` otherwise; default EEIPU
config) at n = 100, 200, 400, 800 observations
(capacities 128, 256, 512, 1024 with today's power-of-two buckets). Each phase
of ``loop.ask`` is jitted on its own, at the same shapes, with the same inputs
``ask`` builds, through the library's own functions:

* ``fit warm`` / ``fit cold``: ``gp.fit_stacked`` of the objective GP and the 3
  stage-cost GPs in one vmapped call, on the rows a refit sees
  (``gp.fit_rows``: at most ``BOConfig.fit_rows``) (warm: ``GPConfig.steps``
  Adam steps from the last fit; cold, every ``refit_every``-th refit:
  ``cold_steps`` from fresh starts); also the objective GP alone and the 3
  cost GPs alone (not part of the sum). Only the asks that refit pay these
  (``loop.Params.refit_growth`` sets when).
* ``condition``: ``gp.posterior_stacked`` (4 covariance matrices + Cholesky:
  what a refit ask pays after its fit; an ask between refits appends the new
  rows to the kept factors instead).
* ``candidates``: ``candidates.candidate_batch`` (512 Sobol + 5 x 2 x 32 prefix points).
* ``score``: the method's ``score`` vmapped over the batch (4 GP predictions
  per candidate + the Monte Carlo expected inverse cost, ``BOConfig.mc_samples`` samples).
* ``refine``: ``candidates.top_per_depth`` + ``candidates.refine`` vmapped over
  the best 4 of each memo depth (30 Adam steps each).
* host: ``loop.canonicalize`` and the proposal's transfer to NumPy, timed
  directly; ``tell`` (capacity check + jitted write) and the one-off costs of a
  new capacity bucket (``grow`` and the compilation of ``ask`` at 2N, without
  running it) are listed but are not part of one ask.

The whole ``ask`` is timed too: "ask held" (the usual ask between refits: one
told row appended to the kept factors), "ask warm refit" and "ask cold refit"
(a refit forced due, ``bo_step_problem.refit_due``); "sum of warm phases"
(fit warm + condition + the rest) is checked against "ask warm refit" (XLA
fuses across phase boundaries inside ``ask``, so they need not agree exactly;
the difference is dispatch and host work).

FLOPs per phase are estimated from the shapes (N = capacity, F = min(N,
fit_rows) rows in a fit, d = 10, M = 4 GPs, S Adam steps, B = 832
candidates, ``mc_samples`` Monte Carlo samples, 12 refined points x 30 steps): a
Cholesky is N^3/3; its reverse-mode derivative in JAX (the transpose of the
forward rule ``L_dot = L phi(L^-1 Sigma_dot L^-T)``) is two triangular solves
with N right-hand sides (N^3 each) and one N x N matmul (2 N^3), 4 N^3 in all;
a triangular solve with one right-hand side N^2; the kernel matrix 2 N^2 d
(one matmul) forward, twice that backward. So a fit step of one GP is about
13/3 F^3, 13 Cholesky factorizations' worth (the reverse-mode count is kept
as the reference; the hand-written gradient of ``gp.loss_and_grad`` does
less). The "at peak"
column is the time those FLOPs would take at the single-thread float32 matmul
rate measured in the same run (XLA dot, 1024 x 1024), the arithmetic limit of
this core; "% of peak" is that over the measured time.

Usage:
    python benchmarks/profile_ask.py [--sizes 100 200 400 800] [--repeats 5] [--trace DIR] [--dim 10 --stages 3] [--mc-samples M]

``--trace DIR`` also records one warm ask with ``jax.profiler`` (TensorBoard /
Perfetto format) and prints the XLA ops that took the most time in it.
Prints a table per size and writes benchmarks/results/profile_ask.{json,md}.
Wall-clock figures from a shared machine are indicative (the load average is
recorded).
"""

from __future__ import annotations

import functools
import glob
import gzip
import json
import os
import re
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bo_step_problem import (arg_parser, filled_state, machine, machine_line, make_space, objective,  # noqa: E402
                             refit_due, stage_costs, write_results)
from eeipu_jax import candidates as candlib  # noqa: E402
from eeipu_jax import gp as gplib  # noqa: E402
from eeipu_jax import loop, surrogates  # noqa: E402


# ------------------------------------------------------------------ phases
def fit_inputs(state: loop.BOState, cfg: loop.BOConfig):
    """``(init, targets, masks, input_masks, y_eff, valid)`` as ``loop.acquisition_state``
    assembles them for the stacked fit (objective GP first, then the stage-cost GPs)."""
    valid, y_eff = loop.effective_objective(state)
    log_c, cmasks, cinput = surrogates.cost_data(state, cfg, valid)
    targets = jnp.concatenate([y_eff[:, None], log_c], axis=1)
    masks = jnp.concatenate([valid[:, None], cmasks], axis=1)
    input_masks = jnp.concatenate([jnp.ones((1, cfg.dim), state.X.dtype), cinput], axis=0)
    init = state.gp_params
    return init, targets, masks, input_masks, y_eff, valid


def make_phases(cfg: loop.BOConfig):
    """The jitted phases of one ask for ``cfg`` (each compiled once per capacity)."""
    method = cfg.method_def
    gcfg = cfg.gp
    pmasks = jnp.asarray(cfg.prefix_masks)
    mparams = loop.default_params(cfg).method
    refine_lr = loop.default_params(cfg).refine_lr

    @jax.jit
    def fit(key, init, X, targets, masks, input_masks, cold, valid, priority):
        N = X.shape[0]
        size = N if cfg.fit_rows == 0 else min(N, cfg.fit_rows)
        k_fit, k_rows = jax.random.split(key)  # as loop.surrogates splits its key
        rows = None if size == N else gplib.fit_rows(k_rows, valid, priority, size)
        return gplib.fit_stacked(k_fit, init, X, targets, masks, input_masks, gcfg, cold, rows)

    @jax.jit
    def condition(params, X, targets, masks, input_masks, mean, std):
        return gplib.posterior_stacked(params, X, targets, masks, input_masks, mean, std, gcfg)

    @jax.jit
    def batch(key, X, y_eff, pool_ok):
        return candlib.candidate_batch(key, X, y_eff, pool_ok, n_random=cfg.n_random,
                                       n_per_prefix=cfg.n_per_prefix, q=cfg.top_q, prefix_masks=pmasks,
                                       memoize=method.memoize, n_local=cfg.n_local)

    @jax.jit
    def score(acq, b):
        vals = jax.vmap(lambda x, j: method.score(x, j, acq, mparams))(b.x, b.depth)
        return jnp.where(b.valid & jnp.isfinite(vals), vals, -jnp.inf)

    @jax.jit
    def refine(acq, b, vals):
        groups = cfg.n_stages if method.memoize else 1
        top, _ = candlib.top_per_depth(vals, b.depth, groups, cfg.n_refine)
        x0, d0 = b.x[top], b.depth[top]
        return jax.vmap(lambda x, j, f: candlib.refine(lambda z: method.score(z, j, acq, mparams), x, f,
                                                       cfg.refine_steps, refine_lr))(x0, d0, ~pmasks[d0])

    acq_state = jax.jit(functools.partial(loop.acquisition_state, config=cfg))
    return dict(fit=fit, condition=condition, batch=batch, score=score, refine=refine, acq_state=acq_state)


def median_time(f, repeats: int, budget_s: float = 30.0) -> float:
    """Median wall seconds of ``f()`` (results blocked on), after one untimed call
    (compilation). Stops early, after at least one timed call, once the timed calls
    have taken ``budget_s`` (a cold fit at N = 1024 takes close to a minute)."""
    jax.block_until_ready(f())
    ts = []
    while len(ts) < repeats and (not ts or sum(ts) < budget_s):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


# ------------------------------------------------------------------ FLOPs
def flop_model(cfg: loop.BOConfig, N: int) -> dict:
    """Estimated floating-point operations per phase at capacity ``N`` (module doc)."""
    d, M, K = cfg.dim, cfg.n_cost_models + 1, cfg.n_stages
    B = cfg.n_random + (cfg.top_q * (K - 1) * cfg.n_per_prefix if cfg.method_def.memoize else 0)
    mc = cfg.mc_samples
    R = cfg.gp.restarts
    chol = N**3 / 3
    kern = 2 * N**2 * d
    F = N if cfg.fit_rows == 0 else min(N, cfg.fit_rows)  # rows a refit sees
    f_chol, f_kern = F**3 / 3, 2 * F**2 * d
    step = f_chol + 4 * F**3 + 3 * f_kern  # forward + reverse of the log marginal likelihood
    # every fit ends with the loss of its result and of its incoming parameters: 2 forward passes
    fit = lambda S, m: m * (R * S * step + 2 * (f_chol + f_kern))  # noqa: E731
    predict = M * (N**2 + 2 * N * d) + mc * K * 4  # one candidate: M GP predictions + Monte Carlo
    n_ref = cfg.n_refine * (K if cfg.method_def.memoize else 1)
    return {
        "fit warm": fit(cfg.gp.steps, M),
        "fit cold": fit(cfg.gp.cold_steps, M),
        "fit warm, objective GP only": fit(cfg.gp.steps, 1),
        "fit warm, the cost GPs only": fit(cfg.gp.steps, M - 1),
        "condition": M * (chol + kern),
        "candidates": 0.0,
        "score": B * predict,
        "refine": n_ref * (3 * cfg.refine_steps + 2) * predict,  # a gradient ~ 3 forward passes
    }


def matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """Single-thread float32 FLOP/s of an XLA ``n x n`` matmul (the arithmetic reference)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / median_time(lambda: f(a), repeats)


def cholesky_rate(N: int, M: int, repeats: int = 5) -> float:
    """FLOP/s of a batched ``(M, N, N)`` float32 Cholesky (XLA CPU: LAPACK potrf)."""
    a = jax.random.normal(jax.random.key(1), (M, N, N), jnp.float32)
    spd = jnp.einsum("mij,mkj->mik", a, a) / N + jnp.eye(N)
    f = jax.jit(jnp.linalg.cholesky)
    return M * N**3 / 3 / median_time(lambda: f(spd), repeats)


# ------------------------------------------------------------------ one size
def profile(cfg: loop.BOConfig, space, n: int, repeats: int, peak: float) -> dict:
    state = loop.canonicalize(filled_state(cfg, space, n))
    N = int(state.X.shape[0])
    ph = make_phases(cfg)
    key = jax.random.key(n)
    k_fit, k_cand = jax.random.split(key)
    init, targets, masks, imasks, y_eff, valid = fit_inputs(state, cfg)
    pool_ok = valid & ~state.failed
    t = {}
    for name, cold in (("fit warm", False), ("fit cold", True)):
        t[name] = median_time(
            lambda: ph["fit"](k_fit, init, state.X, targets, masks, imasks, cold, valid, y_eff), repeats)
    sub = lambda tree, sl: jax.tree.map(lambda a: a[sl], tree)  # noqa: E731
    t["fit warm, objective GP only"] = median_time(
        lambda: ph["fit"](k_fit, sub(init, slice(0, 1)), state.X, targets[:, :1], masks[:, :1], imasks[:1], False,
                          valid, y_eff), repeats)
    t["fit warm, the cost GPs only"] = median_time(
        lambda: ph["fit"](k_fit, sub(init, slice(1, None)), state.X, targets[:, 1:], masks[:, 1:], imasks[1:],
                          False, valid, y_eff), repeats)
    params, mean, std = ph["fit"](k_fit, init, state.X, targets, masks, imasks, False, valid, y_eff)
    t["condition"] = median_time(
        lambda: ph["condition"](params, state.X, targets, masks, imasks, mean, std), repeats)
    t["candidates"] = median_time(lambda: ph["batch"](k_cand, state.X, y_eff, pool_ok), repeats)
    # The acquisition state exactly as ask builds it (its own jitted fit + conditioning).
    acq = ph["acq_state"](k_fit, state)[0]
    b = ph["batch"](k_cand, state.X, y_eff, pool_ok)
    t["score"] = median_time(lambda: ph["score"](acq, b), repeats)
    vals = ph["score"](acq, b)
    t["refine"] = median_time(lambda: ph["refine"](acq, b, vals), repeats)
    t["acquisition_state (fit warm + condition, one jit)"] = median_time(
        lambda: ph["acq_state"](k_fit, refit_due(state, cold=False)), repeats)

    # Host work around the jitted ask.
    t["host: canonicalize"] = median_time(lambda: loop.canonicalize(state), repeats)
    prop, s1 = loop.ask(key, state, cfg)  # compiles; the first ask of a state refits, cold
    jax.block_until_ready(prop)
    x = np.asarray(prop.x, np.float64)
    s2 = loop.tell(s1, x, float(objective(x)), stage_costs(x, np.asarray(cfg.stage_of_column)), 0)

    def to_host():
        return np.asarray(prop.x), int(prop.memo_depth), int(prop.source)

    t["host: proposal to NumPy"] = median_time(to_host, repeats)
    t["ask held (whole)"] = median_time(lambda: loop.ask(key, s2, cfg), repeats)
    t["ask warm refit (whole)"] = median_time(lambda: loop.ask(key, refit_due(s2, cold=False), cfg), repeats)
    t["ask cold refit (whole)"] = median_time(lambda: loop.ask(key, refit_due(s2, cold=True), cfg), repeats)
    # Not part of one ask: tell (capacity check + jitted write) and a new bucket's one-off costs.
    t["tell"] = median_time(lambda: loop.tell(s1, x, 0.0, np.ones(cfg.n_stages), 0), repeats)
    t["one-off: grow to 2N"] = median_time(lambda: loop.grow(state, 2 * N), repeats)
    t0 = time.perf_counter()  # compilation only (lower + compile), no call: a cold ask at 2N is slow
    jax.jit(loop.ask_traced, static_argnames=("config",)).lower(
        key, loop.canonicalize(loop.grow(state, 2 * N)), config=cfg).compile()
    t["one-off: compile ask at 2N"] = time.perf_counter() - t0

    flops = flop_model(cfg, N)
    parts = ["fit warm", "condition", "candidates", "score", "refine", "host: canonicalize",
             "host: proposal to NumPy"]
    total = sum(t[p] for p in parts)
    rows = []
    for name, sec in t.items():
        f = flops.get(name)
        rows.append(dict(phase=name, seconds=sec,
                         share=sec / t["ask warm refit (whole)"] if name in parts else None,
                         gflop=None if f is None else f / 1e9,
                         at_peak_s=None if f is None else f / peak,
                         pct_of_peak=None if not f else 100 * f / peak / sec))
    rows.append(dict(phase="sum of warm phases", seconds=total, share=total / t["ask warm refit (whole)"],
                     gflop=sum(flops[p] for p in parts if p in flops) / 1e9, at_peak_s=None, pct_of_peak=None))
    cold_parts = [p if p != "fit warm" else "fit cold" for p in parts]
    cold_total = sum(t[p] for p in cold_parts)
    return dict(n=n, capacity=N, rows=rows, sum_warm_s=total, sum_cold_s=cold_total,
                ask_held_s=t["ask held (whole)"], ask_warm_s=t["ask warm refit (whole)"],
                ask_cold_s=t["ask cold refit (whole)"],
                cholesky_gflops=cholesky_rate(N, cfg.n_cost_models + 1, repeats) / 1e9)


def table(res) -> list[str]:
    lines = [f"| {'phase':<50} | {'seconds':>8} | {'share of warm ask':>17} | {'est. GFLOP':>10} "
             f"| {'at peak (s)':>11} | {'% of peak':>9} |",
             f"|{'-' * 52}|{'-' * 10}|{'-' * 19}|{'-' * 12}|{'-' * 13}|{'-' * 11}|"]
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    for r in res["rows"]:
        lines.append(f"| {r['phase']:<50} | {r['seconds']:>8.4f} | {fmt(r['share'], '>17.1%')} "
                     f"| {fmt(r['gflop'], '>10.3f')} | {fmt(r['at_peak_s'], '>11.4f')} "
                     f"| {fmt(r['pct_of_peak'], '>9.1f')} |")
    return lines


# ------------------------------------------------------------------ trace
def trace_ops(cfg, space, n: int, out_dir: str, top: int = 15):
    """Record one ask with a warm refit with jax.profiler; return the ``top`` ops by total time."""
    state = filled_state(cfg, space, n)
    key = jax.random.key(0)
    _, s1 = loop.ask(key, state, cfg)
    s1 = refit_due(s1, cold=False)
    jax.block_until_ready(loop.ask(key, s1, cfg))
    with jax.profiler.trace(out_dir):
        jax.block_until_ready(loop.ask(key, s1, cfg))
    files = sorted(glob.glob(os.path.join(out_dir, "plugins", "profile", "*", "*.trace.json.gz")))
    return top_ops(files[-1], top) if files else []


def top_ops(trace_file: str, top: int = 15):
    """The ``top`` XLA op kinds of a jax.profiler trace file by self time."""
    with gzip.open(trace_file) as f:
        events = json.load(f).get("traceEvents", [])
    # XLA's own ops carry their HLO name; Python and runtime events do not. A while or
    # conditional op nests its body's ops: count self time (own duration less its children's).
    ops = sorted((e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})),
                 key=lambda e: (e["tid"], e["ts"], -e["dur"]))
    total, count = defaultdict(float), defaultdict(int)
    stack = []  # (tid, end, kind) of the enclosing ops
    for e in ops:
        while stack and (stack[-1][0] != e["tid"] or stack[-1][1] <= e["ts"]):
            stack.pop()
        if stack:
            total[stack[-1][2]] -= e["dur"] / 1e6
        kind = re.sub(r"\.\d+$", "", e["name"])  # fusion.12 and fusion.31 are one kind
        total[kind] += e["dur"] / 1e6
        count[kind] += 1
        stack.append((e["tid"], e["ts"] + e["dur"], kind))
    whole = sum(total.values())
    return [dict(op=k, seconds=v, share=v / whole, calls=count[k])
            for k, v in sorted(total.items(), key=lambda kv: -kv[1])[:top]]


def main():
    ap = arg_parser(__doc__, "profile_ask", [100, 200, 400, 800], 5, "timed calls per phase (median)")
    ap.add_argument("--trace", default=None, metavar="DIR",
                    help="also record one warm ask at the largest size with jax.profiler into DIR")
    ap.add_argument("--dim", type=int, default=10, help="unit-interval hyperparameters (default 10)")
    ap.add_argument("--stages", type=int, default=3, help="stages K they are split into (default 3)")
    ap.add_argument("--mc-samples", type=int, default=None,
                    help="Monte Carlo samples of the expected inverse cost (default: BOConfig's)")
    args = ap.parse_args()
    if args.repeats < 1 or any(n < 12 for n in args.sizes):
        ap.error("--repeats must be >= 1 and every size >= 12 (past the 10 warm-up trials)")
    if args.mc_samples is not None and args.mc_samples < 1:
        ap.error("--mc-samples must be >= 1")

    space = make_space(args.dim, args.stages)
    extra = {} if args.mc_samples is None else {"mc_samples": args.mc_samples}
    cfg = loop.BOConfig.from_space(space, method="eeipu", **extra)
    peak = matmul_peak()
    print(f"single-thread float32 matmul (XLA, 1024^3): {peak / 1e9:.1f} GFLOP/s", flush=True)
    results = []
    for n in args.sizes:
        results.append(profile(cfg, space, n, args.repeats, peak))
        r = results[-1]
        print(f"  n={n}: ask held {r['ask_held_s']:.3f} s, warm refit {r['ask_warm_s']:.3f} s, sum of phases "
              f"{r['sum_warm_s']:.3f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    ops = trace_ops(cfg, space, max(args.sizes), args.trace) if args.trace else None

    info = machine()
    info["matmul_gflops"] = peak / 1e9
    title = (f"Phases of one EEIPU ask (d={space.dim}, K={space.n_stages}, {cfg.n_cost_models + 1} GPs, "
             f"warm fit {cfg.gp.steps} / cold fit {cfg.gp.cold_steps} Adam steps, {cfg.n_random} + "
             f"{cfg.top_q}x{cfg.n_stages - 1}x{cfg.n_per_prefix} candidates, {cfg.n_refine} per depth refined "
             f"x {cfg.refine_steps} steps, {cfg.mc_samples} Monte Carlo samples), median of {args.repeats}")
    md = [f"{title}.", "", f"{machine_line(info)}; single-thread float32 matmul peak measured in the same run: "
          f"{peak / 1e9:.1f} GFLOP/s."]
    print(title)
    print(machine_line(info))
    for r in results:
        head = (f"n = {r['n']}, capacity N = {r['capacity']}: ask held {r['ask_held_s']:.4f} s; "
                f"ask warm refit {r['ask_warm_s']:.4f} s (sum of warm "
                f"phases {r['sum_warm_s']:.4f} s), ask cold refit {r['ask_cold_s']:.4f} s (sum {r['sum_cold_s']:.4f} s); "
                f"batched Cholesky ({cfg.n_cost_models + 1} x N x N) runs at {r['cholesky_gflops']:.1f} GFLOP/s")
        lines = table(r)
        print("\n" + head)
        print("\n".join(lines))
        md += [f"\n## {head}\n", *lines]
    if ops is not None:
        lines = [f"| {'XLA op (kind)':<45} | {'seconds':>8} | {'share':>6} | {'calls':>6} |",
                 f"|{'-' * 47}|{'-' * 10}|{'-' * 8}|{'-' * 8}|"]
        lines += [f"| {o['op'][:45]:<45} | {o['seconds']:>8.4f} | {o['share']:>6.1%} | {o['calls']:>6} |"
                  for o in ops]
        head = (f"jax.profiler trace of one warm ask at n = {max(args.sizes)}: XLA ops by total time "
                f"(self time, share of all XLA op time)")
        print("\n" + head)
        print("\n".join(lines))
        md += [f"\n## {head}\n", *lines]
    write_results(args.out, dict(d=space.dim, K=space.n_stages, mc_samples=cfg.mc_samples, repeats=args.repeats, machine=info,
                                 sizes=results, trace_top_ops=ops), "Profile of one ask", md)

if __name__ == "__main__":
    main()

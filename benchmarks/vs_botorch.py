"""One BO step of EEIPU: this project's jitted ``loop.ask`` against a standard BoTorch step.

Both sides get the same data (benchmarks/bo_step_problem.py: d = 10 in K = 3
stages, n observations of the smooth objective and its stage costs) and do the
same job: fit an objective GP and one GP per stage on log cost, then maximize
the memoization-aware, cost-aware acquisition

    log EI(x) + eta * log E[1 / C_j(x)],   C_j = sum_{k<j} epsilon + sum_{k>=j} c_k(x)

(EEIPU, arXiv 2411.03731, in log space) over fresh runs (j = 0) and over the
prefixes of the top-5 observations (j = 1, 2: the columns of the first j stages
fixed to the observation's values).

* **this project** -- ``loop.ask`` (float32, XLA pinned to one thread): the 4
  GPs in one vmapped call, one batch of 512 Sobol + 5 x 2 x 32 prefix
  candidates scored at once, the best 4 of each memo depth refined by 30 Adam
  steps. The GP hyperparameters are refitted on a schedule (``refit_growth``:
  when the trials have grown by 10%; warm: a few Adam steps from the current
  values, cold every ``refit_every``-th refit: fresh starts) and held between
  refits, when an ask only appends the newly told rows to the kept Cholesky
  factors. Timed (``bo_step_problem.time_ask_kinds``): compile + first call;
  the median cold refit; the median warm refit; the median held ask (the
  usual step: one row appended).
* **BoTorch** -- the standard recipe (float64, torch on one thread):
  ``SingleTaskGP`` with its default model, priors and ``Standardize`` outcome
  transform on the objective, one ``SingleTaskGP`` per stage on ln c_k (stage
  k's GP sees the columns of stages 0..k, this project's default), each fitted
  from scratch with ``fit_gpytorch_mll`` (L-BFGS-B); the acquisition is
  BoTorch's analytic ``LogExpectedImprovement`` plus eta times the log of the
  Monte Carlo expected inverse cost (1024 Sobol normal base samples per stage,
  shared by every x: common random numbers, so the acquisition is smooth and
  deterministic; memoized stages priced at epsilon = 0.1), written as a
  BoTorch ``AcquisitionFunction``; ``optimize_acqf(q=1, num_restarts=10,
  raw_samples=512)`` once for fresh runs and once per distinct prefix with
  ``fixed_features`` (as the EEIPU authors' code did: 1 + 10 calls here;
  ``--no-prefixes`` leaves the prefix calls out), the best value wins. Timed
  per step: fit, acquisition optimization, total; the first step separately.

The models are not identical (BoTorch's default kernel is RBF with
dimension-scaled log-normal priors, this project's Matern-5/2 with Gamma
priors; float64 vs float32) but the work is: exact GPs of the same size, the
same acquisition, the same candidate structure. eta is the state's cooling
exponent (1.0 here: the budget is 1e9).

Usage:
    python benchmarks/vs_botorch.py [--sizes 20 50 100 200 500 1000] [--repeats 3] [--no-prefixes]

Needs the optional extra: ``pip install -e '.[bench]'`` (exit code 2 without it).
Prints a table and writes benchmarks/results/vs_botorch.{json,md}. Wall-clock
figures from a shared machine are indicative (the load average is recorded).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from bo_step_problem import (arg_parser, filled_state, machine, machine_line, make_space,  # noqa: E402
                             observations, time_ask_kinds, write_results)
from eeipu_jax import costs as costlib  # noqa: E402
from eeipu_jax import loop  # noqa: E402

TOP_Q = 5
MC_SAMPLES = 1024


def _import_botorch():
    """The torch/BoTorch modules, or exit 2 with a message when the extra is missing."""
    try:
        import torch
        from botorch.acquisition import AcquisitionFunction, LogExpectedImprovement
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.optim import optimize_acqf
        from botorch.utils.sampling import draw_sobol_normal_samples
        from botorch.utils.transforms import t_batch_mode_transform
        from gpytorch.mlls import ExactMarginalLogLikelihood
    except ImportError as e:
        print(f"vs_botorch.py needs torch and botorch ({e}). Install the optional extra:\n"
              "    pip install -e '.[bench]'", file=sys.stderr)
        sys.exit(2)
    return dict(torch=torch, AcquisitionFunction=AcquisitionFunction, LogEI=LogExpectedImprovement,
                fit=fit_gpytorch_mll, SingleTaskGP=SingleTaskGP, optimize_acqf=optimize_acqf,
                sobol_normal=draw_sobol_normal_samples, t_batch=t_batch_mode_transform,
                MLL=ExactMarginalLogLikelihood)


def make_acquisition(bt):
    """The cost-aware log-EI acquisition class (built once BoTorch is imported)."""
    torch = bt["torch"]

    class MemoCostLogEI(bt["AcquisitionFunction"]):
        """``log EI(x) + eta * log E[1 / C_j(x)]`` with stages ``< j`` priced at epsilon
        (EEIPU, arXiv 2411.03731), the expectation over fixed normal base samples."""

        def __init__(self, obj_model, cost_models, cost_cols, best_f, eta, depth, log_eps, z):
            super().__init__(model=obj_model)
            self.log_ei = bt["LogEI"](obj_model, best_f=best_f)
            self.cost_models = torch.nn.ModuleList(cost_models)
            self.cost_cols = cost_cols
            self.eta, self.depth, self.log_eps = eta, depth, log_eps
            self.register_buffer("z", z)  # (M, K)

        @bt["t_batch"](expected_q=1)
        def forward(self, X):  # (b, 1, d) -> (b,)
            mu, sd = [], []
            for m, cols in zip(self.cost_models, self.cost_cols):
                post = m.posterior(X[..., cols])
                mu.append(post.mean[..., 0, 0])
                sd.append(post.variance[..., 0, 0].clamp_min(1e-12).sqrt())
            mu, sd = torch.stack(mu, -1), torch.stack(sd, -1)  # (b, K)
            log_c = mu[..., None, :] + sd[..., None, :] * self.z  # (b, M, K)
            memo = torch.arange(log_c.shape[-1]) < self.depth
            log_c = torch.where(memo, torch.full_like(log_c, self.log_eps), log_c)
            log_inv = torch.logsumexp(-torch.logsumexp(log_c, -1), -1) - math.log(self.z.shape[0])
            return self.log_ei(X) + self.eta * log_inv

    return MemoCostLogEI


def prefixes(X, y, soc, n_stages: int, q: int = TOP_Q):
    """``[(depth, source row, {column: value})]`` for the top-``q`` rows and depths
    ``1 .. K-1``, repeated prefixes dropped (as ``candidates.prefix_pool``)."""
    out, seen = [], set()
    for src in np.argsort(-y, kind="stable")[:q]:
        for j in range(1, n_stages):
            cols = [i for i, s in enumerate(soc) if s < j]
            key = (j, tuple(X[src, cols]))
            if key not in seen:
                seen.add(key)
                out.append((j, int(src), {i: float(X[src, i]) for i in cols}))
    return out


def botorch_step(bt, Acq, data, seed: int, with_prefixes: bool, eta: float, log_eps: float):
    """One BoTorch step on ``data``: ``(fit_s, opt_s, best depth, n optimize_acqf calls)``."""
    torch = bt["torch"]
    X, y, c, soc = data
    K = c.shape[1]
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    tX = torch.as_tensor(X, dtype=torch.float64)
    obj = bt["SingleTaskGP"](tX, torch.as_tensor(y, dtype=torch.float64)[:, None])
    bt["fit"](bt["MLL"](obj.likelihood, obj))
    cost_cols = [[i for i, s in enumerate(soc) if s <= k] for k in range(K)]
    cost_models = []
    for k in range(K):
        m = bt["SingleTaskGP"](tX[:, cost_cols[k]], torch.as_tensor(np.log(c[:, k]), dtype=torch.float64)[:, None])
        bt["fit"](bt["MLL"](m.likelihood, m))
        cost_models.append(m)
    t1 = time.perf_counter()
    z = bt["sobol_normal"](K, MC_SAMPLES, dtype=torch.float64, seed=seed)
    bounds = torch.stack([torch.zeros(X.shape[1]), torch.ones(X.shape[1])]).to(torch.float64)
    jobs = [(0, -1, None)] + (prefixes(X, y, soc, K) if with_prefixes else [])
    best = (-math.inf, None)
    for depth, _src, fixed in jobs:
        acq = Acq(obj, cost_models, cost_cols, float(y.max()), eta, depth, log_eps, z)
        _, val = bt["optimize_acqf"](acq, bounds=bounds, q=1, num_restarts=10, raw_samples=512,
                                     fixed_features=fixed)
        if float(val) > best[0]:
            best = (float(val), depth)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, best[1], len(jobs)


def table(rows) -> list[str]:
    cols = [("n", 5, "d"), ("capacity", 8, "d"), ("jax 1st+compile (s)", 19, ".2f"),
            ("jax cold (s)", 12, ".3f"), ("jax warm (s)", 12, ".3f"), ("jax held (s)", 12, ".3f"),
            ("botorch 1st (s)", 15, ".2f"), ("bt fit (s)", 10, ".3f"), ("bt acqf opt (s)", 15, ".3f"),
            ("bt step (s)", 11, ".3f"), ("bt / jax held", 13, ".0f"), ("bt / jax warm", 13, ".0f"),
            ("bt / jax cold", 13, ".0f"), ("depth jax/bt", 12, "s")]
    keys = ["n", "capacity", "jax_first_s", "jax_cold_s", "jax_warm_s", "jax_held_s", "bt_first_s", "bt_fit_s",
            "bt_opt_s", "bt_step_s", "ratio_held", "ratio_warm", "ratio_cold", "depths"]
    lines = ["| " + " | ".join(f"{name:>{w}}" for name, w, _ in cols) + " |",
             "|" + "|".join("-" * (w + 2) for _, w, _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:>{w}{f}}" for k, (_, w, f) in zip(keys, cols)) + " |")
    return lines


def main():
    ap = arg_parser(__doc__, "vs_botorch", [20, 50, 100, 200, 500, 1000], 3,
                    "timed steps per size and side (median)")
    ap.add_argument("--no-prefixes", action="store_true",
                    help="BoTorch side: optimize fresh runs only (no fixed-feature prefix optimizations)")
    args = ap.parse_args()
    if args.repeats < 1 or any(n < 2 for n in args.sizes):
        ap.error("--repeats must be >= 1 and every size >= 2")

    bt = _import_botorch()
    torch = bt["torch"]
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    Acq = make_acquisition(bt)
    import botorch

    space = make_space()
    cfg = loop.BOConfig.from_space(space, method="eeipu")
    soc = space.stage_of_column
    rows = []
    n_warnings = 0
    for n in args.sizes:
        state = filled_state(cfg, space, n)
        X, y, c = observations(space, n)
        eta = float(costlib.cooling_eta(state.budget, state.spent, state.b0))
        log_eps = math.log(float(state.params.epsilon))
        jfirst, jcold, jwarm, jheld, jprop = time_ask_kinds(cfg, state, args.repeats)
        jdepth = int(jprop.memo_depth)
        data = (X, y, c, soc)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            botorch_step(bt, Acq, data, 0, not args.no_prefixes, eta, log_eps)
            bfirst = time.perf_counter() - t0
            steps = [botorch_step(bt, Acq, data, r + 1, not args.no_prefixes, eta, log_eps)
                     for r in range(args.repeats)]
        n_warnings += len(caught)
        fit = float(np.median([s[0] for s in steps]))
        opt = float(np.median([s[1] for s in steps]))
        total = float(np.median([s[0] + s[1] for s in steps]))
        rows.append(dict(n=n, capacity=int(state.X.shape[0]), jax_first_s=jfirst, jax_cold_s=jcold,
                         jax_warm_s=jwarm, jax_held_s=jheld, bt_first_s=bfirst, bt_fit_s=fit, bt_opt_s=opt, bt_step_s=total,
                         bt_optimize_acqf_calls=steps[0][3], ratio_held=total / jheld, ratio_warm=total / jwarm, ratio_cold=total / jcold,
                         depths=f"{jdepth}/{steps[-1][2]}", bt_warnings=len(caught)))
        print(f"  n={n}: jax held {jheld:.3f} s, cold {jcold:.3f} s, botorch {total:.3f} s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)

    info = machine()
    info.update(torch=torch.__version__, botorch=botorch.__version__, torch_threads=torch.get_num_threads())
    calls = rows[0]["bt_optimize_acqf_calls"]
    title = (f"One EEIPU BO step, d={space.dim}, K={space.n_stages}: this project's loop.ask (float32) vs "
             f"BoTorch {botorch.__version__} (float64, torch {torch.__version__}), median of {args.repeats} "
             f"per size; BoTorch: {calls} optimize_acqf call(s) per step "
             f"({'fresh only' if args.no_prefixes else 'fresh + one per top-5 prefix, fixed_features'}), "
             f"num_restarts=10, raw_samples=512")
    threads = (f"Threads: torch {torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op; "
               f"JAX one core ({machine_line(info)})")
    lines = table(rows)
    print(title)
    print(threads)
    print("\n".join(lines))
    print(f"BoTorch warnings during the timed steps: {n_warnings}")
    write_results(args.out, dict(d=space.dim, K=space.n_stages, repeats=args.repeats,
                                 prefixes=not args.no_prefixes, top_q=TOP_Q, mc_samples=MC_SAMPLES, machine=info,
                                 rows=rows),
                  "One BO step: loop.ask vs BoTorch",
                  [f"{title}.", "", f"{threads}.", "",
                   "jax cold: an ask that refits the GP hyperparameters from fresh starts (every refit_every-th "
                   "refit); jax warm: an ask that refits them warm-started; jax held: an ask that holds them and "
                   "appends one told row to the kept factors (the usual step between refits, which come when the "
                   "trials grow by refit_growth); BoTorch fits from scratch every step. depth: memo depth of each "
                   "side's proposal.", "",
                   *lines])

if __name__ == "__main__":
    main()

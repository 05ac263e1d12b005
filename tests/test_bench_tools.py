"""The non-timing logic of the BO-step benchmarks (benchmarks/vs_botorch.py, profile_ask.py).

Wall-clock figures are not asserted (they go in benchmarks/results); what is
asserted is that the BoTorch side computes the same acquisition as EEIPU, that
the prefix jobs match a brute-force enumeration, and that the trace summary
counts self time.
"""

import dataclasses
import gzip
import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import bo_step_problem  # noqa: E402
import profile_ask  # noqa: E402
import vs_botorch  # noqa: E402
from eeipu_jax import loop  # noqa: E402


def test_filled_state_holds_the_observations():
    space = bo_step_problem.make_space()
    cfg = loop.BOConfig.from_space(space, method="eeipu")
    state = bo_step_problem.filled_state(cfg, space, 21)
    X, y, c = bo_step_problem.observations(space, 21)
    assert state.X.shape == (32, 10) and int(state.n) == 21
    np.testing.assert_allclose(np.asarray(state.y[:21]), y, rtol=1e-6)
    # stage k's cost is 1 + 3 * mean of its columns (4 + 3 + 3 columns)
    np.testing.assert_allclose(c[:, 1], 1 + 3 * X[:, 4:7].mean(1))


def test_prefix_jobs_match_brute_force():
    X = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.9], [0.1, 0.5, 0.4], [0.7, 0.7, 0.7]])
    y = np.array([3.0, 2.0, 1.0, 0.0])
    soc = (0, 1, 2)
    jobs = vs_botorch.prefixes(X, y, soc, 3, q=3)
    # rows 0, 1, 2 (best first); depth 1 fixes column 0, depth 2 columns 0-1.
    # Row 1 repeats row 0's prefixes at both depths, row 2 repeats it at depth 1.
    assert [(j, s) for j, s, _ in jobs] == [(1, 0), (2, 0), (2, 2)]
    assert jobs[2][2] == {0: 0.1, 1: 0.5}


def test_trace_summary_counts_self_time(tmp_path):
    ev = [  # a while op (10 us) holding two fusions (3 + 4 us), and a dot on another thread
        {"ph": "X", "tid": 1, "ts": 0.0, "dur": 10.0, "name": "while.3", "args": {"hlo_op": "while.3"}},
        {"ph": "X", "tid": 1, "ts": 1.0, "dur": 3.0, "name": "fusion.1", "args": {"hlo_op": "fusion.1"}},
        {"ph": "X", "tid": 1, "ts": 5.0, "dur": 4.0, "name": "fusion.2", "args": {"hlo_op": "fusion.2"}},
        {"ph": "X", "tid": 2, "ts": 2.0, "dur": 5.0, "name": "dot", "args": {"hlo_op": "dot"}},
        {"ph": "X", "tid": 1, "ts": 0.0, "dur": 50.0, "name": "$python frame", "args": {}},
    ]
    path = tmp_path / "t.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": ev}, f)
    ops = {o["op"]: o for o in profile_ask.top_ops(str(path))}
    assert set(ops) == {"while", "fusion", "dot"}
    assert ops["fusion"]["seconds"] == pytest.approx(7e-6) and ops["fusion"]["calls"] == 2
    assert ops["while"]["seconds"] == pytest.approx(3e-6)
    assert ops["dot"]["share"] == pytest.approx(5 / 15)


def test_cholesky_flops_dominate_the_fit_model():
    space = bo_step_problem.make_space()
    cfg = loop.BOConfig.from_space(space, method="eeipu")
    N = 1024
    # 4 GPs x 20 steps x (F^3/3 Cholesky + 4 F^3 for its reverse mode), F the rows a fit
    # sees; the kernel matrices (2 F^2 d, 3x with the backward pass) and the two closing
    # loss evaluations add about 2% at F = 1024 and 14% at F = 128
    d = cfg.dim
    for fit_rows, F in ((0, N), (cfg.fit_rows, min(N, cfg.fit_rows))):
        f = profile_ask.flop_model(dataclasses.replace(cfg, fit_rows=fit_rows), N)
        assert f["fit warm"] == pytest.approx(4 * 20 * 13 / 3 * F**3, rel=0.03 if F == N else 0.15)
        kernels = 4 * (20 * 3 + 2) * 2 * F**2 * d + 4 * 2 * F**3 / 3
        assert f["fit warm"] == pytest.approx(4 * 20 * 13 / 3 * F**3 + kernels)
        assert f["fit cold"] / f["fit warm"] == pytest.approx(5.0, rel=0.02)
        assert f["condition"] == pytest.approx(4 * (N**3 / 3 + 2 * N**2 * cfg.dim))  # all N rows either way


def _acquisition_parts(depth, mu, sd, z, log_eps):
    """The BoTorch acquisition's cost term at one x, with fixed stage posteriors."""
    bt = vs_botorch._import_botorch()
    torch = bt["torch"]
    Acq = vs_botorch.make_acquisition(bt)

    class Fixed(torch.nn.Module):  # a model whose posterior at any x is N(mu, sd^2)
        def __init__(self, m, s):
            super().__init__()
            self.m, self.s = m, s

        def posterior(self, X):
            class P:
                mean = torch.full(X.shape[:-1] + (1,), self.m, dtype=torch.float64)
                variance = torch.full(X.shape[:-1] + (1,), self.s**2, dtype=torch.float64)
            return P

    train_X = torch.rand(5, 2, dtype=torch.float64)
    obj = bt["SingleTaskGP"](train_X, torch.rand(5, 1, dtype=torch.float64))
    acq = Acq(obj, [Fixed(m, s) for m, s in zip(mu, sd)], [[0]] * len(mu), 0.5, 1.0, depth, log_eps,
              torch.as_tensor(z, dtype=torch.float64))
    x = torch.rand(1, 1, 2, dtype=torch.float64)
    return float((acq(x) - acq.log_ei(x)).detach())


def test_botorch_cost_term_is_the_eeipu_expected_inverse_cost():
    pytest.importorskip("botorch")
    from scipy.stats import norm, qmc

    # One stage, no memoization: E[1/C] = exp(-mu + sigma^2 / 2) for C log-normal.
    z1 = norm.ppf(qmc.Sobol(1, scramble=True, seed=0).random(4096))
    got = _acquisition_parts(0, [0.7], [0.4], z1, math.log(0.1))
    assert got == pytest.approx(-0.7 + 0.4**2 / 2, abs=2e-3)

    # Three stages, the first two memoized at epsilon: E[1 / (2 eps + c_3)] by plain Monte Carlo.
    rng = np.random.default_rng(1)
    zs = rng.standard_normal((200_000, 3))
    c3 = np.exp(0.5 + 0.3 * zs[:, 2])
    expect = math.log(np.mean(1.0 / (0.2 + c3)))
    z3 = norm.ppf(qmc.Sobol(3, scramble=True, seed=0).random(4096))
    got = _acquisition_parts(2, [5.0, 5.0, 0.5], [1.0, 1.0, 0.3], z3, math.log(0.1))
    assert got == pytest.approx(expect, abs=2e-3)

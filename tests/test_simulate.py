"""Simulated runs: memoized charging, budget stop, and Python vs jitted drivers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import loop, simulate
from pipelines.synthetic import get_pipeline

# One worker runs this file's tests: its module fixture is built once (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("simulate")

PIPE = get_pipeline("synthetic3")
CFG = loop.BOConfig.from_space(PIPE.space, method="eeipu", n_warmup=5, n_random=128, n_per_prefix=16)
BUDGET = 75.0
KW = dict(capacity=16, max_trials=16)


@pytest.fixture(scope="module")
def runs():
    py = simulate.run_python(jax.random.key(7), PIPE, CFG, BUDGET, **KW)
    keys = jnp.stack([jax.random.key(7), jax.random.key(8)])
    jit = simulate.run_jitted(keys, PIPE, CFG, BUDGET, batching="vmap", **KW)
    mapped = simulate.run_jitted(keys, PIPE, CFG, BUDGET, batching="map", **KW)
    return py, jit + mapped


def test_memoized_trials_are_charged_epsilon_plus_the_unmemoized_stages(runs):
    py, jit = runs
    for r in [py] + jit:
        assert r.n_bo > 0
        true = np.asarray(jax.vmap(PIPE.stage_costs)(jnp.asarray(r.X)))
        np.testing.assert_allclose(r.stage_costs, true, rtol=1e-5)  # GPs learn full costs
        for i in range(len(r.y)):
            j = int(r.memo_depth[i])
            expected = 0.1 * j + true[i, j:].sum()
            assert r.charged[i] == pytest.approx(expected, rel=1e-5), (i, j)
    assert (py.memo_depth[py.n_warmup:] > 0).any()


def test_budget_is_never_overspent_by_more_than_one_trial(runs):
    py, jit = runs
    for r in [py] + jit:
        spent = r.spent
        stopped_by_budget = spent[-1] >= BUDGET
        if stopped_by_budget:
            assert spent[-2] < BUDGET  # the loop stops after the first trial past the budget
        else:
            assert len(r.y) == KW["max_trials"]
        # eta follows the linear cooling schedule of the spend before each ask
        b0 = spent[r.n_warmup - 1]
        for i in range(r.n_warmup, len(r.y)):
            assert r.eta[i] == pytest.approx(max(0.0, (BUDGET - spent[i - 1]) / (BUDGET - b0)), abs=1e-4)


@pytest.mark.same_rounding
def test_python_and_jitted_drivers_give_the_same_trajectory(runs):
    py, jit = runs
    for j in (jit[0], jit[2]):  # vmapped and mapped seed batches
        assert len(py.y) == len(j.y)
        np.testing.assert_array_equal(py.memo_depth, j.memo_depth)
        np.testing.assert_allclose(py.X, j.X, atol=2e-3)
        np.testing.assert_allclose(py.y, j.y, atol=2e-2)
    # the second seed really is another run, with the same warm-up under both batchings
    assert not np.allclose(jit[1].X[: py.n_warmup], py.X[: py.n_warmup])
    np.testing.assert_allclose(jit[1].X[: py.n_warmup], jit[3].X[: py.n_warmup], atol=1e-6)


def test_unknown_batching_is_refused():
    with pytest.raises(ValueError, match="batching"):
        simulate.run_jitted(jnp.stack([jax.random.key(0)]), PIPE, CFG, BUDGET, batching="pmap", **KW)


def test_warmup_is_shared_across_methods():
    cfg_ei = loop.BOConfig.from_space(PIPE.space, method="ei", n_warmup=5)
    a, _ = simulate.initial_state(jax.random.key(3), PIPE, CFG, 50.0, capacity=16)
    b, _ = simulate.initial_state(jax.random.key(3), PIPE, cfg_ei, 50.0, capacity=16)
    np.testing.assert_array_equal(np.asarray(a.X), np.asarray(b.X))
    assert float(a.b0) == pytest.approx(float(b.b0)) and float(a.b0) > 0


def _told(cfg, ys):
    """A state with one trial per ``y``; row ``i`` is ``0.1 * i`` in every column."""
    state = loop.init(cfg, 100.0, capacity=16)
    for i, yv in enumerate(ys):
        state = loop.tell(state, np.full(PIPE.dim, 0.1 * i, np.float32), yv, np.ones(3), 0)
    return state


def _with_prefix(state, row, depth, fill=0.95):
    """A point copying the depth-``depth`` prefix of ``row`` (free columns ``fill``)."""
    soc = np.asarray(CFG.stage_of_column)
    x = np.where(soc < depth, np.asarray(state.X[row]), fill).astype(np.float32)
    return jnp.asarray(x)


def test_is_cached_policies_and_pool_modes():
    ys = [0.1, 0.5, float("nan"), 0.3, 0.9, 0.2, 0.7]  # CFG.n_warmup = 5: rows 0-4 are warm-up
    state = _told(CFG, ys)
    held = lambda st, cfg, pol, row, j: bool(simulate.is_cached(st, cfg, pol, _with_prefix(st, row, j), j))  # noqa: E731
    # top_q (Q = 5), pool of every finished trial: rows 1, 3, 4, 5, 6 (the failed row 2 never)
    for row in range(7):
        assert held(state, CFG, "top_q", row, 1) == (row in {1, 3, 4, 5, 6})
    assert held(state, CFG, "all", 0, 2) and not held(state, CFG, "all", 2, 1)
    assert not held(state, CFG, "top_q", 4, 0)  # depth 0 restores nothing
    # post_warmup: only BO-phase rows (5, 6) provide prefixes, so the best trial's (row 4) is not held
    post = dataclasses.replace(CFG, prefix_pool="post_warmup")
    assert [held(state, post, "top_q", r, 1) for r in (1, 4, 5, 6)] == [False, False, True, True]
    # a prefix that only matches at depth 1 is held at depth 1, not at depth 2
    x = _with_prefix(state, 4, 1).at[2].set(0.123)  # a stage-1 column differs from row 4
    soc = np.asarray(CFG.stage_of_column)
    assert soc[2] == 1
    assert bool(simulate.is_cached(state, CFG, "top_q", x, 1))
    assert not bool(simulate.is_cached(state, CFG, "top_q", x, 2))
    with pytest.raises(ValueError, match="cache_policy"):
        simulate.is_cached(state, CFG, "lru", x, 1)


def test_top_prefixes_keeps_distinct_prefixes_beyond_the_top_trials():
    # Rows 1..5 share row 1's stage-0 prefix; top_trials at depth 1 then offers one prefix only,
    # top_prefixes offers the best trial of each distinct prefix (rows 0 and 6 too).
    state = _told(CFG, [0.1, 0.9, 0.8, 0.85, 0.7, 0.75, 0.2])
    soc = np.asarray(CFG.stage_of_column)
    X = np.array(state.X)
    X[2:6, soc == 0] = X[1, soc == 0]
    state = state._replace(X=jnp.asarray(X))
    tops = dataclasses.replace(CFG, prefix_select="top_prefixes")
    for row in (0, 6):
        assert not bool(simulate.is_cached(state, CFG, "top_q", _with_prefix(state, row, 1), 1))
        assert bool(simulate.is_cached(state, tops, "top_q", _with_prefix(state, row, 1), 1))
    pool = loop.prefix_pool(state, tops)
    assert sorted(np.asarray(pool.source[0])[np.asarray(pool.ok[0])].tolist()) == [0, 1, 6]


MODES = [(pool, select) for pool in ("all", "post_warmup") for select in ("top_trials", "top_prefixes")]


# The default mode and the one that changes both knobs run by default; the rest (each a fresh
# compile of a 60-trial run) are slow. tests/test_study.py covers pbgi and post_warmup through a Study.
_DEFAULT_MODES = {("all", "top_trials"), ("post_warmup", "top_prefixes")}


@pytest.mark.parametrize(
    "pool,select,method",
    [m + ("eeipu",) if m in _DEFAULT_MODES else pytest.param(*m, "eeipu", marks=pytest.mark.slow) for m in MODES]
    + [pytest.param("post_warmup", "top_prefixes", "pbgi", marks=pytest.mark.slow)],
)
def test_every_memoized_proposal_is_a_cache_hit(pool, select, method):
    """The pool the optimizer proposes from is what the simulated cache keeps: 0 misses."""
    cfg = dataclasses.replace(CFG, method=method, prefix_pool=pool, prefix_select=select)
    kw = dict(capacity=16, max_trials=16)
    py = simulate.run_python(jax.random.key(11), PIPE, cfg, 60.0, **kw)
    jit = simulate.run_jitted(jnp.stack([jax.random.key(11), jax.random.key(12)]), PIPE, cfg, 60.0, **kw)
    n_memo = 0
    for r in [py] + jit:
        bo = r.proposed_depth[r.n_warmup:]
        assert np.all(bo >= 0)
        n_memo += int(np.sum(bo > 0))
        assert r.n_misses == 0
        np.testing.assert_array_equal(r.memo_depth[r.n_warmup:], bo)
    assert n_memo >= 5  # the test exercises memoized proposals


# ------------------------------------------------------ asynchronous driver
@pytest.mark.same_rounding
def test_async_driver_with_one_worker_is_the_python_run(runs):
    """W = 1: nothing is ever pending, so every ask is the single-worker step
    and the run is run_python's, trial for trial, back to back in time."""
    py, _ = runs
    r = simulate.run_async(jax.random.key(7), PIPE, CFG, BUDGET, 1, **KW)
    np.testing.assert_array_equal(r.X, py.X)
    np.testing.assert_array_equal(r.y, py.y)
    np.testing.assert_array_equal(r.memo_depth, py.memo_depth)
    np.testing.assert_allclose(r.charged, py.charged, rtol=1e-6)
    np.testing.assert_allclose(r.start[1:], r.end[:-1], rtol=1e-12)
    np.testing.assert_allclose(r.end - r.start, r.charged, rtol=1e-6)
    assert not r.from_pending.any() and np.all(r.wait == 0)


def test_async_driver_runs_workers_concurrently_and_charges_what_ran():
    W = 3
    r = simulate.run_async(jax.random.key(8), PIPE, CFG, BUDGET, W, capacity=16, max_trials=14)
    n = len(r.y)
    assert n == 14 and r.n_misses == 0
    true = np.asarray(jax.vmap(PIPE.stage_costs)(jnp.asarray(r.X)))
    for i in range(n):
        j = int(r.memo_depth[i])
        assert r.charged[i] == pytest.approx(0.1 * j + true[i, j:].sum(), rel=1e-5)
        # a trial takes its charge, plus any wait for a running trial's prefix
        assert r.end[i] - r.start[i] == pytest.approx(r.wait[i] + r.charged[i], rel=1e-6)
        if r.wait[i] > 0:
            assert r.from_pending[i]
    # each worker runs one trial at a time; W run at once
    for w in range(W):
        mine = np.flatnonzero(r.worker == w)
        assert np.all(r.start[mine][1:] >= r.end[mine][:-1] - 1e-9)
    assert set(r.worker.tolist()) == set(range(W))
    t = np.sort(np.concatenate([r.start, r.end]))
    running = [np.sum((r.start <= s) & (r.end > s)) for s in t]
    assert max(running) == W
    # no trial starts once spent + committed reach the budget
    for i in range(n):
        done = r.end <= r.start[i]
        live = (r.start < r.start[i]) & (r.end > r.start[i])
        assert r.charged[done].sum() + r.charged[live].sum() < BUDGET
    # BO starts once the whole warm-up is told
    assert np.all(r.start[CFG.n_warmup:] >= r.end[: CFG.n_warmup].max() - 1e-9)

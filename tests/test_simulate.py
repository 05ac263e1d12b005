"""Simulated runs: memoized charging, budget stop, and Python vs jitted drivers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import loop, simulate
from pipelines.synthetic import get_pipeline

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
    a, _ = simulate._init_run(jax.random.key(3), 50.0, 0.1, PIPE, CFG, "cost_aware", 16)
    b, _ = simulate._init_run(jax.random.key(3), 50.0, 0.1, PIPE, cfg_ei, "cost_aware", 16)
    np.testing.assert_array_equal(np.asarray(a.X), np.asarray(b.X))
    assert float(a.b0) == pytest.approx(float(b.b0)) and float(a.b0) > 0


def test_cached_rows_policies():
    state = loop.init(CFG, 100.0, capacity=16)
    for i, yv in enumerate([0.1, 0.5, float("nan"), 0.3, 0.9, 0.2, 0.7]):
        state = loop.tell(state, np.full(PIPE.dim, 0.1 * i), yv, np.ones(3), 0)
    top = np.asarray(simulate.cached_rows(state, CFG, "top_q"))
    assert set(np.flatnonzero(top)) == {1, 3, 4, 5, 6}  # top-5 finished trials, failed one excluded
    allr = np.asarray(simulate.cached_rows(state, CFG, "all"))
    assert set(np.flatnonzero(allr)) == {0, 1, 3, 4, 5, 6}
    with pytest.raises(ValueError, match="cache_policy"):
        simulate.cached_rows(state, CFG, "lru")

"""EI, log-EI, Monte Carlo expected inverse cost, cooling, the method registry, and every
acquisition's value against an independent NumPy GP with closed-form / Monte Carlo costs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from eeipu_jax import acquisition as acq
from eeipu_jax import methods
from eeipu_jax import costs, loop
from eeipu_jax.cpu import jit  # the library's compile options (eeipu_jax.cpu)

# One worker runs this file's tests: its module fixture is built once (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("acquisition")


def ei_scipy(mean, sd, best, xi=0.0):
    u = (mean - best - xi) / sd
    return sd * (stats.norm.pdf(u) + u * stats.norm.cdf(u))


def test_ei_pinned_convention():
    # EI (maximization, xi = 0) of N(0.1, 1) at best 0.2.
    assert float(acq.expected_improvement(0.1, 1.0, 0.2)) == pytest.approx(0.3509353, abs=1e-6)
    assert ei_scipy(0.1, 1.0, 0.2) == pytest.approx(0.3509353, abs=1e-6)


def test_ei_matches_scipy_closed_form():
    rng = np.random.default_rng(0)
    mean, sd, best = rng.normal(size=200), rng.uniform(0.05, 3, 200), rng.normal(size=200)
    xi = rng.uniform(0, 0.1, 200)
    got = jax.vmap(acq.expected_improvement)(mean, sd**2, best, xi)
    np.testing.assert_allclose(got, ei_scipy(mean, sd, best, xi), rtol=2e-5, atol=1e-7)


def test_log_ei_matches_log_of_ei_over_the_whole_range():
    u = np.concatenate([np.linspace(-38, 6, 2001), [-1.0, -7.0, -1.0 - 1e-6, -7.0 + 1e-5]])
    # float64 reference; h(u) = phi(u) + u Phi(u), from SciPy's scaled erfc to avoid cancellation
    from scipy.special import erfcx

    t = -u
    h_ref = np.where(
        u > -1,
        stats.norm.pdf(u) + u * stats.norm.cdf(u),
        stats.norm.pdf(u) * (1 - t * np.sqrt(np.pi / 2) * erfcx(t / np.sqrt(2))),
    )
    log_ref = np.log(h_ref)
    got = np.asarray(jax.vmap(acq.log_h)(jnp.asarray(u, jnp.float32)))
    assert np.all(np.isfinite(got))
    # relative accuracy of h (absolute in log space)
    np.testing.assert_allclose(got, log_ref, atol=2e-4, rtol=2e-6)
    # and the scaled form: log EI = log sigma + log h
    got2 = float(acq.log_expected_improvement(0.1, 4.0, 0.2))
    assert got2 == pytest.approx(np.log(ei_scipy(0.1, 2.0, 0.2)), abs=1e-5)


def test_log_ei_far_tail_finite_monotone_with_finite_gradient():
    u = jnp.linspace(-300.0, -5.0, 500)
    v = jax.vmap(acq.log_h)(u)
    g = jax.vmap(jax.grad(acq.log_h))(u)
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(g))
    assert np.all(np.diff(np.asarray(v)) > 0)
    # where EI itself underflows in float32, log-EI still orders candidates
    assert float(acq.expected_improvement(-30.0, 1.0, 0.0)) == 0.0
    assert float(acq.log_expected_improvement(-30.0, 1.0, 0.0)) < float(acq.log_expected_improvement(-29.0, 1.0, 0.0))


@pytest.mark.parametrize("mu, sigma", [(0.5, 0.3), (-1.0, 0.8), (2.0, 1.2), (0.0, 0.05)])
def test_mc_inverse_cost_one_stage_matches_lognormal_moment(mu, sigma):
    # C ~ LogNormal(mu, sigma): E[1/C] = exp(-mu + sigma^2 / 2).
    z = costs.normal_base_samples(jax.random.key(0), 4096, 1)
    got = float(costs.log_expected_inverse_cost(jnp.asarray([mu]), jnp.asarray([sigma]), 0, z, np.log(0.1)))
    assert got == pytest.approx(-mu + 0.5 * sigma**2, abs=5e-3)
    # one memoized stage of one: the whole cost is epsilon
    got = float(costs.log_expected_inverse_cost(jnp.asarray([mu]), jnp.asarray([sigma]), 1, z, np.log(0.1)))
    assert got == pytest.approx(-np.log(0.1), abs=1e-6)


def _log_mean_inverse_cost(c, j, eps):
    """NumPy ``ln E[1/C_j]`` from samples ``c`` (rows) of the stage costs, the first ``j``
    stages priced at ``eps``: the brute-force reference of the Monte Carlo tests."""
    return np.log(np.mean(1.0 / (c[:, j:].sum(1) + j * eps)))


def test_mc_inverse_cost_several_stages_against_brute_force():
    mu, sigma = np.array([1.0, 0.2, -0.5]), np.array([0.5, 0.3, 0.9])
    rng = np.random.default_rng(0)
    c = np.exp(mu + sigma * rng.normal(size=(2_000_000, 3)))
    eps = 0.1
    z = costs.normal_base_samples(jax.random.key(1), 8192, 3)
    for j in range(3):
        ref = _log_mean_inverse_cost(c, j, eps)
        got = float(costs.log_expected_inverse_cost(jnp.asarray(mu), jnp.asarray(sigma), j, z, np.log(eps)))
        assert got == pytest.approx(ref, abs=5e-3), j
    # a memoized candidate is cheaper: E[1/C] grows with the memo depth
    vals = [float(costs.log_expected_inverse_cost(jnp.asarray(mu), jnp.asarray(sigma), j, z, np.log(eps))) for j in range(4)]
    assert vals[0] < vals[1] < vals[2] < vals[3]
    assert vals[3] == pytest.approx(-np.log(3 * eps), abs=1e-5)


def test_default_sample_count_estimates_ten_stage_inverse_cost_within_tolerance():
    # The default BOConfig.mc_samples against a 2^20-sample NumPy estimate (its own
    # error ~1e-3 in log), over 10 log-normal stages with random posteriors, memo
    # depths and per-call random shifts: the error bounds the config's docstring states.
    n = loop.BOConfig(stage_of_column=(0,), bins=(0,)).mc_samples
    rng = np.random.default_rng(7)
    errs = []
    for case in range(24):
        mu, sigma, j = rng.normal(0.0, 1.0, 10), rng.uniform(0.05, 1.5, 10), int(rng.integers(0, 10))
        ref = _log_mean_inverse_cost(np.exp(mu + sigma * rng.standard_normal((1 << 20, 10))), j, 1e-3)
        for shift in range(3):
            z = costs.normal_base_samples(jax.random.key(100 * case + shift), n, 10)
            got = float(costs.log_expected_inverse_cost(jnp.asarray(mu, jnp.float32), jnp.asarray(sigma, jnp.float32),
                                                        j, z, np.log(1e-3)))
            errs.append(abs(got - ref))
    errs = np.asarray(errs)
    assert np.median(errs) < 0.007 and np.percentile(errs, 95) < 0.04 and errs.max() < 0.06, (
        np.median(errs), np.percentile(errs, 95), errs.max())


def test_base_samples_are_standard_normal_and_key_dependent():
    z = np.asarray(costs.normal_base_samples(jax.random.key(2), 1024, 4))
    assert z.shape == (1024, 4)
    np.testing.assert_allclose(z.mean(0), 0, atol=0.01)
    np.testing.assert_allclose(z.std(0), 1, atol=0.02)
    assert np.abs(np.corrcoef(z.T) - np.eye(4)).max() < 0.05  # independent across stages
    z2 = np.asarray(costs.normal_base_samples(jax.random.key(3), 1024, 4))
    assert not np.allclose(z, z2)


def test_cooling_schedule():
    assert float(costs.cooling_eta(100.0, 20.0, 20.0)) == 1.0
    assert float(costs.cooling_eta(100.0, 60.0, 20.0)) == pytest.approx(0.5)
    assert float(costs.cooling_eta(100.0, 130.0, 20.0)) == 0.0


# ------------------------------------------- acquisitions against NumPy + Monte Carlo
SOC = (0, 0, 1, 1, 2)
EPS = 0.1


def _stage_costs(u):
    u = np.asarray(u, np.float64)
    return np.array([1.0 + 6.0 * u[0] * u[1], 0.5 + 2.0 * u[2] + u[0], 0.3 + 0.4 * u[4]])


def _observations():
    """12 trials: one failed (last stage never ran), one memoized (full costs told)."""
    rng = np.random.default_rng(3)
    X = rng.uniform(size=(12, 5))
    y = np.sin(4 * X[:, 0]) - (X[:, 2] - 0.4) ** 2 + 0.5 * X[:, 4]
    costs = np.stack([_stage_costs(u) for u in X])
    y[7], costs[7, 2] = np.nan, np.nan
    depth = np.zeros(12, int)
    depth[9] = 1
    return X, y, costs, depth


def _fitted(method, budget_fraction_left):
    """State with the observations, fitted by one ``acquisition_state`` call."""
    from eeipu_jax import loop

    cfg = loop.BOConfig(stage_of_column=SOC, bins=(0,) * 5, method=method, n_warmup=4, mc_samples=4096)
    X, y, costs, depth = _observations()
    state = loop.init(cfg, budget=1e3, params=loop.default_params(cfg, epsilon=EPS))
    for u, v, c, j in zip(X, y, costs, depth):
        state = loop.tell(state, u, v, c, int(j))
    # put the spend where linear cooling gives eta = budget_fraction_left
    spent = float(state.b0) + (1.0 - budget_fraction_left) * (1e3 - float(state.b0))
    state = loop.canonicalize(state._replace(spent=jnp.asarray(spent, jnp.float32)))
    acq_fn = jit(loop.acquisition_state, static_argnums=2)
    acq, fitted, _ = acq_fn(jax.random.key(0), state, cfg)
    obj_params = jax.tree.map(lambda a: a[0], fitted.gp_params)
    cost_params = jax.tree.map(lambda a: a[1:], fitted.gp_params)
    return cfg, state, acq, obj_params, cost_params


@pytest.fixture(scope="module")
def stagewise():
    return _fitted("eeipu", 0.6)


@pytest.fixture(scope="module")
def total():
    return _fitted("carbo", 0.6)


def _reference(method, cfg, state, obj_params, cost_params, x, depth, eta):
    from tests import reference as ref

    n = int(state.n)
    M = jax.tree.leaves(cost_params)[0].shape[0]
    return ref.acquisition(
        method, x, depth,
        X=np.asarray(state.X[:n]), y=np.asarray(state.y[:n], np.float64), failed=np.asarray(state.failed[:n]),
        stage_costs=np.asarray(state.stage_costs[:n]), soc=SOC, obj=ref.hyper(obj_params, cfg.gp),
        costs=[ref.hyper(jax.tree.map(lambda a: a[m], cost_params), cfg.gp) for m in range(M)],
        eta=eta, epsilon=EPS, cost_inputs=cfg.cost_inputs, jitter=cfg.gp.jitter,
    )


POINTS = [np.array([0.3, 0.7, 0.45, 0.2, 0.9]), np.array([0.85, 0.1, 0.6, 0.5, 0.05])]


@pytest.mark.parametrize("method", ["ei", "ms_carbo", "eeipu"])
def test_stagewise_acquisitions_match_numpy_gp_and_monte_carlo(stagewise, method):
    cfg, state, acqs, obj_params, cost_params = stagewise
    assert float(acqs.eta) == pytest.approx(0.6, abs=1e-5)
    fn = jit(methods.get_method(method).score)
    for x in POINTS:
        for depth in (0, 1, 2):
            got = float(fn(jnp.asarray(x, jnp.float32), depth, acqs, None))
            want = _reference(method, cfg, state, obj_params, cost_params, x, depth, 0.6)
            assert got == pytest.approx(want, abs=2e-3), (method, x, depth)
            if method != "ei":
                # discriminating: eta = 1 instead of 0.6 would be caught
                other = _reference(method, cfg, state, obj_params, cost_params, x, depth, 1.0)
                assert abs(other - want) > 5e-2
    if method == "eeipu":  # memoized stages are priced at epsilon: deeper is cheaper
        vals = [float(fn(jnp.asarray(POINTS[0], jnp.float32), j, acqs, None)) for j in range(3)]
        assert vals[0] < vals[1] < vals[2]


@pytest.mark.parametrize("method", ["eips", "carbo"])
def test_total_cost_acquisitions_match_the_lognormal_closed_form(total, method):
    cfg, state, acqs, obj_params, cost_params = total
    fn = jit(methods.get_method(method).score)
    for x in POINTS:
        got = float(fn(jnp.asarray(x, jnp.float32), 0, acqs, None))
        want = _reference(method, cfg, state, obj_params, cost_params, x, 0, 0.6)
        assert got == pytest.approx(want, abs=2e-3), (method, x)
        # the memo depth means nothing to a non-memoizing method
        assert float(fn(jnp.asarray(x, jnp.float32), 2, acqs, None)) == pytest.approx(got, abs=1e-6)
    # the one cost GP was fitted on ln(total cost) of the trials whose stages all ran
    from tests import reference as ref

    n = int(state.n)
    total_cost = np.asarray(state.stage_costs[:n], np.float64).sum(1)
    ok = np.isfinite(total_cost)
    assert ok.sum() == n - 1  # the failed trial's last stage never ran
    t, mu, sd = ref.standardize(np.log(total_cost[ok]))
    np.testing.assert_allclose(np.asarray(acqs.costs.y[0] + acqs.costs.mean[0])[:n][ok], t, atol=1e-5)
    np.testing.assert_allclose([float(acqs.cost_mean[0]), float(acqs.cost_std[0])], [mu, sd], rtol=1e-5)
    # EIPS has no cooling: its cost term is not scaled by eta
    x = POINTS[0]
    eips = _reference("eips", cfg, state, obj_params, cost_params, x, 0, 0.6)
    carbo = _reference("carbo", cfg, state, obj_params, cost_params, x, 0, 0.6)
    assert abs(eips - carbo) > 5e-2


def test_registry():
    from eeipu_jax.methods import ei_family

    assert {"ei", "eips", "carbo", "ms_carbo", "eeipu", "pbgi", "lambo", "ms_bo"} <= set(methods.registered())
    assert methods.get_method("EEIPU").memoize and not methods.get_method("ei").memoize
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        methods.get_method("nope")
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.Method("ei", ei_family.eips))  # another definition under a taken name
    with pytest.raises(ValueError, match="cost_model"):
        methods.Method("x", ei_family.ei, cost_model="sum")
    with pytest.raises(ValueError, match="reserved"):
        methods.register(methods.Method("mine_nomemo", ei_family.ei))
    with pytest.raises(ValueError, match="score"):
        methods.Method("x")
    with pytest.raises(ValueError, match="finite"):
        methods.Method("x", ei_family.ei, params={"beta": float("nan")})


# ------------------------------------------------------------ Gittins index
def gittins_scipy(mean, sd, cost):
    """The g with E[max(f - g, 0)] = cost for f ~ N(mean, sd^2), by SciPy root finding."""
    from scipy.optimize import brentq

    f = lambda g: float(ei_scipy(mean, sd, g)) - cost  # noqa: E731
    lo, hi = mean - 10 * sd - cost, mean + 40 * sd  # f(lo) > 0 > f(hi)
    return brentq(f, lo, hi, xtol=1e-12, rtol=1e-12)


def test_gittins_index_solves_ei_equal_cost_as_scipy_root_finding():
    rng = np.random.default_rng(5)
    mean, sd = rng.normal(size=60), rng.uniform(0.05, 2.0, 60)
    cost = np.exp(rng.uniform(np.log(1e-6), np.log(3.0), 60))
    got = np.asarray(jax.vmap(acq.gittins_index)(mean, sd**2, np.log(cost)))
    want = np.array([gittins_scipy(m, s, c) for m, s, c in zip(mean, sd, cost)])
    err = np.abs(got - want) / sd
    assert err.max() < 2e-4, (err.max(), np.argmax(err))


def test_gittins_index_decreases_with_cost_and_has_the_implicit_gradient():
    mean, var = 0.3, 0.5**2
    log_c = jnp.linspace(np.log(1e-8), np.log(5.0), 200)
    g = np.asarray(jax.vmap(lambda lc: acq.gittins_index(mean, var, lc))(log_c))
    assert np.all(np.isfinite(g)) and np.all(np.diff(g) < 0)
    # dg / d ln c = -c / Phi((mean - g) / sd), from differentiating EI(g) = c (SciPy values)
    for lc in (np.log(1e-4), np.log(0.05), np.log(0.7)):
        gs = gittins_scipy(mean, 0.5, np.exp(lc))
        want = -np.exp(lc) / stats.norm.cdf((mean - gs) / 0.5)
        got = float(jax.grad(lambda t: acq.gittins_index(mean, var, t))(jnp.float32(lc)))
        assert got == pytest.approx(want, rel=2e-3)
    # and it increases with the mean, one for one
    assert float(jax.grad(lambda m: acq.gittins_index(m, var, -2.0))(0.1)) == pytest.approx(1.0, abs=1e-4)


def test_log_expected_cost_is_the_lognormal_closed_form():
    mu, sigma = jnp.asarray([0.2, -1.0, 1.5]), jnp.asarray([0.3, 0.8, 0.1])
    eps = 0.1
    for j in range(4):
        want = np.log(j * eps + sum(np.exp(mu[k] + sigma[k] ** 2 / 2) for k in range(j, 3)))
        got = float(costs.log_expected_cost(mu, sigma, j, np.log(eps)))
        assert got == pytest.approx(float(want), rel=1e-5)
    # Monte Carlo check of the log-normal mean for one stage
    z = np.random.default_rng(0).normal(size=400_000)
    mc = np.mean(np.exp(0.2 + 0.3 * z) + np.exp(-1.0 + 0.8 * z))
    assert float(costs.log_expected_cost(mu[:2], sigma[:2], 0, 0.0)) == pytest.approx(np.log(mc), abs=3e-3)


def test_pbgi_is_registered_as_a_memoizing_method_with_state_and_params():
    m = methods.get_method("pbgi")
    assert m.memoize and m.cost_model == "stages" and m.init is not None and m.prepare is not None
    assert m.params == {"lambda0": 0.1, "decay": 2.0}
    assert methods.get_method("eeipu").init is None

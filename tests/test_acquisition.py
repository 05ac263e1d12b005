"""EI, log-EI, Monte Carlo expected inverse cost, cooling and the method registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from eeipu_jax import acquisition as acq
from eeipu_jax import costs


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


@pytest.mark.parametrize("mu, sigma, eta", [(0.5, 0.3, 1.0), (-1.0, 0.8, 0.5), (2.0, 1.2, 0.25)])
def test_mc_inverse_cost_one_stage_matches_lognormal_moment(mu, sigma, eta):
    # C ~ LogNormal(mu, sigma): E[C^-eta] = exp(-eta mu + eta^2 sigma^2 / 2); C^eta is
    # LogNormal(eta mu, eta sigma), so its expected inverse is exactly that.
    z = costs.normal_base_samples(jax.random.key(0), 4096, 1)
    got = float(costs.log_expected_inverse_cost(jnp.asarray([eta * mu]), jnp.asarray([eta * sigma]), 0, z, np.log(0.1)))
    assert got == pytest.approx(-eta * mu + 0.5 * (eta * sigma) ** 2, abs=5e-3)


def test_mc_inverse_cost_several_stages_against_brute_force():
    mu, sigma = np.array([1.0, 0.2, -0.5]), np.array([0.5, 0.3, 0.9])
    rng = np.random.default_rng(0)
    c = np.exp(mu + sigma * rng.normal(size=(2_000_000, 3)))
    eps = 0.1
    z = costs.normal_base_samples(jax.random.key(1), 8192, 3)
    for j in range(3):
        total = np.where(np.arange(3) < j, eps, c).sum(1)
        ref = np.log(np.mean(1.0 / total))
        got = float(costs.log_expected_inverse_cost(jnp.asarray(mu), jnp.asarray(sigma), j, z, np.log(eps)))
        assert got == pytest.approx(ref, abs=5e-3), j
    # a memoized candidate is cheaper: E[1/C] grows with the memo depth
    vals = [float(costs.log_expected_inverse_cost(jnp.asarray(mu), jnp.asarray(sigma), j, z, np.log(eps))) for j in range(4)]
    assert vals[0] < vals[1] < vals[2] < vals[3]
    assert vals[3] == pytest.approx(-np.log(3 * eps), abs=1e-5)


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


def _toy_acq_state(eta):
    """An AcqState with hand-made posteriors (1-point GPs) for unit checks."""
    from eeipu_jax import gp

    cfg = gp.GPConfig()
    X = jnp.asarray([[0.2, 0.8]], jnp.float32)
    p = gp.default_params(2, cfg)
    obj = gp.posterior(p, X, jnp.asarray([1.0]), jnp.asarray([True]), cfg)
    cp = jax.tree.map(lambda a: jnp.stack([a, a]), p)
    posts = gp.posterior_stacked(cp, X, jnp.asarray([[1.0, 2.0]]), jnp.ones((1, 2), bool),
                                 jnp.asarray([[1.0, 0.0], [1.0, 1.0]]), jnp.asarray([0.0, 0.0]),
                                 jnp.asarray([1.0, 1.0]), cfg)
    return acq.AcqState(obj=obj, best=jnp.asarray(1.0), costs=posts, cost_mean=jnp.zeros(2),
                        cost_std=jnp.ones(2), z=costs.normal_base_samples(jax.random.key(0), 512, 2),
                        log_epsilon=jnp.log(0.1), eta=jnp.asarray(eta), extra=jnp.asarray(0.2))


def test_eeipu_equals_ei_when_eta_is_zero_and_prefers_memoized():
    s0 = _toy_acq_state(0.0)
    s1 = _toy_acq_state(1.0)
    x = jnp.asarray([0.6, 0.3])
    ei = float(acq.ei(x, 0, s0))
    assert float(acq.eeipu(x, 0, s0)) == pytest.approx(ei, abs=1e-6)
    assert float(acq.eeipu(x, 1, s0)) == pytest.approx(ei, abs=1e-6)
    assert float(acq.eeipu(x, 1, s1)) > float(acq.eeipu(x, 0, s1))
    # non-memoizing cost-aware methods ignore the memo depth
    assert float(acq.ms_carbo(x, 1, s1)) == pytest.approx(float(acq.ms_carbo(x, 0, s1)))
    assert float(acq.ms_carbo(x, 0, s1)) == pytest.approx(float(acq.eeipu(x, 0, s1)))


def test_registry():
    assert {"ei", "eips", "carbo", "ms_carbo", "eeipu"} <= set(acq.METHODS)
    assert acq.get_method("EEIPU").memoize and not acq.get_method("ei").memoize
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        acq.get_method("nope")
    with pytest.raises(ValueError, match="already registered"):
        acq.register(acq.Method("ei", acq.ei))
    with pytest.raises(ValueError, match="cost_model"):
        acq.Method("x", acq.ei, cost_model="sum")

"""GP surrogate: posterior and likelihood against NumPy, padding invariance, fitting."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import gp

CFG = gp.GPConfig()

# Jitted entry points (eager op-by-op execution of the GP code is slow).
fit = jax.jit(gp.fit, static_argnums=(5,))
loss_fn = jax.jit(gp.loss_fn, static_argnums=(4,))
grad_loss = jax.jit(jax.grad(gp.loss_fn), static_argnums=(4,))
lml_fn = jax.jit(gp.log_marginal_likelihood, static_argnums=(4,))
fit_stacked = jax.jit(gp.fit_stacked, static_argnums=(6,))


@jax.jit
def predict_many(post, xs):
    return jax.vmap(lambda x: gp.predict(post, x))(xs)


def posterior(p, X, y, m, cfg, im=None):
    return jax.jit(gp.posterior, static_argnums=(4,))(p, X, y, m, cfg, im)


def matern52_np(A, B, ls, amp):
    d = np.sqrt(np.maximum(((A[:, None, :] / ls - B[None, :, :] / ls) ** 2).sum(-1), 0))
    a = np.sqrt(5.0) * d
    return amp * (1 + a + a * a / 3) * np.exp(-a)


def reference_posterior(X, y, Xs, ls, amp, noise, mean):
    """Textbook GP regression with a Cholesky factor, in float64."""
    K = matern52_np(X, X, ls, amp) + (noise + CFG.jitter) * np.eye(len(X))
    L = np.linalg.cholesky(K)
    alpha = np.linalg.solve(L.T, np.linalg.solve(L, y - mean))
    Ks = matern52_np(X, Xs, ls, amp)
    mu = mean + Ks.T @ alpha
    v = np.linalg.solve(L, Ks)
    var = amp - (v * v).sum(0)
    lml = -0.5 * (y - mean) @ alpha - np.log(np.diag(L)).sum() - 0.5 * len(X) * np.log(2 * np.pi)
    return mu, var, lml


def some_params(d, seed=0):
    rng = np.random.default_rng(seed)
    ls = rng.uniform(0.2, 0.8, size=d)
    p = gp.GPParams(
        raw_lengthscale=gp._to_raw(jnp.asarray(ls, jnp.float32), CFG.lengthscale_bounds),
        raw_amplitude=gp._to_raw(jnp.asarray(1.7, jnp.float32), CFG.amplitude_bounds),
        raw_noise=gp._to_raw(jnp.asarray(0.05, jnp.float32), CFG.noise_bounds),
        mean=jnp.asarray(0.3, jnp.float32),
    )
    return p


def data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(n, d))
    y = np.sin(5 * X[:, 0]) + X[:, 1] ** 2 - 0.5
    return X, y


def test_posterior_and_lml_match_numpy_cholesky():
    X, y = data(30, 3)
    Xs = np.random.default_rng(5).uniform(size=(7, 3))
    p = some_params(3)
    ls, amp, noise = (np.asarray(v, np.float64) for v in gp.constrain(p, CFG))
    mu_ref, var_ref, lml_ref = reference_posterior(X, y, Xs, ls, amp, noise, 0.3)

    mask = np.ones(30, bool)
    post = posterior(p, jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32), mask, CFG)
    mu, var = predict_many(post, jnp.asarray(Xs, jnp.float32))
    np.testing.assert_allclose(mu, mu_ref, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(var, var_ref, rtol=5e-3, atol=2e-3)
    lml = lml_fn(p, jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32), mask, CFG)
    np.testing.assert_allclose(float(lml), lml_ref, rtol=1e-4, atol=1e-2)


def test_padding_does_not_change_posterior_or_likelihood():
    X, y = data(20, 2, seed=3)
    p = some_params(2, seed=1)
    Xs = jnp.asarray(np.random.default_rng(9).uniform(size=(5, 2)), jnp.float32)
    # 20 valid rows placed among 44 rows of garbage padding
    N = 64
    rng = np.random.default_rng(11)
    Xp = rng.uniform(size=(N, 2)) * 10
    yp = rng.normal(size=N) * 100
    Xp[:20], yp[:20] = X, y
    mask = np.arange(N) < 20
    args = lambda X_, y_, m_: (jnp.asarray(X_, jnp.float32), jnp.asarray(y_, jnp.float32), jnp.asarray(m_))
    post_a = posterior(p, *args(X, y, np.ones(20, bool)), CFG)
    post_b = posterior(p, *args(Xp, yp, mask), CFG)
    pa = predict_many(post_a, Xs)
    pb = predict_many(post_b, Xs)
    np.testing.assert_allclose(pa[0], pb[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pa[1], pb[1], rtol=1e-4, atol=1e-6)
    la = lml_fn(p, *args(X, y, np.ones(20, bool)), CFG)
    lb = lml_fn(p, *args(Xp, yp, mask), CFG)
    np.testing.assert_allclose(float(la), float(lb), rtol=1e-5, atol=1e-4)
    # and so is the fitting loss and its gradient
    ga = grad_loss(p, *args(X, y, np.ones(20, bool)), CFG)
    gb = grad_loss(p, *args(Xp, yp, mask), CFG)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_input_mask_ignores_columns():
    X, y = data(15, 3, seed=2)
    p = some_params(3)
    m = np.ones(15, bool)
    im = jnp.asarray([1.0, 1.0, 0.0])
    post = posterior(p, jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32), m, CFG, im)
    x = jnp.asarray([0.3, 0.6, 0.0], jnp.float32)
    x2 = x.at[2].set(0.9)
    np.testing.assert_allclose(predict_many(post, x[None]), predict_many(post, x2[None]), rtol=1e-6)
    # equals a GP built on the first two columns only
    p2 = p._replace(raw_lengthscale=p.raw_lengthscale[:2])
    post2 = posterior(p2, jnp.asarray(X[:, :2], jnp.float32), jnp.asarray(y, jnp.float32), m, CFG)
    np.testing.assert_allclose(predict_many(post, x[None]), predict_many(post2, x[None, :2]), rtol=1e-5)


def test_standardize_masked_and_constant():
    y = jnp.asarray([1.0, 2.0, 3.0, 99.0])
    m = jnp.asarray([True, True, True, False])
    ys, mu, sd = gp.standardize(y, m)
    np.testing.assert_allclose(mu, 2.0)
    np.testing.assert_allclose(sd, np.std([1, 2, 3], ddof=1), rtol=1e-6)
    assert float(ys[3]) == 0.0
    ys, mu, sd = gp.standardize(jnp.full(4, 5.0), m)
    assert float(sd) == 1.0 and np.all(np.isfinite(ys))


def test_fit_recovers_known_lengthscale():
    """Data drawn from a GP with lengthscale 0.25 (1-D): the MAP fit with flat
    priors lands within a factor 1.6 of it."""
    rng = np.random.default_rng(0)
    n, true_ls = 120, 0.25
    X = np.sort(rng.uniform(size=(n, 1)), axis=0)
    K = matern52_np(X, X, np.array([true_ls]), 1.0) + 1e-4 * np.eye(n)
    f = np.linalg.cholesky(K) @ rng.normal(size=n)
    y = f + 0.01 * rng.normal(size=n)
    cfg = dataclasses.replace(CFG, lengthscale_prior=None, amplitude_prior=None, noise_prior=None,
                              restarts=3, cold_steps=300)
    ys, _, _ = gp.standardize(jnp.asarray(y, jnp.float32), jnp.ones(n, bool))
    p, loss = fit(jax.random.key(0), gp.default_params(1, cfg), jnp.asarray(X, jnp.float32), ys,
                     jnp.ones(n, bool), cfg, None, True)
    ls, amp, noise = gp.constrain(p, cfg)
    assert np.isfinite(float(loss))
    assert true_ls / 1.6 < float(ls[0]) < true_ls * 1.6
    assert float(noise) < 0.05


def test_fit_never_worse_than_init_and_robust_to_degenerate_data():
    # duplicates, a constant target and tiny noise: everything stays finite
    X = np.repeat(np.random.default_rng(0).uniform(size=(4, 2)), 5, axis=0)
    for y in (np.zeros(20), np.repeat(np.arange(4.0), 5) * 1e-6, np.repeat(np.arange(4.0), 5)):
        ys, _, _ = gp.standardize(jnp.asarray(y, jnp.float32), jnp.ones(20, bool))
        p0 = gp.default_params(2, CFG)
        for cold in (True, False):
            p, loss = fit(jax.random.key(1), p0, jnp.asarray(X, jnp.float32), ys, jnp.ones(20, bool),
                             CFG, None, cold)
            assert np.isfinite(float(loss))
            assert float(loss) <= float(loss_fn(p0, jnp.asarray(X, jnp.float32), ys, jnp.ones(20, bool), CFG)) + 1e-6
            post = posterior(p, jnp.asarray(X, jnp.float32), ys, jnp.ones(20, bool), CFG)
            m, v = (a[0] for a in predict_many(post, jnp.asarray([[0.5, 0.5]], jnp.float32)))
            assert np.isfinite(float(m)) and np.isfinite(float(v)) and float(v) > 0


def test_fit_stacked_matches_individual_fits():
    X, y = data(25, 2, seed=4)
    X = jnp.asarray(X, jnp.float32)
    T = jnp.stack([jnp.asarray(y, jnp.float32), jnp.asarray(np.cos(3 * np.asarray(X[:, 1])), jnp.float32)], 1)
    M = jnp.ones((25, 2), bool).at[20:, 1].set(False)
    IM = jnp.asarray([[1.0, 1.0], [0.0, 1.0]])
    init = jax.tree.map(lambda a: jnp.stack([a, a]), gp.default_params(2, CFG))
    params, mean, std = fit_stacked(jax.random.key(0), init, X, T, M, IM, CFG, True)
    keys = jax.random.split(jax.random.key(0), 2)
    for i in range(2):
        ys, mu, sd = gp.standardize(T[:, i], M[:, i])
        p, _ = fit(keys[i], gp.default_params(2, CFG), X, ys, M[:, i], CFG, IM[i], True)
        np.testing.assert_allclose(mean[i], mu, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda a: a[i], params)), jax.tree.leaves(p)):
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)


def _adam_reference(grad_and_loss, p0, n, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Plain NumPy Adam that stops moving at the first non-finite loss or gradient;
    returns the best finite iterate, its loss and the final point."""
    p, m, v = float(p0), 0.0, 0.0
    best_p, best_l, t = p, np.inf, 0
    for _ in range(n):
        loss, g = grad_and_loss(p)
        if not (np.isfinite(loss) and np.isfinite(g)):
            continue  # skipped: p, m, v and the step count stay
        if loss < best_l:
            best_p, best_l = p, loss
        t += 1
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    loss, _ = grad_and_loss(p)
    if np.isfinite(loss) and loss < best_l:
        best_p, best_l = p, loss
    return best_p, best_l, p


def test_a_non_finite_step_leaves_parameters_and_adam_state_unchanged():
    """Loss (w - 5)^2 for w < 1, NaN beyond: Adam from 0 walks into the NaN region
    within a few steps. The step there is skipped, and so is every later one (the
    point does not move); zeroing the gradient instead would let Adam's momentum
    keep moving w."""
    import optax

    def np_loss(w):
        return ((w - 5.0) ** 2, 2.0 * (w - 5.0)) if w < 1.0 else (np.nan, np.nan)

    def vg(p):
        w = p["w"]
        ok = w < 1.0
        return jnp.where(ok, (w - 5.0) ** 2, jnp.nan), {"w": jnp.where(ok, 2.0 * (w - 5.0), jnp.nan)}

    opt = optax.adam(0.3)
    run = jax.jit(lambda n: gp._descend(vg, {"w": jnp.float32(0.0)}, n, opt))
    b10, l10, p10, s10 = run(10)
    b30, l30, p30, s30 = run(30)
    ref_best, ref_loss, ref_final = _adam_reference(np_loss, 0.0, 30, 0.3)
    assert float(p30["w"]) >= 1.0  # it did reach the bad region
    assert float(p30["w"]) == pytest.approx(ref_final, rel=1e-5)
    assert float(b30["w"]) == pytest.approx(ref_best, rel=1e-5) and float(b30["w"]) < 1.0
    assert float(l30) == pytest.approx(ref_loss, rel=1e-5)
    # nothing changes once there: parameters, best iterate and Adam's state
    for a, b in zip(jax.tree.leaves((b10, l10, p10, s10)), jax.tree.leaves((b30, l30, p30, s30))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fit_returns_its_best_finite_iterate_when_it_meets_a_non_finite_region(monkeypatch):
    """A loss made NaN wherever the noise variance drops below 4e-3: a warm fit from
    noise 1e-2 on noiseless data heads there. The fit returns the last finite
    iterate (better than its start) and more steps change nothing."""
    X, y = data(30, 2, seed=7)
    X, mask = jnp.asarray(X, jnp.float32), jnp.ones(30, bool)
    ys, _, _ = gp.standardize(jnp.asarray(y, jnp.float32), mask)
    real = gp.loss_fn

    def poisoned(params, X, y, mask, cfg, input_mask=None):
        _, _, noise = gp.constrain(params, cfg)
        return jnp.where(noise > 4e-3, real(params, X, y, mask, cfg, input_mask), jnp.nan)

    monkeypatch.setattr(gp, "loss_fn", poisoned)
    init = gp.default_params(2, CFG)
    out = {}
    for steps in (60, 120):
        cfg = dataclasses.replace(CFG, steps=steps, cold_steps=7)  # a config no other test traces
        p, loss = jax.jit(gp.fit, static_argnums=(5,))(jax.random.key(0), init, X, ys, mask, cfg, None, False)
        out[steps] = (p, float(loss))
    start = float(poisoned(init, X, ys, mask, CFG))
    p, loss = out[60]
    assert np.isfinite(loss) and loss < start - 0.05
    assert float(gp.constrain(p, CFG)[2]) > 4e-3
    np.testing.assert_array_equal(np.asarray(p.raw_noise), np.asarray(out[120][0].raw_noise))
    assert loss == out[120][1]

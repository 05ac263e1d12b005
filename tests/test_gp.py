"""GP surrogate: posterior and likelihood against NumPy, padding invariance, fitting."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import gp
from eeipu_jax.cpu import jit  # the library's compile options (eeipu_jax.cpu)

CFG = gp.GPConfig()

# Jitted entry points (eager op-by-op execution of the GP code is slow).
fit = jit(gp.fit, static_argnums=(5,))
loss_fn = jit(gp.loss_fn, static_argnums=(4,))
grad_loss = jit(jax.grad(gp.loss_fn), static_argnums=(4,))
lml_fn = jit(gp.log_marginal_likelihood, static_argnums=(4,))
fit_stacked = jit(gp.fit_stacked, static_argnums=(6,))


@jax.jit
def predict_many(post, xs):
    return jax.vmap(lambda x: gp.predict(post, x))(xs)


def posterior(p, X, y, m, cfg, im=None):
    return jit(gp.posterior, static_argnums=(4,))(p, X, y, m, cfg, im)


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
    run = jit(lambda n: gp._descend(vg, {"w": jnp.float32(0.0)}, n, opt))
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
    real = gp._loss  # what gp.fit evaluates (value, or value and hand-written gradient)

    def poisoned(params, X, y, mask, cfg, input_mask, with_grad):
        _, _, noise = gp.constrain(params, cfg)
        bad = lambda a: jnp.where(noise > 4e-3, a, jnp.nan)  # noqa: E731
        return jax.tree.map(bad, real(params, X, y, mask, cfg, input_mask, with_grad))

    monkeypatch.setattr(gp, "_loss", poisoned)
    init = gp.default_params(2, CFG)
    out = {}
    for steps in (60, 120):
        cfg = dataclasses.replace(CFG, steps=steps, cold_steps=7)  # a config no other test traces
        p, loss = jit(gp.fit, static_argnums=(5,))(jax.random.key(0), init, X, ys, mask, cfg, None, False)
        out[steps] = (p, float(loss))
    start = float(poisoned(init, X, ys, mask, CFG, None, False))
    p, loss = out[60]
    assert np.isfinite(loss) and loss < start - 0.05
    assert float(gp.constrain(p, CFG)[2]) > 4e-3
    np.testing.assert_array_equal(np.asarray(p.raw_noise), np.asarray(out[120][0].raw_noise))
    assert loss == out[120][1]


# --------------------------------------------------------- kept factors
def _masked_cov_np(X, used, ls, amp, noise, im):
    """Float64 covariance of the used rows (NumPy), as the GP defines it."""
    keep = np.asarray(im) > 0
    Xu = np.asarray(X, np.float64)[used][:, keep]
    return matern52_np(Xu, Xu, ls[keep], amp) + (noise + CFG.jitter) * np.eye(len(Xu))


def test_appended_rows_give_the_factor_and_posterior_of_a_fresh_factorization():
    """A factor of the first 12 rows extended row by row to 40 (three rows masked
    out, as a cost GP without those costs, and a column ignored) equals the float64
    NumPy Cholesky factor of the used rows, and its posterior the textbook one."""
    d, N, n = 3, 48, 40
    X, y = data(n, d, seed=5)
    rng = np.random.default_rng(6)
    Xp, yp = rng.uniform(size=(N, d)) * 3, rng.normal(size=N) * 50  # garbage padding
    Xp[:n], yp[:n] = X, y
    used = np.arange(N) < n
    used[[7, 19, 33]] = False
    im = jnp.asarray([1.0, 1.0, 0.0])
    p = some_params(d, seed=2)
    Xj, yj = jnp.asarray(Xp, jnp.float32), jnp.asarray(yp, jnp.float32)
    first = jnp.asarray(used & (np.arange(N) < 12))
    L0 = jit(gp.factor, static_argnums=3)(p, Xj, first, CFG, im)
    append = jit(gp.append_rows, static_argnums=4)
    L = append(L0, p, Xj, jnp.asarray(used), CFG, im, 12, 30)
    L = append(L, p, Xj, jnp.asarray(used), CFG, im, 30, n)  # in two calls, as asks do

    ls, amp, noise = (np.asarray(v, np.float64) for v in gp.constrain(p, CFG))
    L_ref = np.linalg.cholesky(_masked_cov_np(Xp, used, ls, amp, noise, im))
    L = np.asarray(L)
    np.testing.assert_allclose(L[np.ix_(used, used)], L_ref, rtol=1e-4, atol=2e-5)
    unused = ~used
    np.testing.assert_array_equal(L[unused], np.eye(N)[unused])  # identity rows
    np.testing.assert_array_equal(L[:, unused], np.eye(N)[:, unused])

    Xs = np.random.default_rng(9).uniform(size=(6, d))
    post = jit(gp.condition, static_argnums=5)(p, jnp.asarray(L), Xj, yj, jnp.asarray(used), CFG, im)
    mu, var = predict_many(post, jnp.asarray(Xs, jnp.float32))
    keep = np.asarray(im) > 0
    mu_ref, var_ref = (
        v for v in reference_posterior(Xp[used][:, keep], yp[used], Xs[:, keep], ls[keep], amp, noise, 0.3)[:2])
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(var, var_ref, rtol=5e-3, atol=1e-4)


def test_hand_written_gradient_matches_autodiff_and_finite_differences():
    """``loss_and_grad`` against ``jax.grad`` of the tinygp loss (float32) and
    against central differences of a float64 NumPy loss (padded and masked data,
    an ignored column, priors on)."""
    d, N, n = 3, 40, 33
    X, y = data(n, d, seed=8)
    Xp = np.zeros((N, d)); Xp[:n] = X
    yp = np.zeros(N); yp[:n] = y
    mask = np.arange(N) < n
    mask[5] = False
    im = np.array([1.0, 0.0, 1.0])
    p = some_params(d, seed=4)
    args = (jnp.asarray(Xp, jnp.float32), jnp.asarray(yp, jnp.float32), jnp.asarray(mask))
    loss, g = jit(gp.loss_and_grad, static_argnums=4)(p, *args, CFG, jnp.asarray(im))
    g_ad = jit(jax.grad(gp.loss_fn), static_argnums=4)(p, *args, CFG, jnp.asarray(im))
    assert float(loss) == pytest.approx(float(loss_fn(p, *args, CFG, jnp.asarray(im))), rel=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ad)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)

    from scipy import stats

    def np_loss(raw):
        """Float64 negative log posterior per point from the raw (unconstrained) vector."""
        def unraw(r, bounds):
            lo, hi = np.log(bounds[0]), np.log(bounds[1])
            return np.exp(lo + (hi - lo) / (1.0 + np.exp(-r)))
        ls = unraw(raw[:d], CFG.lengthscale_bounds)
        amp = unraw(raw[d], CFG.amplitude_bounds)
        noise = unraw(raw[d + 1], CFG.noise_bounds)
        mean = raw[d + 2]
        K = _masked_cov_np(Xp, mask, ls, amp, noise, im)
        r = yp[mask] - mean
        Lc = np.linalg.cholesky(K)
        a = np.linalg.solve(Lc, r)
        nll = 0.5 * a @ a + np.log(np.diag(Lc)).sum() + 0.5 * len(r) * np.log(2 * np.pi)
        prior = lambda v, ab: stats.gamma.logpdf(v, ab[0], scale=1.0 / ab[1])  # noqa: E731
        lp = (im * prior(ls, CFG.lengthscale_prior)).sum() + prior(amp, CFG.amplitude_prior) \
            + prior(noise, CFG.noise_prior)
        return (nll - lp) / len(r)

    raw = np.concatenate([np.asarray(p.raw_lengthscale, np.float64),
                          [float(p.raw_amplitude), float(p.raw_noise), float(p.mean)]])
    h = 1e-5
    fd = np.array([(np_loss(raw + h * e) - np_loss(raw - h * e)) / (2 * h) for e in np.eye(len(raw))])
    got = np.concatenate([np.asarray(g.raw_lengthscale), [float(g.raw_amplitude), float(g.raw_noise), float(g.mean)]])
    assert float(loss) == pytest.approx(np_loss(raw), rel=1e-4)
    np.testing.assert_allclose(got, fd, rtol=2e-3, atol=2e-5)
    assert got[1] == 0.0  # the ignored column's lengthscale has no gradient (no prior on it either)


def test_fit_rows_keep_the_best_quarter_and_sample_the_rest():
    """The top ``size // 4`` rows by priority are always chosen, the rest are
    distinct valid rows, and with few valid rows all of them come first."""
    N = 64
    valid = jnp.arange(N) < 50
    prio = jnp.asarray(np.random.default_rng(0).normal(size=N), jnp.float32)
    idx = np.asarray(jit(gp.fit_rows, static_argnums=3)(jax.random.key(0), valid, prio, 16))
    assert len(set(idx.tolist())) == 16 and np.all(idx < 50)
    top4 = np.argsort(-np.where(np.arange(N) < 50, np.asarray(prio), -np.inf))[:4]
    assert set(top4.tolist()) <= set(idx.tolist())
    other = np.asarray(jit(gp.fit_rows, static_argnums=3)(jax.random.key(1), valid, prio, 16))
    assert set(other.tolist()) != set(idx.tolist())  # the sample changes with the key
    few = np.asarray(jit(gp.fit_rows, static_argnums=3)(jax.random.key(0), jnp.arange(N) < 10, prio, 16))
    assert set(few[:10].tolist()) == set(range(10))


def _np_posterior_mean_var(X, y, x, ls, amp, noise, mean, cols):
    """Float64 posterior mean and variance at one point of a GP that sees ``cols`` only."""
    mu, var, _ = reference_posterior(X[:, cols], y, x[None, cols], ls[cols], amp, noise, mean)
    return mu[0], var[0]


@pytest.mark.parametrize("cols", [[0, 1], [0, 1, 2, 3]])
def test_predict_gradient_is_finite_and_exact_at_a_training_input(cols):
    # A memoized candidate copies its source trial's prefix, so a prefix
    # cost GP is queried exactly at a training input; candidate refinement
    # differentiates predict there. Reference: central differences of the
    # float64 textbook posterior.
    d, n = 4, 12
    X, y = data(n, d, seed=5)
    p = some_params(d, seed=5)
    ls, amp, noise = (np.asarray(v, np.float64) for v in gp.constrain(p, CFG))
    im = np.zeros(d, np.float32)
    im[cols] = 1.0
    post = posterior(p, jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32), np.ones(n, bool), CFG,
                     jnp.asarray(im))
    x = X[3].copy()  # the GP's columns equal training row 3's
    if len(cols) < d:
        x[len(cols):] = [0.15, 0.85]  # the free columns differ from the source row
    jac = jit(jax.jacobian(lambda z: jnp.stack(gp.predict(post, z))))(jnp.asarray(x, jnp.float32))
    jac = np.asarray(jac)
    assert np.all(np.isfinite(jac))
    h = 1e-5
    ref = np.zeros((2, d))
    for c in cols:
        e = np.zeros(d)
        e[c] = h
        hi = _np_posterior_mean_var(X, y, x + e, ls, amp, noise, float(p.mean), cols)
        lo = _np_posterior_mean_var(X, y, x - e, ls, amp, noise, float(p.mean), cols)
        ref[:, c] = (np.asarray(hi) - np.asarray(lo)) / (2 * h)
    np.testing.assert_allclose(jac, ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("prior", [gp.GPConfig().lengthscale_prior, gp.GPConfig().amplitude_prior,
                                   gp.GPConfig().noise_prior, (0.5, 2.0)])
def test_gamma_prior_is_numpyros_gamma_term_for_term_and_scipys_density(prior):
    """The Gamma log prior is written out (importing numpyro.distributions cost the
    first BO step 0.4-0.5 s): the same program as numpyro's ``Gamma.log_prob``
    (so fits round as before), and SciPy's density; -inf outside the support."""
    from scipy import stats
    import numpyro.distributions as nd

    x = jnp.asarray(np.random.default_rng(3).uniform(1e-3, 8.0, 257), jnp.float32)
    ours = lambda v: gp._gamma_logpdf(v, prior)  # noqa: E731
    theirs = lambda v: nd.Gamma(*prior).log_prob(v)  # noqa: E731
    assert str(jax.make_jaxpr(ours)(x)) == str(jax.make_jaxpr(theirs)(x))
    want = stats.gamma.logpdf(np.asarray(x, np.float64), prior[0], scale=1.0 / prior[1])
    np.testing.assert_allclose(np.asarray(jit(ours)(x), np.float64), want, rtol=2e-5, atol=2e-5)
    assert np.all(np.asarray(ours(jnp.asarray([0.0, -1.0]))) == -np.inf)


def test_fitting_a_gp_imports_no_numpyro():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, jax, jax.numpy as jnp; from eeipu_jax import gp; "
            "X = jax.random.uniform(jax.random.key(0), (16, 2)); y = jnp.sin(X.sum(1)); "
            "cfg = gp.GPConfig(); p0 = gp.default_params(2, cfg); "
            "gp.fit(jax.random.key(1), p0, X, y, jnp.ones(16, bool), cfg, cold=True); "
            "print('numpyro' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"

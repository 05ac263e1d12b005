"""Independent float64 NumPy/SciPy references for the surrogates and acquisitions.

Nothing here calls the library's GP, standardization or acquisition code: the
Matern-5/2 ARD posterior is written out with a Cholesky factor, EI in closed
form, the expected inverse cost of one log-normal cost in closed form and of
several stages by plain Monte Carlo. Tests feed it the hyperparameters the
library fitted (read with ``gp.constrain``) and compare values.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def matern52(A, B, ls, amp):
    d = np.sqrt(np.maximum(((A[:, None, :] / ls - B[None, :, :] / ls) ** 2).sum(-1), 0.0))
    a = np.sqrt(5.0) * d
    return amp * (1.0 + a + a * a / 3.0) * np.exp(-a)


def posterior(X, y, Xs, ls, amp, noise, mean, jitter=1e-6, input_mask=None):
    """Mean and variance of the latent GP at ``Xs`` (float64 textbook formulas).

    Columns with ``input_mask == 0`` are dropped (the kernel ignores them).
    """
    X, Xs, y = (np.asarray(a, np.float64) for a in (X, Xs, y))
    ls = np.asarray(ls, np.float64)
    if input_mask is not None:
        keep = np.asarray(input_mask) > 0
        X, Xs, ls = X[:, keep], Xs[:, keep], ls[keep]
    K = matern52(X, X, ls, amp) + (noise + jitter) * np.eye(len(X))
    L = np.linalg.cholesky(K)
    alpha = np.linalg.solve(L.T, np.linalg.solve(L, y - mean))
    Ks = matern52(X, Xs, ls, amp)
    v = np.linalg.solve(L, Ks)
    return mean + Ks.T @ alpha, amp - (v * v).sum(0)


def standardize(y):
    y = np.asarray(y, np.float64)
    sd = y.std(ddof=1) if len(y) > 1 else 0.0
    return (y - y.mean()) / (sd if sd > 0 else 1.0), y.mean(), (sd if sd > 0 else 1.0)


def log_ei(mean, var, best):
    sd = np.sqrt(var)
    u = (mean - best) / sd
    return np.log(sd * (stats.norm.pdf(u) + u * stats.norm.cdf(u)))


def log_inv_cost_lognormal(mu, sigma):
    """``log E[1/C]`` for ``C = exp(mu + sigma Z)``: ``-mu + sigma^2 / 2``."""
    return -mu + 0.5 * sigma**2


def log_inv_cost_mc(mu, sigma, depth, epsilon, n=400_000, seed=0):
    """``log E[1 / C_j]``, stages ``k < depth`` priced at ``epsilon``, plain Monte Carlo."""
    z = np.random.default_rng(seed).standard_normal((n, len(mu)))
    c = np.exp(np.asarray(mu) + np.asarray(sigma) * z)
    c[:, :depth] = epsilon
    return float(np.log(np.mean(1.0 / c.sum(1))))


def hyper(params, cfg_gp):
    """``(lengthscales, amplitude, noise, mean)`` of fitted parameters, as float64."""
    from eeipu_jax import gp

    ls, amp, noise = gp.constrain(params, cfg_gp)
    return np.asarray(ls, np.float64), float(amp), float(noise), float(params.mean)


def objective_targets(y, failed):
    """The objective GP's targets: failed trials at the worst finished value, standardized."""
    y = np.asarray(y, np.float64)
    ok = ~np.asarray(failed)
    worst = y[ok].min() if ok.any() else 0.0
    return standardize(np.where(ok, y, worst))[0]


def acquisition(method, x, depth, *, X, y, failed, stage_costs, soc, obj, costs, eta, epsilon, cost_inputs,
                jitter=1e-6, mc_seed=0):
    """Reference log acquisition of one point.

    Args:
        method: "ei", "eips", "carbo", "ms_carbo" or "eeipu".
        x, depth: the candidate and its memo depth.
        X, y, failed, stage_costs: the observations (raw objective, NaN costs unknown).
        soc: stage of each column.
        obj: ``(ls, amp, noise, mean)`` of the objective GP.
        costs: list of ``(ls, amp, noise, mean)`` of the cost GPs (one for the
            total-cost methods, K for the stage-wise ones).
        eta: cooling exponent.
        epsilon: price of a memoized stage.
        cost_inputs: "prefix" or "stage".
    """
    X = np.asarray(X, np.float64)
    x = np.asarray(x, np.float64)[None, :]
    z = objective_targets(y, failed)
    m, v = posterior(X, z, x, *obj, jitter=jitter)
    lei = float(log_ei(m[0], v[0], z.max()))
    if method == "ei":
        return lei
    soc = np.asarray(soc)
    if method in ("eips", "carbo"):
        total = np.asarray(stage_costs, np.float64).sum(1)
        ok = np.isfinite(total) & (total > 0)
        t, mu0, sd0 = standardize(np.log(total[ok]))
        mm, vv = posterior(X[ok], t, x, *costs[0], jitter=jitter)
        log_inv = log_inv_cost_lognormal(mu0 + sd0 * mm[0], sd0 * np.sqrt(vv[0]))
        return lei + (1.0 if method == "eips" else eta) * log_inv
    K = soc.max() + 1
    mus, sigmas = [], []
    for k in range(K):
        c = np.asarray(stage_costs, np.float64)[:, k]
        ok = np.isfinite(c) & (c > 0)
        t, mu0, sd0 = standardize(np.log(c[ok]))
        mask = (soc <= k) if cost_inputs == "prefix" else (soc == k)
        mm, vv = posterior(X[ok], t, x, *costs[k], jitter=jitter, input_mask=mask)
        mus.append(mu0 + sd0 * mm[0])
        sigmas.append(sd0 * np.sqrt(vv[0]))
    j = depth if method == "eeipu" else 0
    return lei + eta * log_inv_cost_mc(np.array(mus), np.array(sigmas), j, epsilon, seed=mc_seed)

"""Stage-cost models: K log-normal cost GPs, Monte Carlo expected inverse cost, cooling.

Each stage ``k`` of a pipeline has an unknown cost ``c_k(x) > 0``. We model
``ln c_k`` with its own exact GP (standardized targets), so ``c_k`` is
log-normal under the posterior. All K GPs have the same shape: stage ``k``'s
GP sees the unit-cube columns selected by row ``k`` of an ``(K, d)`` input
mask (by default the columns of stages ``0..k``, because in real pipelines a
stage's cost depends on earlier choices; the EEIPU authors used stage ``k``'s
own columns only, available as ``cost_inputs="stage"``), and they are fitted
in one ``vmap``-ed call.

The quantity EEIPU needs is the expected inverse cost of a candidate whose
first ``j`` stages are memoized (cached outputs are restored for a price of
``epsilon`` each):

    E[1 / C_j(x)],   C_j(x) = sum_{k < j} epsilon + sum_{k >= j} c_k(x),

estimated with ``M`` quasi-random normal base samples per stage, independent
across stages, shared by every candidate of one ``ask`` (common random numbers:
the estimate is a deterministic, differentiable function of ``x``). It is
computed in log space (``log E[1/C]``) so that nothing under- or overflows.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, ndtri
from jaxtyping import Array, Bool, Float

from eeipu_jax import gp as gplib
from eeipu_jax._sobol_directions import M_INIT, POLY

__all__ = [
    "stage_input_masks",
    "log_costs",
    "predict_log_cost",
    "sobol_table",
    "normal_base_samples",
    "log_expected_inverse_cost",
    "log_expected_cost",
    "cooling_eta",
]


def stage_input_masks(stage_of_column, n_stages: int, mode: str = "prefix") -> np.ndarray:
    """``(K, d)`` 0/1 masks of the columns each stage-cost GP sees.

    Args:
        stage_of_column: stage index of every unit-cube column.
        n_stages: K.
        mode: ``"prefix"`` (stage k sees stages 0..k, the default) or
            ``"stage"`` (stage k sees only its own columns, as the authors ran it).
    """
    soc = np.asarray(stage_of_column)
    ks = np.arange(n_stages)[:, None]
    if mode == "prefix":
        return (soc[None, :] <= ks).astype(np.float32)
    if mode == "stage":
        return (soc[None, :] == ks).astype(np.float32)
    raise ValueError(f"cost_inputs must be 'prefix' or 'stage', got {mode!r}")


def log_costs(costs: Float[Array, "n k"], known: Bool[Array, "n k"]):
    """``ln`` of positive costs; unknown or non-positive entries become 0 and
    are reported as not usable (second output)."""
    ok = known & jnp.isfinite(costs) & (costs > 0)
    return jnp.where(ok, jnp.log(jnp.where(ok, costs, 1.0)), 0.0), ok


def predict_log_cost(posts, mean, std, x):
    """Posterior of ``ln c_k(x)`` for every stage: ``(mu (K,), sigma (K,))``."""
    m, v = jax.vmap(lambda p: gplib.predict(p, x))(posts)
    return mean + std * m, std * jnp.sqrt(v)


_SOBOL_BITS = 30  # as scipy.stats.qmc.Sobol's default


def _sobol_vectors(d: int, bits: int = _SOBOL_BITS) -> np.ndarray:
    """``(d, bits)`` direction vectors (integers scaled to ``bits`` bits) of the
    first ``d`` Sobol dimensions, by the Bratley-Fox recurrence."""
    v = np.zeros((d, bits), np.uint64)
    v[0] = [1 << (bits - 1 - j) for j in range(bits)]  # dimension 1: the van der Corput sequence
    for i in range(1, d):
        p = POLY[i]
        m = p.bit_length() - 1  # the polynomial's degree
        row = [M_INIT[i][j] << (bits - 1 - j) for j in range(m)]
        for j in range(m, bits):
            new = row[j - m] ^ (row[j - m] >> m)
            for k in range(1, m):
                if (p >> (m - k)) & 1:
                    new ^= row[j - k]
            row.append(new)
        v[i] = row
    return v


@functools.lru_cache(maxsize=32)
def sobol_table(n: int, d: int) -> np.ndarray:
    """``(n, d)`` unscrambled Sobol points in ``[0, 1)`` (float32, cached):
    the base of every quasi-random draw (shifted per call).

    The same points as ``scipy.stats.qmc.Sobol(d, scramble=False).random(n)``
    (tests/test_sobol.py compares them bit for bit), computed here in Gray-code
    order from Joe and Kuo's direction numbers (eeipu_jax/_sobol_directions.py,
    the first 256 dimensions), so that the first BO step of a process does not
    import ``scipy.stats`` (about 0.5 s); beyond 256 dimensions SciPy computes them.
    """
    if d > len(POLY):
        from scipy.stats import qmc

        return qmc.Sobol(d=d, scramble=False).random(n).astype(np.float32)
    v = _sobol_vectors(d)
    i = np.arange(n, dtype=np.uint64)
    gray = i ^ (i >> np.uint64(1))
    x = np.zeros((n, d), np.uint64)
    for k in range(_SOBOL_BITS):  # point i = XOR of the vectors of the bits set in gray(i)
        x[((gray >> np.uint64(k)) & np.uint64(1)).astype(bool)] ^= v[:, k]
    return (x.astype(np.float64) * 2.0**-_SOBOL_BITS).astype(np.float32)


def normal_base_samples(key, n: int, k: int, dtype=jnp.float32) -> Float[Array, "n k"]:
    """``(n, k)`` quasi-random standard normal samples, independent across columns.

    A Sobol point set with a random (Cranley-Patterson) shift per call, pushed
    through the normal quantile function: low-discrepancy like scrambled QMC,
    fixed shape, and jittable.
    """
    table = jnp.asarray(sobol_table(n, k), dtype)
    shift = jax.random.uniform(key, (k,), dtype)
    u = jnp.mod(table + shift, 1.0)
    u = jnp.clip(u, 1e-6, 1.0 - 1e-6)
    return ndtri(u)


def log_expected_inverse_cost(
    mu: Float[Array, " k"],
    sigma: Float[Array, " k"],
    memo_depth,
    z: Float[Array, "m k"],
    log_epsilon,
):
    """``log E[1 / C_j]`` for log-normal stage costs with the first ``j`` memoized.

    Args:
        mu, sigma: posterior mean and std of ``ln c_k`` for each stage.
        memo_depth: ``j``, the number of leading stages restored from the cache.
        z: ``(M, K)`` standard-normal base samples (common random numbers).
        log_epsilon: ``ln`` of the price of a memoized stage.

    Returns:
        The Monte Carlo estimate of ``log E[1/C]``, computed with logsumexp.
    """
    k = jnp.arange(mu.shape[0])
    log_c = mu + sigma * z  # (M, K)
    log_c = jnp.where(k < memo_depth, log_epsilon, log_c)
    log_total = logsumexp(log_c, axis=1)  # (M,)
    return logsumexp(-log_total) - math.log(z.shape[0])


def log_expected_cost(mu: Float[Array, " k"], sigma: Float[Array, " k"], memo_depth, log_epsilon):
    """``log E[C_j]`` in closed form, for log-normal stage costs.

    ``E[C_j] = sum_{k < j} epsilon + sum_{k >= j} E[c_k]`` with
    ``E[c_k] = exp(mu_k + sigma_k^2 / 2)`` (the log-normal mean, on the
    original scale); a logsumexp over the stages, so no term overflows. No
    Monte Carlo: unlike ``E[1/C]``, the mean of a sum is the sum of the means.

    Args:
        mu, sigma: posterior mean and std of ``ln c_k`` for each stage.
        memo_depth: ``j``, the number of leading stages restored from the cache.
        log_epsilon: ``ln`` of the price of a memoized stage.
    """
    k = jnp.arange(mu.shape[0])
    terms = jnp.where(k < memo_depth, log_epsilon, mu + 0.5 * sigma * sigma)
    return logsumexp(terms)


def cooling_eta(budget, spent, b0):
    """EEIPU/CArBO cost-cooling exponent ``(B - spent) / (B - b0)`` in ``[0, 1]``.

    1 at the first BO step (``spent == b0``) and falling linearly to 0 as the
    budget runs out.
    """
    denom = jnp.maximum(budget - b0, 1e-12)
    return jnp.clip((budget - spent) / denom, 0.0, 1.0)

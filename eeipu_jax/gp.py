"""Exact Gaussian-process surrogates on fixed-capacity, masked data.

This module owns the GP used for the objective and for every stage cost:

* **Model.** Constant mean + ``amplitude * Matern52(ARD)`` + homoskedastic noise,
  built with :class:`tinygp.GaussianProcess`. Inputs live in the unit cube of
  the declared bounds; targets are standardized (:func:`standardize`).
* **Scale-free standardization.** :func:`standardize` first takes every target
  relative to an anchor (the first valid row) and divides by the largest
  difference, so its values lie in ``[-1, 1]`` before the mean and standard
  deviation are taken. The result is the same (to float32 rounding) for
  ``y`` and for ``a * y + b`` with any ``a > 0``: an objective of ``1e-9 * f``
  or ``1e30 * f`` is not mistaken for a constant, and sums of squares never
  overflow. Differences are formed as halves (``y/2 - anchor/2``), so any two
  finite float32 values can be subtracted. An optional low part ``y_lo`` (a
  float32 hi/lo pair per row, see :func:`eeipu_jax.loop.tell`) carries what
  float32 rounds away from a large offset, so ``1e9 + f`` keeps ``f``.
* **Fixed shapes.** Observations live in arrays of a fixed capacity ``N`` with a
  boolean ``mask``. A padded row gets zero covariance with everything and a
  unit diagonal, and its target is zero, so it adds exactly ``-0.5 log(2 pi)``
  to the log likelihood (which we remove) and nothing to the posterior: the
  posterior of padded data equals the posterior of the valid rows alone, and
  fitting/prediction compile once per capacity, not once per observation.
* **Input masks.** An optional ``(d,)`` 0/1 ``input_mask`` zeroes columns the
  GP must ignore (a stage-cost GP that sees only some stages' columns), so GPs
  with different inputs still share one shape and can be ``vmap``-ed.
* **Kept factors.** :func:`factor` returns the lower Cholesky factor of the
  masked covariance (padded rows are identity rows) and :func:`append_rows`
  extends a factor by new rows in O(N^2) each (a rank-1 border update),
  so a caller that holds the hyperparameters fixed never factorizes twice;
  :func:`condition` turns a factor and targets into a :class:`Posterior`.
* **Fitting.** MAP-II: negative log marginal likelihood minus weak Gamma
  log-priors (BoTorch ``SingleTaskGP`` defaults of the version the EEIPU
  authors ran: lengthscale Gamma(3, 6), outputscale Gamma(2, 0.15), noise
  Gamma(1.1, 0.05)), divided by the number of valid points so one learning rate
  works at any data size. Hyperparameters are optimized with optax Adam in an
  unconstrained space (each positive value is a sigmoid-bounded log, so it can
  never leave its box: no NaN from a collapsing noise or exploding amplitude),
  warm-started from the previous fit (a few steps track the optimum as data
  grow), with periodic cold fits from a fresh start (when to refit, and on
  which rows, is the caller's schedule: :mod:`eeipu_jax.loop`). The gradient
  is written by hand (:func:`loss_and_grad`, Rasmussen & Williams eq. 5.9:
  one triangular inverse per step instead of reverse-mode through the
  Cholesky and its solves). A cold fit
  runs ``GPConfig.restarts`` fresh starts together under ``vmap``; the default
  is one start (the neutral point of :func:`default_params`): on the data
  sets of ``benchmarks/gp_restarts.py`` (n = 20..100) 2 to 8 starts lowered
  the final loss by at most 0.007 nats per point, while every ask, warm ones
  included (the number of starts is static), got slower roughly in
  proportion to R (``benchmarks/results/gp_restarts.md``, a shared 2-core
  machine). The previous parameters always compete with the result.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tinygp
from jax.scipy.special import gammaln
from jaxtyping import Array, Bool, Float

from eeipu_jax import checks

__all__ = [
    "GPConfig",
    "GPParams",
    "Posterior",
    "scale_free",
    "squash_outliers",
    "robust_spread",
    "OUTLIER_FENCE",
    "standardize",
    "default_params",
    "constrain",
    "build_gp",
    "log_marginal_likelihood",
    "loss_fn",
    "loss_and_grad",
    "fit",
    "fit_stacked",
    "fit_rows",
    "factor",
    "append_rows",
    "condition",
    "posterior",
    "posterior_stacked",
    "predict",
]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class GPConfig:
    """Static settings of GP fitting (hashable: part of jit's static config).

    Attributes:
        lengthscale_bounds / amplitude_bounds / noise_bounds: boxes of the
            positive hyperparameters (amplitude and noise are variances on the
            standardized scale). The noise floor 1e-4 is BoTorch's.
        lengthscale_prior / amplitude_prior / noise_prior: Gamma
            ``(concentration, rate)`` priors, or ``None`` for a flat prior.
        restarts: starts of a fit, run together under ``vmap``. A cold fit
            starts them from the default point and ``restarts - 1`` random
            points; a warm fit starts every copy from the previous fit (the
            count is static, so warm fits pay for the copies too). Default 1:
            a cold fit is one fresh start from the default point.
        steps: Adam steps of a warm fit (continuing from the last fit).
        cold_steps: Adam steps of a cold fit (from fresh starts).
        learning_rate: Adam learning rate (on the unconstrained parameters).
        jitter: added to the diagonal of the covariance.
    """

    lengthscale_bounds: tuple[float, float] = (5e-3, 20.0)
    amplitude_bounds: tuple[float, float] = (1e-2, 50.0)
    noise_bounds: tuple[float, float] = (1e-4, 4.0)
    lengthscale_prior: tuple[float, float] | None = (3.0, 6.0)
    amplitude_prior: tuple[float, float] | None = (2.0, 0.15)
    noise_prior: tuple[float, float] | None = (1.1, 0.05)
    restarts: int = 1
    steps: int = 20
    cold_steps: int = 100
    learning_rate: float = 0.05
    jitter: float = 1e-6

    def __post_init__(self):
        # Floats are stored as Python floats (NumPy scalars accepted), so the
        # config stays hashable, prints plainly and serializes to JSON.
        for name in ("lengthscale_bounds", "amplitude_bounds", "noise_bounds"):
            pair = getattr(self, name)
            lo, hi = _float_pair(pair, f"GPConfig.{name}")
            if not (0 < lo < hi):
                raise ValueError(f"GPConfig.{name} must satisfy 0 < low < high (finite), got {pair!r}")
            object.__setattr__(self, name, (lo, hi))
        for name in ("lengthscale_prior", "amplitude_prior", "noise_prior"):
            prior = getattr(self, name)
            if prior is None:
                continue
            a, b = _float_pair(prior, f"GPConfig.{name}")
            if not (a > 0 and b > 0):
                raise ValueError(
                    f"GPConfig.{name} must be None or a Gamma (concentration, rate) with both > 0, got {prior!r}"
                )
            object.__setattr__(self, name, (a, b))
        for name in ("restarts", "steps", "cold_steps"):
            object.__setattr__(self, name, checks.integer(getattr(self, name), f"GPConfig.{name}"))
        if self.restarts < 1:
            raise ValueError(f"GPConfig.restarts must be >= 1, got {self.restarts}")
        if self.steps < 0 or self.cold_steps < 0:
            raise ValueError(
                f"GPConfig.steps and cold_steps must be >= 0, got {self.steps}, {self.cold_steps}"
            )
        lr = checks.finite_number(self.learning_rate, "GPConfig.learning_rate", greater_than=0.0)
        object.__setattr__(self, "learning_rate", lr)
        object.__setattr__(self, "jitter", checks.finite_number(self.jitter, "GPConfig.jitter", at_least=0.0))


def _float_pair(pair, name: str) -> tuple[float, float]:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ValueError(f"{name} must be a pair of numbers, got {pair!r}")
    return checks.finite_number(pair[0], name), checks.finite_number(pair[1], name)


class GPParams(NamedTuple):
    """Unconstrained GP hyperparameters (see :func:`constrain`)."""

    raw_lengthscale: Float[Array, " d"]
    raw_amplitude: Float[Array, ""]
    raw_noise: Float[Array, ""]
    mean: Float[Array, ""]


# --------------------------------------------------------------------- utils
def _to_raw(value, bounds):
    xp = np if isinstance(value, (np.ndarray, float, int)) else jnp
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    t = (xp.log(value) - lo) / (hi - lo)
    t = xp.clip(t, 1e-6, 1 - 1e-6)
    return xp.log(t) - xp.log1p(-t)


def _from_raw(raw, bounds):
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    return jnp.exp(lo + (hi - lo) * jax.nn.sigmoid(raw))


def constrain(params: GPParams, cfg: GPConfig):
    """``(lengthscale (d,), amplitude, noise)`` from unconstrained parameters."""
    return (
        _from_raw(params.raw_lengthscale, cfg.lengthscale_bounds),
        _from_raw(params.raw_amplitude, cfg.amplitude_bounds),
        _from_raw(params.raw_noise, cfg.noise_bounds),
    )


def default_params(dim: int, cfg: GPConfig, dtype=jnp.float32) -> GPParams:
    """A neutral starting point: lengthscale 0.5, amplitude 1, noise 1e-2."""
    # NumPy math, so building a state outside jit compiles nothing.
    return GPParams(
        raw_lengthscale=jnp.asarray(_to_raw(np.full((dim,), 0.5), cfg.lengthscale_bounds), dtype),
        raw_amplitude=jnp.asarray(_to_raw(np.asarray(1.0), cfg.amplitude_bounds), dtype),
        raw_noise=jnp.asarray(_to_raw(np.asarray(1e-2), cfg.noise_bounds), dtype),
        mean=jnp.zeros((), dtype),
    )


def _random_params(key, dim: int, cfg: GPConfig, dtype) -> GPParams:
    """A restart point drawn log-uniformly in a central region of the box."""
    k1, k2, k3 = jax.random.split(key, 3)
    ls = jnp.exp(jax.random.uniform(k1, (dim,), dtype, math.log(0.05), math.log(2.0)))
    amp = jnp.exp(jax.random.uniform(k2, (), dtype, math.log(0.3), math.log(3.0)))
    noise = jnp.exp(jax.random.uniform(k3, (), dtype, math.log(1e-4), math.log(1e-1)))
    return GPParams(
        _to_raw(ls, cfg.lengthscale_bounds),
        _to_raw(amp, cfg.amplitude_bounds),
        _to_raw(noise, cfg.noise_bounds),
        jnp.zeros((), dtype),
    )


#: Robust targets: a value further than this many median absolute deviations from the median
#: of its set is an outlier (:func:`squash_outliers`). Far beyond heavy tails that are data:
#: the short synthetic runs of ``tests/test_pinned.py`` reach 84 (a first bad region among a
#: few warm-up points), Gaussian data ~5 (MAD ~ 0.67 sigma); 1e30 among values of order 1 is
#: 1e30 of them.
OUTLIER_FENCE = 1000.0


def _masked_median(v, mask):
    """Median of ``v`` over ``mask`` (fixed shape: one sort; 0 when nothing is valid)."""
    n = jnp.sum(mask)
    s = jnp.sort(jnp.where(mask, v, jnp.inf))
    med = 0.5 * s[jnp.maximum(n - 1, 0) // 2] + 0.5 * s[jnp.minimum(n // 2, v.shape[0] - 1)]
    return jnp.where(n > 0, med, 0.0)


def robust_spread(v, mask):
    """``(median, spread)`` of ``v`` over ``mask``: the spread is the median absolute
    deviation, or the mean absolute deviation when more than half the values are tied
    (MAD 0); 0 only when every valid value is equal."""
    med = _masked_median(v, mask)
    dev = jnp.where(mask, jnp.abs(v - med), 0.0)
    mad = _masked_median(dev, mask)
    mean_dev = jnp.sum(dev) / jnp.maximum(jnp.sum(mask), 1)
    return med, jnp.where(mad > 0, mad, mean_dev)


def _outliers(v, mask, fence):
    """``(out, med, spread, dev, limit)``: the valid values beyond ``med +- fence * spread``."""
    med, spread = robust_spread(v, mask)
    dev = v - med
    limit = fence * spread
    out = mask & (jnp.abs(dev) > limit) & (spread > 0) & jnp.isfinite(limit)
    return out, med, spread, dev, limit


def squash_outliers(v, mask, fence: float = OUTLIER_FENCE):
    """Values beyond ``median +- fence * spread`` (:func:`robust_spread`) pulled in next to the others.

    An outlier above the fence becomes ``top + spread * e / (e + spread)``,
    with ``top`` the largest value inside the fences and ``e`` its distance
    beyond the fence; one below, ``bottom - ...`` alike. So outliers stay the
    best (or worst) values, in their order, but less than one ``spread``
    beyond the others: like a failed trial, which the GP sees at the worst
    finished value, rather than a point that makes every other value look
    the same. Values inside the fences are returned unchanged (bit for bit),
    and the rule is scale-free: ``a * v + b`` (``a > 0``) gives
    ``a * squash(v) + b``.
    """
    out, _, spread, dev, limit = _outliers(v, mask, fence)
    inside = mask & ~out
    top = jnp.max(jnp.where(inside, v, -jnp.inf))
    bottom = jnp.min(jnp.where(inside, v, jnp.inf))
    excess = jnp.abs(dev) - limit  # > 0 on outliers (elsewhere unused)
    margin = spread / (1.0 + spread / excess)  # in (0, spread), increasing in the excess, never overflows
    return jnp.where(out, jnp.where(dev > 0, top + margin, bottom - margin), v)


def _halves(y, lo, mask, a):
    """``(y + lo - y[a] - lo[a]) / 2`` in valid rows, 0 elsewhere (never overflows)."""
    half = (0.5 * y - 0.5 * y[a]) + 0.5 * (lo - lo[a])
    return jnp.where(mask, half, 0.0)


def scale_free(y: Float[Array, " n"], mask: Bool[Array, " n"], y_lo=None, *, robust: bool = False):
    """Valid targets relative to an anchor, divided by their largest difference.

    ``u = (y - y[a]) / scale`` with ``a`` the first valid row and
    ``scale = max |y - y[a]|`` over the valid rows (1 when every valid value
    equals the anchor), so ``u`` lies in ``[-1, 1]``. Differences are formed as
    halves (``y / 2 - y[a] / 2``), so they never overflow for finite float32
    values, and the low parts ``y_lo`` (if given) are added before rounding
    to ``u``: a ``(y, y_lo)`` hi/lo pair keeps the digits that a large common
    offset pushes out of a single float32.

    With ``robust`` (the objective's targets), outliers are squashed
    (:func:`squash_outliers`) before the division, so one extreme value does
    not shrink every other to a constant; the anchor is then the first valid
    row unless that row is an outlier (differences to an outlier would lose the
    other rows' digits), else a median row. Data without outliers give exactly
    the values of ``robust=False``.

    Args:
        y: ``(n,)`` targets (high parts); invalid rows may hold anything.
        mask: ``(n,)`` valid rows.
        y_lo: optional ``(n,)`` low parts (``y + y_lo`` is the value).
        robust: squash outliers (static).

    Returns:
        ``(u, anchor, scale)``: ``u`` is 0 in invalid rows, and
        ``y ~= anchor + scale * u`` in valid ones (outliers excepted under
        ``robust``; ``anchor`` and ``scale`` are float32 and only as exact as
        float32 allows).
    """
    first = jnp.argmax(mask)  # 0 when nothing is valid (then nothing is used)
    lo = jnp.zeros_like(y) if y_lo is None else jnp.asarray(y_lo, y.dtype)
    a = first
    if robust:
        n = jnp.sum(mask)
        mid = jnp.argsort(jnp.where(mask, y, jnp.inf))[jnp.maximum(n - 1, 0) // 2]  # a median row: no outlier
        out = _outliers(_halves(y, lo, mask, mid), mask, OUTLIER_FENCE)[0]
        a = jnp.where(out[first], mid, first)
    half = _halves(y, lo, mask, a)
    if robust:
        half = squash_outliers(half, mask)
    top = jnp.max(jnp.abs(half))
    ok = (top > 0) & jnp.isfinite(top)
    u = jnp.where(mask, half / jnp.where(ok, top, 1.0), 0.0)
    scale = jnp.where(ok, 2.0 * top, 1.0)
    return u, y[a] + lo[a], scale


def standardize(y: Float[Array, " n"], mask: Bool[Array, " n"], y_lo=None):
    """Masked, scale-free standardization ``(y - mean) / std`` (std with n - 1).

    The data are first made scale-free (:func:`scale_free`), so the
    standardized values are the same for ``y`` and ``a * y + b`` (``a > 0``)
    up to float32 rounding, and tiny (``1e-9 * f``) or huge (``1e30 * f``)
    objectives are standardized like ``f``. Constant or single-point data get
    ``std = 1`` (relative to the anchor's scale) so nothing divides by zero.
    Padded rows come back as 0.

    Args:
        y: ``(n,)`` targets.
        mask: ``(n,)`` valid rows.
        y_lo: optional low parts of a hi/lo pair (see :func:`scale_free`).

    Returns:
        ``(y_standardized, mean, std)``; ``mean`` and ``std`` are on the scale
        of ``y`` (float32: they overflow for targets spread beyond ~1e38, which
        only their users, the cost GPs, would notice; costs are logarithms).
    """
    u, anchor, scale = scale_free(y, mask, y_lo)
    m = mask.astype(u.dtype)
    n = jnp.maximum(m.sum(), 1.0)
    mean_u = u.sum() / n
    var = jnp.sum(m * (u - mean_u) ** 2) / jnp.maximum(n - 1.0, 1.0)
    std_u = jnp.sqrt(var)
    # |u| <= 1 and some |u| = 1 unless all values are equal, so std_u is
    # either 0 (constant data) or at least ~1/n: no relative threshold needed.
    std_u = jnp.where(std_u > 0, std_u, 1.0)
    z = jnp.where(mask, (u - mean_u) / std_u, 0.0)
    return z, anchor + scale * mean_u, scale * std_u


_ARG_MAX = 60.0  # Matern argument beyond which the kernel is exactly 0


def _matern52(r2):
    """Matern-5/2 of a squared distance, with a finite gradient at r = 0.

    Far pairs (``sqrt(5) r > 60``, kernel < 1e-22) are set to exactly 0:
    otherwise ``exp(-arg)`` produces float32 subnormals, which x86 CPUs
    process up to 100x slower, and GP fits slowed down erratically with the
    lengthscales.
    """
    pos = r2 > 1e-12
    r = jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)
    arg = math.sqrt(5.0) * r
    near = arg < _ARG_MAX
    a = jnp.where(near, arg, _ARG_MAX)
    return jnp.where(near, (1.0 + a + a * a / 3.0) * jnp.exp(-a), 0.0)


def _matern52_and_slope(r2):
    """Matern-5/2 ``phi(r2)`` and its derivative ``d phi / d r2`` (no autodiff).

    With ``a = sqrt(5 r2)``: ``phi = (1 + a + a^2/3) e^-a`` and
    ``d phi / d r2 = -(5/6) (1 + a) e^-a`` (finite at ``r2 = 0``). Both are
    exactly 0 beyond the same cut-off as :func:`_matern52`.
    """
    a = jnp.sqrt(5.0 * jnp.maximum(r2, 0.0))
    near = a < _ARG_MAX
    a = jnp.where(near, a, _ARG_MAX)
    e = jnp.where(near, jnp.exp(-a), 0.0)
    return (1.0 + a + a * a / 3.0) * e, (-5.0 / 6.0) * (1.0 + a) * e


class _MaskedKernel(tinygp.kernels.Kernel):
    """``m1 * m2 * amp * Matern52(|x1 - x2|_2)`` on inputs ``(x_scaled, m)``.

    ``evaluate`` is the one-pair formula tinygp vmaps; ``__call__`` is
    overridden for whole matrices to get squared distances from one matrix
    product instead of an ``(n, n, d)`` difference tensor (4x faster forward
    and backward on CPU).
    """

    amplitude: jax.Array

    def evaluate(self, X1, X2):
        x1, m1 = X1
        x2, m2 = X2
        return m1 * m2 * self.amplitude * _matern52(jnp.sum(jnp.square(x1 - x2)))

    def __call__(self, X1, X2=None):
        if X2 is None:
            return super().__call__(X1)
        x1, m1 = X1
        x2, m2 = X2
        r2 = _sq_dist(x1, x2)
        return m1[:, None] * m2[None, :] * self.amplitude * _matern52(r2)


def _sq_dist(x1, x2):
    """Squared distances from one matrix product (clamped at 0)."""
    sq1 = jnp.sum(jnp.square(x1), axis=-1)
    sq2 = jnp.sum(jnp.square(x2), axis=-1)
    return jnp.maximum(sq1[:, None] + sq2[None, :] - 2.0 * x1 @ x2.T, 0.0)


def _inputs(params: GPParams, X, mask, input_mask, cfg: GPConfig):
    ls, amp, noise = constrain(params, cfg)
    if input_mask is None:
        input_mask = jnp.ones(X.shape[-1], X.dtype)
    xs = X * input_mask / ls
    m = mask.astype(X.dtype)
    return (xs, m), amp, noise, m


def build_gp(params: GPParams, X, mask, cfg: GPConfig, input_mask=None) -> tinygp.GaussianProcess:
    """The tinygp process over the padded data (zero mean; centre targets first).

    The reference construction: :func:`log_marginal_likelihood` and
    :func:`loss_fn` evaluate it, and the tests check the hand-written
    gradient of :func:`loss_and_grad` against ``jax.grad`` of it.
    """
    (xs, m), amp, noise, m = _inputs(params, X, mask, input_mask, cfg)
    diag = m * (noise + cfg.jitter) + (1.0 - m)
    return tinygp.GaussianProcess(_MaskedKernel(amplitude=amp), (xs, m), diag=diag)


def log_marginal_likelihood(params: GPParams, X, y, mask, cfg: GPConfig, input_mask=None):
    """Exact log marginal likelihood of the valid rows of padded data.

    Args:
        params: GP hyperparameters.
        X: ``(N, d)`` unit-cube inputs (padded rows arbitrary).
        y: ``(N,)`` targets (padded rows arbitrary).
        mask: ``(N,)`` validity mask.
        cfg: GP settings.
        input_mask: optional ``(d,)`` column mask.
    """
    gp = build_gp(params, X, mask, cfg, input_mask)
    yc = jnp.where(mask, y - params.mean, 0.0)
    n_pad = jnp.sum(~mask)
    return gp.log_probability(yc) + 0.5 * _LOG_2PI * n_pad


def _gamma_logpdf(x, prior):
    if prior is None:
        return jnp.zeros_like(x)
    a, b = prior
    # numpyro's Gamma(a, b).log_prob, term for term (tests/test_gp.py compares
    # the two and SciPy's): written out because importing numpyro.distributions
    # took 0.4-0.5 s of the first BO step's compilation in a process.
    normalize_term = gammaln(a) - a * jnp.log(b)
    log_density = (a - 1) * jnp.log(x) - b * x - normalize_term
    return jnp.where(x > 0, log_density, -jnp.inf)  # outside the support


def _gamma_dlogpdf(x, prior):
    """``d/dx`` of the Gamma(a, b) log density: ``(a - 1) / x - b``."""
    if prior is None:
        return jnp.zeros_like(x)
    a, b = prior
    return (a - 1.0) / x - b


def _log_prior(ls, amp, noise, input_mask, cfg: GPConfig):
    return (
        jnp.sum(input_mask * _gamma_logpdf(ls, cfg.lengthscale_prior))
        + _gamma_logpdf(amp, cfg.amplitude_prior)
        + _gamma_logpdf(noise, cfg.noise_prior)
    )


def loss_fn(params: GPParams, X, y, mask, cfg: GPConfig, input_mask=None):
    """Negative log posterior of the hyperparameters divided by the number of
    valid points (the fitting objective), through tinygp (the reference that
    :func:`loss_and_grad` computes by hand)."""
    ls, amp, noise = constrain(params, cfg)
    if input_mask is None:
        input_mask = jnp.ones(X.shape[-1], X.dtype)
    lp = _log_prior(ls, amp, noise, input_mask, cfg)
    n = jnp.maximum(jnp.sum(mask), 1)
    return -(log_marginal_likelihood(params, X, y, mask, cfg, input_mask) + lp) / n


def _covariance(xs, m, amp, s2):
    """Masked covariance ``m_i m_j amp phi(r2_ij) + diag(m s2 + 1 - m)``, with
    ``m_i m_j phi`` and ``m_i m_j d phi / d r2`` (for the gradient)."""
    phi, slope = _matern52_and_slope(_sq_dist(xs, xs))
    mm = m[:, None] * m[None, :]
    K = amp * mm * phi + jnp.diag(m * s2 + (1.0 - m))
    return K, mm * phi, mm * slope


def _raw_slope(value, raw, bounds):
    """``d value / d raw`` of a sigmoid-bounded log (see :func:`_from_raw`)."""
    s = jax.nn.sigmoid(raw)
    return value * (math.log(bounds[1]) - math.log(bounds[0])) * s * (1.0 - s)


def _loss(params: GPParams, X, y, mask, cfg: GPConfig, input_mask, with_grad: bool):
    ls, amp, noise = constrain(params, cfg)
    if input_mask is None:
        input_mask = jnp.ones(X.shape[-1], X.dtype)
    xs = X * input_mask / ls
    m = mask.astype(X.dtype)
    K, mphi, mslope = _covariance(xs, m, amp, noise + cfg.jitter)
    L = jnp.linalg.cholesky(K)
    yc = m * (y - params.mean)
    w = jax.scipy.linalg.solve_triangular(L, yc, lower=True)
    n_valid = jnp.sum(m)
    nll = 0.5 * w @ w + jnp.sum(jnp.log(jnp.diag(L))) + 0.5 * _LOG_2PI * n_valid
    n = jnp.maximum(n_valid, 1.0)
    loss = (nll - _log_prior(ls, amp, noise, input_mask, cfg)) / n
    if not with_grad:
        return loss
    # d nll / d K = W = (K^-1 - alpha alpha^T) / 2 with alpha = K^-1 yc; K^-1
    # from the factor (one triangular solve against the identity and one
    # matrix product). Every hyperparameter's derivative is a sum over W
    # times the derivative of K, written out below: this replaces reverse-mode
    # through the Cholesky (two more N^3 triangular solves and a matrix
    # product, plus N x N elementwise passes) with one O(N^3) inverse.
    alpha = jax.scipy.linalg.solve_triangular(L, w, lower=True, trans=1)
    Linv = jax.scipy.linalg.solve_triangular(L, jnp.eye(L.shape[0], dtype=L.dtype), lower=True)
    W = 0.5 * (Linv.T @ Linv - alpha[:, None] * alpha[None, :])
    d_amp = jnp.sum(W * mphi)
    d_noise = jnp.sum(m * jnp.diag(W))
    d_mean = -jnp.sum(m * alpha)
    # r2_ij = sum_d (xs_id - xs_jd)^2 with xs = x * input_mask / ls, so
    # d r2_ij / d ls_d = -(2 / ls_d) (xs_id - xs_jd)^2 and, E being symmetric,
    # sum_ij E_ij (xs_id - xs_jd)^2 = 2 sum_i xs_id^2 (E 1)_i - 2 (xs^T E xs)_dd.
    E = amp * W * mslope
    quad = jnp.sum(xs * xs * jnp.sum(E, axis=1)[:, None], axis=0) - jnp.sum(xs * (E @ xs), axis=0)
    d_ls = -(4.0 / ls) * quad
    d_ls = d_ls - input_mask * _gamma_dlogpdf(ls, cfg.lengthscale_prior)
    d_amp = d_amp - _gamma_dlogpdf(amp, cfg.amplitude_prior)
    d_noise = d_noise - _gamma_dlogpdf(noise, cfg.noise_prior)
    grad = GPParams(
        raw_lengthscale=d_ls * _raw_slope(ls, params.raw_lengthscale, cfg.lengthscale_bounds) / n,
        raw_amplitude=d_amp * _raw_slope(amp, params.raw_amplitude, cfg.amplitude_bounds) / n,
        raw_noise=d_noise * _raw_slope(noise, params.raw_noise, cfg.noise_bounds) / n,
        mean=d_mean / n,
    )
    return loss, grad


def loss_and_grad(params: GPParams, X, y, mask, cfg: GPConfig, input_mask=None):
    """:func:`loss_fn` and its gradient in ``params``, the gradient written by hand.

    With ``K = LL^T``, ``alpha = K^-1 (y - mean)`` and
    ``W = (K^-1 - alpha alpha^T) / 2``, the gradient of the negative log
    marginal likelihood is ``sum_ij W_ij dK_ij / dtheta`` (Rasmussen &
    Williams 2006, eq. 5.9), and ``-sum(alpha)`` for the constant mean. One
    step costs a Cholesky (N^3/3), ``L^-1`` (a triangular solve against the
    identity) and ``L^-T L^-1`` instead of reverse-mode through the Cholesky.
    The same value as :func:`loss_fn` (float32 rounding aside); the
    gradient is with respect to ``params`` only (not ``X`` or ``y``).

    Returns:
        ``(loss, grad)`` with ``grad`` a :class:`GPParams`.
    """
    return _loss(params, X, y, mask, cfg, input_mask, with_grad=True)


def _descend(value_and_grad, p0, n_steps, opt):
    """Adam on ``value_and_grad(p) -> (loss, grad)`` from ``p0`` for ``n_steps``.

    A step whose loss or gradient is non-finite is skipped: the parameters and
    the optimizer state stay exactly as they were (zeroing the gradient alone
    would let Adam's momentum carry the parameters further into the bad
    region). The best finite iterate seen is returned, so the result never
    depends on where a run wandered after it.

    Returns:
        ``(best_params, best_loss, params, opt_state)``: the best finite
        iterate and its loss (``inf`` if none was finite), and the final
        parameters and optimizer state.
    """

    def finite(tree):
        return jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda a: jnp.all(jnp.isfinite(a)), tree))

    def keep(ok, new, old):
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

    def step(_, carry):
        p, s, best_p, best_l = carry
        loss, g = value_and_grad(p)
        ok = jnp.isfinite(loss) & finite(g)
        better = ok & (loss < best_l)
        best_p, best_l = keep(better, p, best_p), jnp.where(better, loss, best_l)
        g = jax.tree.map(lambda a: jnp.where(ok, a, 0.0), g)  # keeps the discarded update NaN-free
        upd, s_new = opt.update(g, s, p)
        return keep(ok, optax.apply_updates(p, upd), p), keep(ok, s_new, s), best_p, best_l

    # Every carry takes the batch axes of p0 from the start (select(c, a, a) is
    # a, and XLA drops it): under vmap (restarts, stacked GPs) the loop's
    # batching then settles in one trace of the body instead of two (the best
    # loss and Adam's step count would otherwise become batched after the
    # first), which shortens tracing and changes nothing in the program run.
    leaf = jax.tree.leaves(p0)[0]
    c = jnp.all(leaf == leaf)

    def like_p0(tree):
        return jax.tree.map(lambda a: jax.lax.select(jnp.broadcast_to(c, a.shape), a, a), tree)

    inf = like_p0(jnp.asarray(jnp.inf, leaf.dtype))
    p, s, best_p, best_l = jax.lax.fori_loop(0, n_steps, step, (p0, like_p0(opt.init(p0)), p0, inf))
    # The final iterate was never evaluated inside the loop.
    loss = value_and_grad(p)[0]
    better = jnp.isfinite(loss) & (loss < best_l)
    return keep(better, p, best_p), jnp.where(better, loss, best_l), p, s


def fit(key, init: GPParams, X, y, mask, cfg: GPConfig, input_mask=None, cold=False):
    """Fit hyperparameters by MAP-II with optax Adam.

    A *warm* fit continues from ``init`` for ``cfg.steps`` Adam steps. A
    *cold* fit runs ``cfg.cold_steps`` steps from ``cfg.restarts`` fresh
    starts (the default point and random draws), all under ``vmap``. Each run
    returns its best finite iterate, and ``init`` itself competes with the
    results, so a fit never returns parameters worse than it was given. A
    step whose loss or gradient is non-finite is skipped (parameters and
    Adam's state unchanged, see :func:`_descend`), so the result is finite
    whenever ``init`` is. Gradients come from :func:`loss_and_grad`.

    Args:
        key: PRNG key for the random restarts.
        init: warm-start hyperparameters.
        X, y, mask: padded data (``y`` standardized).
        cfg: GP settings.
        input_mask: optional ``(d,)`` column mask.
        cold: (traced) bool, whether to fit from fresh starts. The number of
            steps is a runtime value, so warm and cold fits share one compiled
            program.

    Returns:
        ``(params, loss)``: the best parameters found and their loss.
    """
    dim = X.shape[-1]
    dtype = X.dtype
    keys = jax.random.split(key, cfg.restarts)
    fresh = jax.vmap(lambda k: _random_params(k, dim, cfg, dtype))(keys)
    fresh = jax.tree.map(lambda s, w: s.at[0].set(w), fresh, default_params(dim, cfg, dtype))
    warm = jax.tree.map(lambda w: jnp.broadcast_to(w, (cfg.restarts,) + w.shape), init)
    starts = jax.tree.map(lambda f, w: jnp.where(cold, f, w), fresh, warm)
    n_steps = jnp.where(cold, cfg.cold_steps, cfg.steps)
    opt = optax.adam(cfg.learning_rate)

    def vg(p):
        return loss_and_grad(p, X, y, mask, cfg, input_mask)

    def run(p0):
        best_p, best_l, _, _ = _descend(vg, p0, n_steps, opt)
        return best_p, best_l

    params, losses = jax.vmap(run)(starts)
    # The incoming parameters compete too: a fit never makes things worse.
    params = jax.tree.map(lambda a, w: jnp.concatenate([a, w[None]]), params, init)
    losses = jnp.append(losses, _loss(init, X, y, mask, cfg, input_mask, with_grad=False))
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    best = jnp.argmin(losses)
    return jax.tree.map(lambda a: a[best], params), losses[best]


def fit_stacked(key, init: GPParams, X, targets, masks, input_masks, cfg: GPConfig, cold, rows=None):
    """Standardize and fit M GPs on shared inputs in one vmapped call.

    Args:
        key: PRNG key.
        init: parameters stacked over a leading axis M.
        X: ``(N, d)`` unit-cube inputs shared by all M GPs.
        targets: ``(N, M)`` raw targets (standardized here, per GP, by
            :func:`standardize`, over all their valid rows).
        masks: ``(N, M)`` rows each GP may use.
        input_masks: ``(M, d)`` columns each GP sees.
        cfg: GP settings.
        cold: whether to fit from fresh starts.
        rows: optional ``(m,)`` row indices (static length): the
            hyperparameters are fitted on these rows only (see
            :func:`fit_rows`), after standardizing on all rows.

    Returns:
        ``(params, mean, std)`` stacked over M: fitted parameters and the
        standardization applied to each GP's targets.
    """
    keys = jax.random.split(key, targets.shape[1])
    Xf = X if rows is None else X[rows]

    def one(k, p, t, m, im):
        ys, mean, std = standardize(t, m)
        if rows is not None:
            ys, m = ys[rows], m[rows]
        params, _ = fit(k, p, Xf, ys, m, cfg, im, cold)
        return params, mean, std

    return jax.vmap(one)(keys, init, targets.T, masks.T, input_masks)


def fit_rows(key, valid, priority, size: int):
    """``size`` row indices for a hyperparameter fit on a bounded subset.

    The best quarter (by ``priority``, higher first) of the valid rows is
    always included and the rest is a uniform random sample of the other
    valid rows; when there are at most ``size`` valid rows, all of them are
    chosen (and the remaining indices point at invalid rows, which every
    GP masks out). Fitting on ``m`` rows and conditioning on all ``n``
    bounds the fit at the ``m``-row cost (the conditioning stays exact; only
    the hyperparameter estimate sees fewer points).

    Args:
        key: PRNG key for the random sample.
        valid: ``(N,)`` rows holding data.
        priority: ``(N,)`` values that rank rows for the always-kept quarter
            (e.g. the objective).
        size: number of rows (static, ``<= N``).

    Returns:
        ``(size,)`` int32 row indices, valid rows first.
    """
    n_top = size // 4
    ranked = jnp.where(valid, priority, -jnp.inf)
    _, top = jax.lax.top_k(ranked, n_top) if n_top > 0 else (None, jnp.zeros((0,), jnp.int32))
    u = jax.random.uniform(key, valid.shape)
    score = jnp.where(valid, u, -1.0).at[top].set(2.0)  # top rows first, invalid rows last
    _, idx = jax.lax.top_k(score, size)
    return idx.astype(jnp.int32)


# ------------------------------------------------------------ conditioning
def factor(params: GPParams, X, mask, cfg: GPConfig, input_mask=None) -> Float[Array, "N N"]:
    """Lower Cholesky factor of the masked covariance of padded data.

    Padded rows (``mask`` False) have a unit diagonal and no covariance with
    anything, so their rows and columns of the factor are identity rows: the
    factor of the valid rows, padded. It depends on the inputs, the mask and
    the hyperparameters only, never on the targets.
    """
    ls, amp, noise = constrain(params, cfg)
    if input_mask is None:
        input_mask = jnp.ones(X.shape[-1], X.dtype)
    K, _, _ = _covariance(X * input_mask / ls, mask.astype(X.dtype), amp, noise + cfg.jitter)
    return jnp.linalg.cholesky(K)


def append_rows(chol, params: GPParams, X, mask, cfg: GPConfig, input_mask, start, stop):
    """Extend a factor of rows ``[0, start)`` to rows ``[0, stop)``, one row at a time.

    Appending row ``i`` to ``K = L L^T`` (Cholesky, rank-1 border update):
    ``l = L^-1 k`` with ``k`` the covariances of row ``i`` with rows ``< i``,
    and the new diagonal ``sqrt(K_ii - l.l)``, clamped below at the noise
    variance, which bounds the exact value (the Schur complement of
    ``K + s2 I`` is at least ``s2``). O(N^2) per row, against N^3/3 for a
    new factorization; the result equals :func:`factor` of rows ``< stop``
    to rounding. A masked row (``mask`` False) becomes an identity row.

    Args:
        chol: ``(N, N)`` factor whose rows ``>= start`` are identity rows
            (as :func:`factor` and this function leave them).
        params, X, mask, cfg, input_mask: as for :func:`factor` (the same
            hyperparameters the factor was built with).
        start, stop: (traced) row range to append.

    Returns:
        The factor of rows ``[0, stop)`` (rows ``>= stop`` identity).
    """
    ls, amp, noise = constrain(params, cfg)
    if input_mask is None:
        input_mask = jnp.ones(X.shape[-1], X.dtype)
    xs = X * input_mask / ls
    m = mask.astype(X.dtype)
    s2 = noise + cfg.jitter
    idx = jnp.arange(X.shape[0])

    def body(i, L):
        xi = jax.lax.dynamic_index_in_dim(xs, i, keepdims=True)
        phi, _ = _matern52_and_slope(_sq_dist(xs, xi)[:, 0])
        before = idx < i
        k = jnp.where(before, amp * m * m[i] * phi, 0.0)
        # Rows >= i of L are identity rows, so the full solve gives
        # L[:i, :i]^-1 k[:i] in the first i entries and zeros after.
        l = jax.scipy.linalg.solve_triangular(L, k, lower=True)
        floor = m[i] * s2 + (1.0 - m[i])
        d2 = jnp.maximum(m[i] * amp + floor - l @ l, floor)
        row = jnp.where(before, l, 0.0) + jnp.where(idx == i, jnp.sqrt(d2), 0.0)
        return jax.lax.dynamic_update_index_in_dim(L, row, i, 0)

    return jax.lax.fori_loop(start, stop, body, chol)


class Posterior(NamedTuple):
    """A GP conditioned on (masked) data; cheap to query with :func:`predict`."""

    xs: Float[Array, "N d"]  # inputs scaled by input_mask / lengthscale
    row_mask: Float[Array, " N"]  # 1 for rows the GP uses
    amplitude: Float[Array, ""]
    chol: Float[Array, "N N"]  # lower Cholesky factor of the masked covariance
    alpha: Float[Array, " N"]  # chol^-1 y (whitened targets)
    y: Float[Array, " N"]  # centred, masked targets
    mean: Float[Array, ""]
    lengthscale: Float[Array, " d"]
    input_mask: Float[Array, " d"]


def condition(params: GPParams, chol, X, y, mask, cfg: GPConfig, input_mask=None) -> Posterior:
    """Condition the GP on padded data given its factor (:func:`factor` or
    :func:`append_rows` with the same ``params``): one O(N^2) solve."""
    ls, amp, _ = constrain(params, cfg)
    if input_mask is None:
        input_mask = jnp.ones(X.shape[-1], X.dtype)
    yc = jnp.where(mask, y - params.mean, 0.0)
    alpha = jax.scipy.linalg.solve_triangular(chol, yc, lower=True)
    return Posterior(xs=X * input_mask / ls, row_mask=mask.astype(X.dtype), amplitude=amp, chol=chol,
                     alpha=alpha, y=yc, mean=params.mean, lengthscale=ls, input_mask=input_mask)


def posterior(params: GPParams, X, y, mask, cfg: GPConfig, input_mask=None) -> Posterior:
    """Factor and condition the GP on padded data once; query with :func:`predict`."""
    return condition(params, factor(params, X, mask, cfg, input_mask), X, y, mask, cfg, input_mask)


def posterior_stacked(params: GPParams, X, targets, masks, input_masks, mean, std, cfg: GPConfig, chol=None):
    """Condition M stacked GPs (see :func:`fit_stacked`) on their targets,
    standardized with the ``mean`` and ``std`` the fit returned.

    Args:
        chol: optional ``(M, N, N)`` factors of the M GPs with ``params``
            (kept from an earlier ask and extended by :func:`append_rows`);
            computed here when ``None``.
    """
    if chol is None:
        chol = jax.vmap(lambda p, m, im: factor(p, X, m, cfg, im))(params, masks.T, input_masks)

    def one(p, L, t, m, im, mu, sd):
        return condition(p, L, X, jnp.where(m, (t - mu) / sd, 0.0), m, cfg, im)

    return jax.vmap(one)(params, chol, targets.T, masks.T, input_masks, mean, std)


def predict(post: Posterior, x: Float[Array, " d"]):
    """Latent posterior mean and variance at one point (vmap for batches).

    ``v = L^-1 k(X, x)``, ``mean = v . L^-1 y``, ``var = k(x, x) - v . v``;
    ``L^-1 y`` is part of the posterior, so under ``vmap`` the only solve is
    one triangular solve with the batch as right-hand sides.

    Returns:
        ``(mean, variance)`` on the scale of the targets the GP was fitted to;
        the variance is clamped at 1e-12.
    """
    xq = (x * post.input_mask / post.lengthscale)[None, :]
    # _matern52, not _matern52_and_slope: predict is differentiated in x
    # (candidate refinement), and a query whose visible columns equal a
    # training row's (a memoized candidate's prefix, seen by the prefix cost
    # GPs) has r2 = 0, where only _matern52's guarded square root keeps the
    # gradient finite (an unguarded one makes all of it NaN).
    k_star = post.amplitude * post.row_mask * _matern52(_sq_dist(post.xs, xq)[:, 0])
    v = jax.scipy.linalg.solve_triangular(post.chol, k_star, lower=True)
    mean = v @ post.alpha + post.mean
    var = jnp.maximum(post.amplitude - v @ v, 1e-12)  # k(x, x) = amplitude
    return mean, var

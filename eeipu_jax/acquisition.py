"""Acquisition math: pure functions of one candidate's posterior, vmapped over batches.

This module owns the formulas the methods score candidates with, and the
:class:`AcqState` an ``ask`` hands to a method's ``score``:

* closed-form expected improvement and a stable ``log EI``
  (:func:`log_expected_improvement`, finite where EI underflows);
* the Pandora's-box Gittins index (:func:`gittins_index`, Xie et al.,
  NeurIPS 2024, arXiv 2406.20062);
* the upper confidence bound (:func:`upper_confidence_bound`);
* the two pieces every EI-based method combines: :func:`log_ei` (log EI of
  the objective GP at ``x``) and :func:`log_inverse_cost` (``ln E[1/C_j(x)]``
  under the cost GPs, the first ``j`` stages priced at ``epsilon``).

The methods themselves (which pieces, which cost model, which state) are
plug-ins: :mod:`eeipu_jax.methods`. Scores are **logarithms** of the paper's
acquisition values where they are products (EI times a power of the
expected inverse cost), so nothing underflows.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr

from eeipu_jax import costs as costlib
from eeipu_jax import gp as gplib

__all__ = [
    "AcqState",
    "log_h",
    "expected_improvement",
    "log_expected_improvement",
    "gittins_index",
    "upper_confidence_bound",
    "log_ei",
    "log_inverse_cost",
    "log_expected_cost",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# ------------------------------------------------------------ EI (closed form)
def log_h(u):
    """``log(phi(u) + u * Phi(u))``, accurate for all real ``u``.

    ``EI = sigma * h((mu - best) / sigma)``. Three regimes:

    * ``u > -1``: direct formula (``h >= h(-1) = 0.083``).
    * ``-7 < u <= -1``: ``h(u) = phi(u) (1 - t R(t))`` with ``t = -u`` and the
      Mills ratio ``R(t) = Phi(-t) / phi(t)`` from ``log_ndtr`` (no
      cancellation of ``phi`` against ``u Phi``).
    * ``u <= -7``: the asymptotic series
      ``1 - t R(t) = t^-2 (1 - 3 t^-2 + 15 t^-4 - 105 t^-6 + 945 t^-8 - 10395 t^-10)``,
      whose truncation error there is below 1e-5 relative (float32 loses
      more than that in the Mills-ratio form beyond t = 7).

    Gradients are finite everywhere (the unused branches see safe inputs).
    """
    u = jnp.asarray(u)
    direct_u = jnp.maximum(u, -1.0)
    direct = jnp.log(jnp.exp(-0.5 * direct_u**2 - _LOG_SQRT_2PI) + direct_u * ndtr(direct_u))

    t = -jnp.minimum(u, -1.0)  # >= 1
    t_mid = jnp.minimum(t, 7.0)
    log_phi_mid = -0.5 * t_mid * t_mid - _LOG_SQRT_2PI
    one_minus_tr = -jnp.expm1(jnp.log(t_mid) + log_ndtr(-t_mid) - log_phi_mid)
    mid = log_phi_mid + jnp.log(jnp.maximum(one_minus_tr, 1e-30))

    t_far = jnp.maximum(t, 7.0)
    w = 1.0 / (t_far * t_far)
    series = w * (1.0 - 3.0 * w * (1.0 - 5.0 * w * (1.0 - 7.0 * w * (1.0 - 9.0 * w * (1.0 - 11.0 * w)))))
    log_phi_far = -0.5 * t_far * t_far - _LOG_SQRT_2PI
    far = log_phi_far + jnp.log(series)

    return jnp.where(u > -1.0, direct, jnp.where(u > -7.0, mid, far))


def expected_improvement(mean, var, best, xi=0.0):
    """Closed-form EI for maximization: ``E[max(f - best - xi, 0)]``, ``f ~ N(mean, var)``."""
    sigma = jnp.sqrt(jnp.maximum(var, 1e-12))
    u = (mean - best - xi) / sigma
    return sigma * (jnp.exp(-0.5 * u * u - _LOG_SQRT_2PI) + u * ndtr(u))


def log_expected_improvement(mean, var, best, xi=0.0):
    """``log EI``, finite even where EI underflows to 0 (see :func:`log_h`)."""
    sigma = jnp.sqrt(jnp.maximum(var, 1e-12))
    return jnp.log(sigma) + log_h((mean - best - xi) / sigma)


# --------------------------------------------------------- Gittins index
def _inv_log_h(t, newton_steps: int = 12):
    """``u`` with ``log h(u) = t`` (``h(u) = phi(u) + u Phi(u)``), by Newton's method.

    ``log h`` is increasing and concave (``h`` is log-concave: the integral of
    the log-concave ``Phi``), so Newton iterates started left of the root
    increase monotonically to it without overshooting. The start is a lower
    bound of the root: ``h(u) <= u + phi(0)`` for ``u >= 0`` gives
    ``e^t - 0.4`` when ``e^t >= 0.4``; ``h(u) <= phi(u)`` for ``u <= 0`` gives
    ``-sqrt(-2 (t + ln sqrt(2 pi)))`` when ``e^t < phi(0)``; 0 in between.
    A fixed number of steps keeps the function vmappable and jittable.

    Gradients are implicit: the iterates are held constant and one last
    Newton step carries ``du/dt = 1 / (d log h / du) = h(u) / Phi(u)`` (the
    implicit-function derivative at the root) into reverse mode.
    """
    t = jnp.asarray(t)
    e = jnp.exp(jnp.minimum(t, 80.0))
    neg = -jnp.sqrt(jnp.maximum(-2.0 * (t + _LOG_SQRT_2PI), 0.0))
    u0 = jnp.where(e >= 0.4, e - 0.4, jnp.where(t < -_LOG_SQRT_2PI, neg, 0.0))
    u0 = jax.lax.stop_gradient(u0)
    ts = jax.lax.stop_gradient(t)

    def step(u, _):
        lh = log_h(u)
        # u += (t - log h(u)) / (d log h / du), with d log h / du = Phi(u) / h(u)
        return u + (ts - lh) * jnp.exp(lh - log_ndtr(u)), None

    u, _ = jax.lax.scan(step, u0, None, length=newton_steps)
    u = jax.lax.stop_gradient(u)
    lh = log_h(u)
    return u + (t - jax.lax.stop_gradient(lh)) * jax.lax.stop_gradient(jnp.exp(lh - log_ndtr(u)))


def gittins_index(mean, var, log_cost):
    """Pandora's-box Gittins index of ``f ~ N(mean, var)`` at cost ``exp(log_cost)``.

    The ``g`` that solves ``EI(g) = E[max(f - g, 0)] = exp(log_cost)``
    (Xie et al., NeurIPS 2024, arXiv 2406.20062, eq. for ``alpha_PBGI``), for
    maximization. With ``s = sqrt(var)`` and ``EI(g) = s h((mean - g) / s)``,
    ``g = mean - s h^{-1}(exp(log_cost) / s)``, computed in log space so any
    cost, from ``1e-30`` to ``1e30`` of the objective's scale, gives a finite
    index. The index decreases as the cost grows and increases with ``mean``
    and (for a fixed cost) with ``s``.

    Args:
        mean, var: posterior mean and variance of ``f``.
        log_cost: ``ln`` of the right-hand side, ``lambda * c`` (same units as
            the objective).

    Returns:
        ``g`` (differentiable in all three inputs).
    """
    sigma = jnp.sqrt(jnp.maximum(var, 1e-12))
    u = _inv_log_h(log_cost - jnp.log(sigma))
    return mean - sigma * u


# ------------------------------------------------------------- shared state
class AcqState(NamedTuple):
    """Everything an acquisition needs at one ``ask`` (a pytree).

    Attributes:
        obj: objective GP posterior (standardized targets).
        best: best standardized objective observed.
        costs: stage (or total) cost GP posteriors, stacked over a leading axis,
            or ``None`` for methods without a cost model.
        cost_mean, cost_std: standardization of ``ln c`` per cost GP.
        z: ``(M, K)`` normal base samples for the cost Monte Carlo.
        log_epsilon: ``ln`` of the price of a memoized stage.
        eta: cost-cooling exponent.
        extra: what the method's ``prepare`` hook computed for this ask
            (``None`` if it has none).
    """

    obj: gplib.Posterior
    best: Any
    costs: Any
    cost_mean: Any
    cost_std: Any
    z: Any
    log_epsilon: Any
    eta: Any
    extra: Any = None


def log_ei(x, state: AcqState):
    """``ln EI(x)`` of the objective GP against the incumbent ``state.best``
    (standardized scale)."""
    m, v = gplib.predict(state.obj, x)
    return log_expected_improvement(m, v, state.best)


def log_inverse_cost(x, memo_depth, state: AcqState):
    """``ln E[1 / C_j(x)]`` under the cost GPs (Monte Carlo over ``state.z``,
    common random numbers), the first ``memo_depth`` stages priced at
    ``epsilon`` (arXiv 2411.03731)."""
    mu, sigma = costlib.predict_log_cost(state.costs, state.cost_mean, state.cost_std, x)
    return costlib.log_expected_inverse_cost(mu, sigma, memo_depth, state.z, state.log_epsilon)


def log_expected_cost(x, memo_depth, state: AcqState):
    """``ln E[C_j(x)]`` under the cost GPs (log-normal means, the first
    ``memo_depth`` stages priced at ``epsilon``)."""
    mu, sigma = costlib.predict_log_cost(state.costs, state.cost_mean, state.cost_std, x)
    return costlib.log_expected_cost(mu, sigma, memo_depth, state.log_epsilon)


def upper_confidence_bound(mean, var, beta):
    """``mean + sqrt(beta * var)`` (GP-UCB, Srinivas et al. 2010)."""
    return mean + jnp.sqrt(beta * var)

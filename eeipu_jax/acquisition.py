"""Acquisition functions: pure functions of one candidate, vmapped over batches.

Every acquisition has the same signature::

    score(x, memo_depth, state: AcqState) -> log acquisition value

``x`` is one unit-cube point, ``memo_depth`` the number of leading stages the
candidate would restore from the cache (0 for a fresh run), and ``state`` the
fitted surrogates of one ``ask``. Scores are **logarithms** of the paper's
acquisition values, so products become sums and nothing underflows:

========== ======================================================= ==============
method     acquisition (paper form)                                 cost model
========== ======================================================= ==============
ei         EI(x)                                                    none
eips       EI(x) * E[1/C(x)]                (Snoek et al. 2012)     one GP, total
carbo      EI(x) * E[1/C(x)]^eta            (Lee et al. 2020)       one GP, total
ms_carbo   EI(x) * E[1/sum_k C_k(x)]^eta    (no memoization)        K stage GPs
eeipu      EI(x) * E[1/C_j(x)]^eta          (arXiv 2411.03731)      K stage GPs
pbgi       g with EI(x; g) = lambda E[C_j(x)] / c_bar               K stage GPs
           (Gittins index, arXiv 2406.20062; not in log space)
ucb        mu(x) + sqrt(beta) sigma(x)      (not in log space)      none
========== ======================================================= ==============

``eta`` is the cost-cooling exponent (:func:`eeipu_jax.costs.cooling_eta`);
``C_j`` prices the first ``j`` stages at ``epsilon`` (EEIPU's memoization).

``pbgi`` is the Pandora's-box Gittins index of Xie, Astudillo, Frazier,
Scully and Terenin (NeurIPS 2024, "Cost-aware Bayesian Optimization via the
Pandora's Box Gittins Index", arXiv 2406.20062) made memoization-aware: the
cost of a candidate with memo depth ``j`` is ``E[C_j]``
(:func:`eeipu_jax.costs.log_expected_cost`). Its value is an objective level
(on the standardized scale), not a log value: where EEIPU multiplies EI by a
power of the inverse cost, the index trades cost against improvement
additively, so a 20x cheaper candidate gains only a few tenths of a standard
deviation of index (``g ~ m + s sqrt(2 ln(s / (lambda C)))`` in the tail)
instead of winning by a factor of 20. ``lambda`` is scale-free: the objective
is standardized, costs are divided by ``c_bar``, the mean cost of a full trial
observed so far; it decays as in the paper's PBGI-D (see
:class:`eeipu_jax.loop.GittinsState`).

Adding an acquisition is one function and one :func:`register` call; the
registry entry says which cost model it needs and whether it proposes
memoized prefixes. Any registered name with the suffix ``_nomemo`` resolves
to the same method with memoization off (:func:`get_method`):
``eeipu_nomemo`` is the paper's Q = 0 ablation, scored exactly like EEIPU
at memo depth 0 and never proposing a cached prefix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr

from eeipu_jax import costs as costlib
from eeipu_jax import gp as gplib

__all__ = [
    "AcqState",
    "Method",
    "register",
    "get_method",
    "METHODS",
    "NOMEMO_SUFFIX",
    "log_h",
    "expected_improvement",
    "log_expected_improvement",
    "gittins_index",
    "GittinsParams",
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


class GittinsParams(NamedTuple):
    """``AcqState.extra`` of :func:`pbgi`: ``ln lambda`` and ``ln c_bar`` (the
    mean observed cost of a full trial, which makes ``lambda`` scale-free)."""

    log_lambda: Any
    log_cost_scale: Any


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
        extra: method-specific values (e.g. UCB's beta).
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


def _log_ei(x, state: AcqState):
    m, v = gplib.predict(state.obj, x)
    return log_expected_improvement(m, v, state.best)


def _log_inv_cost(x, memo_depth, state: AcqState):
    mu, sigma = costlib.predict_log_cost(state.costs, state.cost_mean, state.cost_std, x)
    return costlib.log_expected_inverse_cost(mu, sigma, memo_depth, state.z, state.log_epsilon)


# ------------------------------------------------------------- acquisitions
def ei(x, memo_depth, state: AcqState):
    """Expected improvement (cost-unaware)."""
    del memo_depth
    return _log_ei(x, state)


def eips(x, memo_depth, state: AcqState):
    """EI per unit cost, ``EI * E[1/C]``, no cooling (Snoek et al. 2012)."""
    del memo_depth
    return _log_ei(x, state) + _log_inv_cost(x, 0, state)


def carbo(x, memo_depth, state: AcqState):
    """Cost-cooled EI per cost, ``EI * E[1/C]^eta`` (Lee et al. 2020)."""
    del memo_depth
    return _log_ei(x, state) + state.eta * _log_inv_cost(x, 0, state)


def ms_carbo(x, memo_depth, state: AcqState):
    """Stage-wise cost GPs + cooling, without memoization (the authors' ablation)."""
    del memo_depth
    return _log_ei(x, state) + state.eta * _log_inv_cost(x, 0, state)


def eeipu(x, memo_depth, state: AcqState):
    """EEIPU: ``EI * E[1/C_j]^eta`` with the first ``j`` stages priced at epsilon
    (arXiv 2411.03731)."""
    return _log_ei(x, state) + state.eta * _log_inv_cost(x, memo_depth, state)


def pbgi(x, memo_depth, state: AcqState):
    """Memoization-aware Pandora's-box Gittins index: the ``g`` with
    ``EI(x; g) = lambda * E[C_j(x)] / c_bar`` (Xie et al. 2024, arXiv
    2406.20062), ``C_j`` pricing the first ``j`` stages at epsilon
    (arXiv 2411.03731). ``state.extra`` is a :class:`GittinsParams`. An
    objective level on the standardized scale (not a log value)."""
    m, v = gplib.predict(state.obj, x)
    mu, sigma = costlib.predict_log_cost(state.costs, state.cost_mean, state.cost_std, x)
    log_c = costlib.log_expected_cost(mu, sigma, memo_depth, state.log_epsilon)
    p = state.extra
    return gittins_index(m, v, p.log_lambda + log_c - p.log_cost_scale)


def ucb(x, memo_depth, state: AcqState):
    """Upper confidence bound ``mu + sqrt(beta) * sigma`` on the standardized
    scale (``state.extra`` holds beta). Not a log value; only compared with
    itself."""
    del memo_depth
    m, v = gplib.predict(state.obj, x)
    return m + jnp.sqrt(state.extra * v)


# ----------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Method:
    """A registered optimization method.

    Attributes:
        name: registry key.
        score: the acquisition, ``score(x, memo_depth, AcqState) -> float``.
        cost_model: ``"none"``, ``"total"`` (one GP on the summed cost),
            ``"stages"`` (one GP per stage) or ``"prefix_objective"`` (no cost
            GP; one objective GP per stage prefix, whose warm-start
            parameters live in the state's cost-model slots; see
            :mod:`eeipu_jax.msbo`).
        memoize: whether the method proposes memoized-prefix candidates (and
            the driver restores cached stages for it).
        description: one line for ``--help`` and tables.
        gittins: the acquisition is a Gittins index whose ``lambda`` lives in
            the BO state (:class:`eeipu_jax.loop.GittinsState`): ``ask``
            passes it in ``AcqState.extra`` as :class:`GittinsParams` and
            decays it (PBGI-D).
        propose: optional ``propose(key, state, config) -> (Proposal, state)``
            (called with a ``pending=`` keyword, a
            :class:`eeipu_jax.loop.Pending`, when the caller has running
            trials) replacing the default BO step (fit surrogates, score one candidate
            batch with ``score``, refine) for methods that search differently
            (:mod:`eeipu_jax.lambo`, :mod:`eeipu_jax.msbo`). It runs inside the
            jitted ``ask``, so it must be traceable with fixed shapes.
    """

    name: str
    score: Callable
    cost_model: str = "none"
    memoize: bool = False
    description: str = ""
    propose: Callable | None = None
    gittins: bool = False

    def __post_init__(self):
        if self.cost_model not in ("none", "total", "stages", "prefix_objective"):
            raise ValueError(f"Method {self.name!r}: unknown cost_model {self.cost_model!r}")


METHODS: dict[str, Method] = {}


def register(method: Method, *, overwrite: bool = False) -> Method:
    """Add a method to the registry (``overwrite=True`` to replace one)."""
    key = method.name.lower()
    if key in METHODS and not overwrite:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[key] = method
    return method


#: A method name with this suffix is the registered method with memoization off.
NOMEMO_SUFFIX = "_nomemo"


def get_method(name: str) -> Method:
    """Look a method up by (case-insensitive) name, with a clear error.

    ``<name>_nomemo`` is the registered ``<name>`` with ``memoize=False``
    (same acquisition, cost model and search; only the memoized-prefix
    candidates are left out), named ``<name>_nomemo``.
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string, got {name!r}")
    key = name.lower()
    if key in METHODS:
        return METHODS[key]
    base = key.removesuffix(NOMEMO_SUFFIX)
    if base != key and base in METHODS:
        m = METHODS[base]
        return dataclasses.replace(m, name=key, memoize=False,
                                   description=f"{m.description}, memoization off" if m.memoize else m.description)
    raise ValueError(
        f"unknown method {name!r}; registered: {sorted(METHODS)} "
        f"(add {NOMEMO_SUFFIX!r} to any of them to turn memoization off)"
    )


register(Method("ei", ei, "none", False, "expected improvement"))
register(Method("eips", eips, "total", False, "EI per unit cost (one total-cost GP)"))
register(Method("carbo", carbo, "total", False, "cost-cooled EI per cost (one total-cost GP)"))
register(Method("ms_carbo", ms_carbo, "stages", False, "stage-wise cost GPs + cooling, no memoization"))
register(Method("eeipu", eeipu, "stages", True, "memoization-aware EI per unit cost with cooling"))
register(Method("pbgi", pbgi, "stages", True, "memoization-aware Pandora's-box Gittins index (decaying lambda)",
                gittins=True))

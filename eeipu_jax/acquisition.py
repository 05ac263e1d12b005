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
ucb        mu(x) + sqrt(beta) sigma(x)      (not in log space)      none
========== ======================================================= ==============

``eta`` is the cost-cooling exponent (:func:`eeipu_jax.costs.cooling_eta`);
``C_j`` prices the first ``j`` stages at ``epsilon`` (EEIPU's memoization).

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
        propose: optional ``propose(key, state, config) -> (Proposal, state)``
            replacing the default BO step (fit surrogates, score one candidate
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

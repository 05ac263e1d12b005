"""PBGI: the memoization-aware Pandora's-box Gittins index, with PBGI-D's decaying lambda.

Xie, Astudillo, Frazier, Scully and Terenin (NeurIPS 2024, "Cost-aware
Bayesian Optimization via the Pandora's Box Gittins Index", arXiv
2406.20062) score a candidate by the ``g`` that solves
``EI(x; g) = lambda * c(x)``. Here the cost is EEIPU's memoization-aware
``E[C_j(x)]`` (the first ``j`` stages priced at ``epsilon``, arXiv
2411.03731), divided by ``c_bar``, the mean cost of a full trial observed so
far, and the objective is standardized, so ``lambda`` is scale-free.

The index is an objective level (on the standardized scale), not a log
value: where EEIPU multiplies EI by a power of the inverse cost, the index
trades cost against improvement additively, so a 20x cheaper candidate gains
only a few tenths of a standard deviation of index
(``g ~ m + s sqrt(2 ln(s / (lambda C)))`` in the tail) instead of winning by
a factor of 20 (docs/lock_in.md).

**PBGI-D.** ``lambda`` starts at ``params["lambda0"]`` (0.1, the paper's)
and is divided by ``params["decay"]`` (2) each time the index of the chosen
point falls below the best observed value, that point's own observation
included. The check for proposal ``t`` is made at ask ``t + 1``, once its
observation is in (``prepare``); the chosen index is kept by ``update``.
Because the objective is rescaled as data grow
(:func:`eeipu_jax.gp.scale_free`), the index is kept on the scale of ask
``t`` (relative to the first finished trial and divided by ``last_scale``)
and the best observed value is brought to that scale. With running trials
(a parallel driver) the best *told* value is compared, which may not yet
include the previous proposal's result.

This module uses only the public method protocol (:mod:`eeipu_jax.methods`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from eeipu_jax import acquisition as acq
from eeipu_jax import gp as gplib
from eeipu_jax.methods import Method, register
from eeipu_jax.state import effective_objective, scale_free_objective

__all__ = ["GittinsState", "GittinsExtra", "score", "init", "prepare", "update", "METHOD"]


class GittinsState(NamedTuple):
    """PBGI-D's state: ``lambda`` and the last proposal's index, for the decay check."""

    lam: Float[Array, ""]  # current lambda (scale-free)
    last_index: Float[Array, ""]  # the last proposal's index, scale-free units of its ask
    last_scale: Float[Array, ""]  # the scale of those units (scale_free's ``scale``)
    pending: Bool[Array, ""]  # a Gittins proposal awaits its decay check
    n_decays: Int[Array, ""]  # how many times lambda was divided


class GittinsExtra(NamedTuple):
    """``AcqState.extra`` of one ask: ``ln lambda`` and ``ln c_bar``."""

    log_lambda: Any
    log_cost_scale: Any


def score(x, memo_depth, state: acq.AcqState, params):
    """The index ``g`` with ``EI(x; g) = lambda * E[C_j(x)] / c_bar``."""
    del params
    m, v = gplib.predict(state.obj, x)
    e = state.extra
    return acq.gittins_index(m, v, e.log_lambda + acq.log_expected_cost(x, memo_depth, state) - e.log_cost_scale)


def init(config, params) -> GittinsState:
    del config
    f = jnp.float32
    return GittinsState(lam=jnp.asarray(params["lambda0"], f), last_index=jnp.asarray(0.0, f),
                        last_scale=jnp.asarray(1.0, f), pending=jnp.asarray(False),
                        n_decays=jnp.asarray(0, jnp.int32))


def _finished_scale_free(state):
    """``(best, scale)``: the best finished objective on the scale-free scale
    of :func:`eeipu_jax.state.scaled_objective` and that scale."""
    u, ok, scale = scale_free_objective(state)
    return jnp.max(jnp.where(ok, u, -jnp.inf)), scale


def prepare(acq_state: acq.AcqState, state, config):
    """PBGI-D's decay check for the previous proposal, then this ask's
    ``lambda`` and cost scale (``AcqState.extra``)."""
    del config
    g = state.method_state
    best_u, scale = _finished_scale_free(state)
    # The previous proposal's index against the best observed value (which
    # now includes its observation), both on the previous ask's scale.
    fired = g.pending & (best_u * (scale / g.last_scale) > g.last_index)
    lam = jnp.where(fired, g.lam / state.params.method["decay"], g.lam)
    g = g._replace(lam=lam, pending=jnp.asarray(False), n_decays=g.n_decays + fired.astype(jnp.int32))
    # lambda is scale-free: costs are divided by the mean observed cost of a
    # full trial (stage costs are full compute costs, memoized or not).
    valid = jnp.arange(state.X.shape[0]) < state.n
    total = jnp.sum(state.stage_costs, axis=1)
    ok = valid & jnp.isfinite(total) & (total > 0)
    mean_cost = jnp.sum(jnp.where(ok, total, 0.0)) / jnp.maximum(jnp.sum(ok), 1)
    mean_cost = jnp.where(jnp.any(ok), mean_cost, 1.0)
    extra = GittinsExtra(log_lambda=jnp.log(lam), log_cost_scale=jnp.log(mean_cost))
    return acq_state._replace(extra=extra), g


def update(g: GittinsState, proposal, acq_state, state, config) -> GittinsState:
    """Keep the chosen index (standardized scale of this ask) on the
    scale-free scale, for the next ask's decay check."""
    del acq_state, config
    valid, y_eff = effective_objective(state)
    _, mean, std = gplib.standardize(y_eff, valid)
    _, scale = _finished_scale_free(state)
    index = proposal.score
    ok = jnp.isfinite(index)
    return g._replace(
        last_index=jnp.where(ok, mean + std * index, g.last_index),
        last_scale=jnp.where(ok, scale, g.last_scale),
        pending=ok,
    )


def _check(params) -> None:
    if not params["lambda0"] > 0:
        raise ValueError(f"pbgi: lambda0 must be > 0, got {params['lambda0']!r}")
    if not params["decay"] >= 1:
        raise ValueError(f"pbgi: decay must be >= 1, got {params['decay']!r}")


METHOD = register(Method(
    "pbgi", score, "stages", True, params={"lambda0": 0.1, "decay": 2.0},
    description="memoization-aware Pandora's-box Gittins index (decaying lambda)",
    init=init, prepare=prepare, update=update, check=_check,
))

"""MS_BO: multi-stage (cascade) Bayesian optimization with stage-wise prefix surrogates.

Cascade BO (Kusakawa et al., "Bayesian optimization for cascade-type multistage
processes", 2022) chooses a multi-stage process's parameters one stage at a
time, each stage's choice guided by a surrogate of what that stage's
parameters lead to. Pipelines here expose no measurable intermediate quality
(only the final objective and stage costs), so the stage-wise surrogates are
GPs of the final objective on growing prefixes of the hyperparameters:

* ``GP_k`` models ``y`` as a function of the columns of stages ``0..k`` only
  (the later stages act as noise; ``GP_{K-1}`` is the ordinary full GP). The
  ``K`` GPs are fitted in one vmapped call, warm-started from the state's
  cost-model slots (this method fits no cost GP).
* A proposal is built stage by stage: with stages ``0..k-1`` fixed to the
  values already chosen, ``n_random`` quasi-random values of stage ``k``'s
  columns (plus ``n_local`` Gaussian perturbations of the best observation's
  stage-``k`` values, when ``n_local > 0``) are scored by ``log EI`` under
  ``GP_k`` against ``GP_k``'s incumbent (its largest posterior mean at an
  observed prefix), and the best is kept. Candidates are snapped to
  representable points (integer/categorical columns) before they are
  scored, so the chosen score is that of the point that runs.

The method is cost-unaware and never memoizes; every trial is charged in full,
as the EEIPU paper's baselines were. Differences from the EEIPU authors' code,
on purpose: their "MS_BO" fitted one GP on the last stage's columns and drew
every earlier stage uniformly at random (with the same draw for every trial of
an iteration); this module is the cascade algorithm the paper names. Everything
is jittable with fixed shapes, so MS_BO runs under every driver. This module
uses only the public method protocol (:mod:`eeipu_jax.methods`) and the
public surrogate functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from eeipu_jax import acquisition as acqlib
from eeipu_jax import candidates as candlib
from eeipu_jax import gp as gplib
from eeipu_jax.methods import Method, register
from eeipu_jax.state import Proposal, effective_objective
from eeipu_jax.surrogates import committed_cost, cooling, fantasize, surrogates

__all__ = ["prefix_input_masks", "fit_prefix_gps", "propose", "METHOD"]


def prefix_input_masks(stage_of_column, n_stages: int) -> np.ndarray:
    """``(K, d)`` float masks: row ``k`` selects the columns of stages ``0..k``."""
    soc = np.asarray(stage_of_column)
    return (soc[None, :] <= np.arange(n_stages)[:, None]).astype(np.float32)


def fit_prefix_gps(key, state, config, pending=None):
    """Fit (on the schedule of :func:`eeipu_jax.surrogates.surrogates`) and condition
    the ``K`` prefix GPs of the objective.

    Returns:
        ``(posts, best, state)``: stacked posteriors, per GP the incumbent on
        its standardized scale (the largest posterior mean at an observed
        prefix: for ``k < K - 1`` the GP averages over the later stages, so
        the best raw observation would be an over-optimistic target), and the
        state with the hyperparameters and factors updated. With ``pending``
        (:class:`eeipu_jax.state.Pending`), every prefix GP is the
        kriging-believer fantasy (:func:`eeipu_jax.surrogates.fantasize`) and
        the incumbents include the pending points' means.
    """
    K = config.n_stages
    valid, y_eff = effective_objective(state)
    targets = jnp.tile(y_eff[:, None], (1, K))
    masks = jnp.tile(valid[:, None], (1, K))
    input_masks = jnp.asarray(prefix_input_masks(config.stage_of_column, K), state.X.dtype)
    params, posts, mean, std, state = surrogates(key, state, config, state.gp_params, targets, masks,
                                                 input_masks, y_eff)
    X, rows = state.X, valid
    if pending is not None:
        posts, _ = fantasize(params, posts, state.chol, state.X, targets, masks, input_masks, mean, std,
                             config.gp, pending)
        X, rows = jnp.concatenate([X, pending.x.astype(X.dtype)]), jnp.concatenate([valid, pending.mask])

    def incumbent(post):  # best posterior mean at an observed prefix (the noisy-EI plug-in)
        m, _ = jax.vmap(lambda x: gplib.predict(post, x))(X)
        return jnp.max(jnp.where(rows, m, -jnp.inf))

    return posts, jax.vmap(incumbent)(posts), state._replace(gp_params=params)


def propose(key, state, config, pending=None):
    """One MS_BO step (the ``propose`` hook of the registered method).

    With ``pending`` (running trials), the K prefix GPs are kriging-believer
    fantasies (:func:`fit_prefix_gps`) and the reported cooling ``eta``
    counts their expected cost as spent; MS_BO never memoizes.
    """
    K, d = config.n_stages, config.dim
    soc = np.asarray(config.stage_of_column)
    k_fit, k_cand, k_loc = jax.random.split(key, 3)
    posts, best, new_state = fit_prefix_gps(k_fit, state, config, pending)
    valid, y_eff = effective_objective(state)
    incumbent = state.X[jnp.argmax(jnp.where(valid, y_eff, -jnp.inf))]
    x = incumbent
    score = jnp.asarray(-jnp.inf, state.X.dtype)
    for k in range(K):  # static: one block of the program per stage
        cols = jnp.asarray(soc == k)
        cand = candlib.quasi_random(jax.random.fold_in(k_cand, k), config.n_random, d, state.X.dtype)
        if config.n_local > 0:
            noise = 0.1 * jax.random.normal(jax.random.fold_in(k_loc, k), (config.n_local, d), state.X.dtype)
            cand = jnp.concatenate([cand, jnp.clip(incumbent[None, :] + noise, 0.0, 1.0)])
        cand = jnp.where(cols[None, :], cand, x[None, :])  # earlier stages fixed; later ones unseen by GP_k
        cand = config.snap(cand)  # score the points that would run (integer/categorical columns)
        post_k = jax.tree.map(lambda a: a[k], posts)

        def log_ei(z, post_k=post_k, best_k=best[k]):
            m, v = gplib.predict(post_k, z)
            return acqlib.log_expected_improvement(m, v, best_k)

        vals = jax.vmap(log_ei)(cand)
        vals = jnp.where(jnp.isfinite(vals), vals, -jnp.inf)
        i = jnp.argmax(vals)
        x, score = cand[i], vals[i]
    spent = state.spent if pending is None else state.spent + committed_cost(state, config, pending)
    prop = Proposal(
        x=x,
        memo_depth=jnp.asarray(0, jnp.int32),
        source=jnp.asarray(-1, jnp.int32),
        score=score,
        eta=cooling(state, spent),
        fallback=jnp.asarray(False),
    )
    return prop, new_state._replace(n_bo=state.n_bo + 1)


def n_prefix_gps(config) -> int:
    """The GPs MS_BO keeps in the state: one per stage prefix."""
    return config.n_stages


METHOD = register(Method(
    "ms_bo", None, "none", False,
    description="cascade BO: stage-by-stage choice, each stage by EI of a GP on the hyperparameter prefix",
    propose=propose, surrogates=n_prefix_gps,
))

"""The surrogates of one ``ask``: fitting schedule, kriging-believer fantasies, committed cost.

This module owns the generic surrogate work of the BO step, for any method:

* :func:`surrogates` fits (on schedule) and conditions a stack of GPs that
  share inputs (the objective GP and the stage- or total-cost GPs, or a
  method's own GPs, e.g. MS_BO's prefix GPs) in one vmapped call;
* :func:`fantasize` conditions them on running trials (kriging believer);
* :func:`committed_cost` prices the running trials' remaining stages;
* :func:`acquisition_state` does all of it for a method's ``cost_model`` and
  returns the :class:`eeipu_jax.acquisition.AcqState` its score reads;
* :func:`cooling` is the cost-cooling exponent ``eta`` of
  :class:`eeipu_jax.config.Params`.

**Surrogate schedule.** While fewer than ``BOConfig.refit_hold_from`` (256)
trials have been told, the GPs' hyperparameters are refitted at every ask
(warm: ``GPConfig.steps`` Adam steps from the current values; cold, every
``refit_every``-th refit: ``GPConfig.cold_steps`` from fresh starts,
competing with the current values). From then on a refit happens only when
the trials told have grown by ``Params.refit_growth`` (10%, at least one
trial) since the last one, so refits become rarer as a study grows and their
average cost per trial stays bounded: with hundreds of trials, a tenth more
data moves the hyperparameters little, while on the short runs of the
paper's benchmarks holding them cost quality (docs/bo_step_profile.md). A
refit sees at most ``fit_rows`` rows (the best quarter by objective and a
uniform random sample of the rest), so its cost is bounded too. The
posterior always conditions on every row. Between refits the
hyperparameters are held and the Cholesky factor of each GP's covariance is
kept in the state (``BOState.chol``): an ``ask`` appends the rows told since
the previous one (O(N^2) each, :func:`eeipu_jax.gp.append_rows`) instead of
factorizing anew (O(N^3)). A factor depends only on the inputs, the row
masks and the hyperparameters, never on the targets; targets enter at each
ask through one triangular solve. ``refit_growth = 0`` or
``refit_hold_from`` beyond the study's size refits at every ask.

**Pending trials.** A parallel driver asks while other trials are still
running (:class:`eeipu_jax.state.Pending`). *Objective fantasy: kriging
believer* (Ginsbourger, Le Riche and Carraro 2010): each pending row enters
the objective GP with the GP's own posterior mean at its ``x`` as target, so
the mean is unchanged everywhere, the variance near a running trial falls to
the noise level, and the believed values join the incumbent: EI at a running
point is ~0 and the next proposal moves elsewhere. Chosen over the constant
liar (a lie level shifts the mean the whole batch sees) and over Monte Carlo
fantasies (one posterior per sample, inside a step whose cost should not
grow with ``P``). The rows enter a copy of the kept factor (O(N^2 P), no new
factorization); the hyperparameters are never refitted for pending rows and
the cost GPs see told trials only. *Committed budget*: the cooling uses
``spent`` plus the expected cost of the pending trials' remaining stages
(:func:`committed_cost`), so ``eta`` falls as soon as budget is committed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from eeipu_jax import acquisition as acqlib
from eeipu_jax import costs as costlib
from eeipu_jax import gp as gplib
from eeipu_jax.config import BOConfig
from eeipu_jax.state import BOState, Pending, effective_objective, grow_factors

__all__ = ["surrogates", "refit_due", "fantasize", "committed_cost", "mean_stage_costs", "acquisition_state",
           "cost_data", "cooling"]


def cooling(state: BOState, spent=None):
    """The cost-cooling exponent ``eta`` of this ask (see :mod:`eeipu_jax.config`):
    ``eta_end + (eta_start - eta_end) * (B - spent) / (B - b0)``, the ratio
    clipped to ``[0, 1]``.

    Args:
        state: the state (its budget, ``b0`` and params).
        spent: the budget counted as spent (default ``state.spent``; a
            parallel ask adds the running trials' :func:`committed_cost`).
    """
    p = state.params
    r = costlib.cooling_eta(state.budget, state.spent if spent is None else spent, state.b0)
    return p.eta_end + (p.eta_start - p.eta_end) * r


def cost_data(state: BOState, config: BOConfig, valid):
    """Targets, row masks and input masks of the method's cost model(s)."""
    kind = config.method_def.cost_model
    if kind == "stages":
        log_c, ok = costlib.log_costs(state.stage_costs, jnp.ones_like(state.stage_costs, bool))
        input_masks = costlib.stage_input_masks(config.stage_of_column, config.n_stages, config.cost_inputs)
    else:  # "total"
        total = jnp.sum(state.stage_costs, axis=1, keepdims=True)  # NaN if any stage unknown
        log_c, ok = costlib.log_costs(total, jnp.ones_like(total, bool))
        input_masks = np.ones((1, config.dim), np.float32)
    return log_c, ok & valid[:, None], jnp.asarray(input_masks, state.X.dtype)



def refit_due(state: BOState, config: BOConfig):
    """Whether this ask refits the hyperparameters: never fitted yet, a new
    trial told while fewer than ``refit_hold_from`` are, or the trials have grown by
    ``params.refit_growth`` (at least one) since the last refit (every ask when
    ``refit_growth`` is 0)."""
    growth = state.params.refit_growth
    need = jnp.maximum(jnp.ceil(growth * state.n_fit.astype(jnp.float32)), 1.0)
    new = state.n - state.n_fit
    grown = new.astype(jnp.float32) >= need
    return (growth == 0) | (state.n_fit == 0) | ((state.n < config.refit_hold_from) & (new > 0)) | grown


def surrogates(key, state: BOState, config: BOConfig, init, targets, masks, input_masks, priority):
    """Fit (on schedule) and condition the method's stacked GPs.

    On a refit ask (:func:`refit_due`) the hyperparameters are fitted, warm
    or cold (``refit_every``), on at most ``fit_rows`` rows
    (:func:`eeipu_jax.gp.fit_rows`), and the factors of all rows are
    computed anew. Otherwise the hyperparameters are held and the rows told
    since the last ask are appended to the kept factors
    (:func:`eeipu_jax.gp.append_rows`, O(N^2) a row); the factors are
    computed anew only when the state holds none (``n_chol == 0``, e.g. a
    checkpoint written before they were kept), when rows were removed, or
    when more than a third of the capacity is new (a new factorization is
    then cheaper). Either way the posterior conditions on every row.

    Args:
        key: PRNG key (restarts and the fitting subset).
        state: the current state (``X``, ``n`` and the kept factors).
        config: static settings.
        init: current hyperparameters, stacked over the M GPs.
        targets, masks: ``(N, M)`` raw targets and the rows each GP uses.
        input_masks: ``(M, d)`` columns each GP sees.
        priority: ``(N,)`` ranking of rows for the fitting subset (the
            objective: the best rows are always in it).

    Returns:
        ``(params, posts, mean, std, state)``: hyperparameters, posteriors
        (standardized targets) and standardization stacked over M, and
        ``state`` with the factors and refit counters updated (the caller
        stores ``params``).
    """
    gcfg = config.gp
    X = state.X
    N = X.shape[0]
    valid = jnp.arange(N) < state.n
    due = refit_due(state, config)
    cold = (state.n_refits % config.refit_every) == 0
    k_fit, k_rows = jax.random.split(key)
    size = N if config.fit_rows == 0 else min(N, config.fit_rows)

    def factors(params):
        return jax.vmap(lambda p, m, im: gplib.factor(p, X, m, gcfg, im))(params, masks.T, input_masks)

    def refit():
        rows = None if size == N else gplib.fit_rows(k_rows, valid, priority, size)
        params, _, _ = gplib.fit_stacked(k_fit, init, X, targets, masks, input_masks, gcfg, cold, rows)
        return params

    def append(L, p, m, im):
        return gplib.append_rows(L, p, X, m, gcfg, im, state.n_chol, state.n)

    params = jax.lax.cond(due, refit, lambda: init)
    # A fresh factorization after a refit, with no kept factor, or when many
    # rows are new; else the told rows are appended to the kept factors. One
    # copy of each in the program.
    fresh = due | (state.n_chol == 0) | (state.n_chol > state.n) | (3 * (state.n - state.n_chol) > N)
    chol = jax.lax.cond(fresh, lambda: factors(params), lambda: jax.vmap(append)(state.chol, params, masks.T, input_masks))
    _, mean, std = jax.vmap(gplib.standardize)(targets.T, masks.T)
    posts = gplib.posterior_stacked(params, X, targets, masks, input_masks, mean, std, gcfg, chol=chol)
    state = state._replace(
        chol=chol,
        n_chol=state.n,
        n_fit=jnp.where(due, state.n, state.n_fit),
        n_refits=state.n_refits + due.astype(jnp.int32),
    )
    return params, posts, mean, std, state


def fantasize(params, posts, chol, X, targets, masks, input_masks, mean, std, gcfg: gplib.GPConfig,
              pending: Pending):
    """Kriging-believer fantasy of M stacked GPs: condition them on the told
    rows plus the live pending rows, each pending target being the GP's own
    posterior mean at its ``x`` (Ginsbourger et al. 2010, "Kriging is
    well-suited to parallelize optimization").

    The pending rows enter a copy of the kept factors
    (:func:`eeipu_jax.gp.append_rows` after padding to ``N + P`` rows:
    O(M N^2 P), no new factorization) with the same hyperparameters and the
    same target standardization as the told rows, so the posterior mean is
    unchanged everywhere (each fantasized target equals the mean it is
    conditioned against) and only the variance near the pending points
    falls.

    Args:
        params, posts, chol: hyperparameters, posteriors and factors of the
            M GPs on the told rows (stacked; from :func:`surrogates`).
        X, targets, masks, input_masks, mean, std: as for
            :func:`eeipu_jax.gp.posterior_stacked` (told rows).
        gcfg: GP settings.
        pending: the running trials.

    Returns:
        ``(posts, kb)``: posteriors on ``N + P`` rows (rows ``N + p`` are the
        pending slots; empty slots are masked out) and the fantasized raw
        targets ``(P, M)`` (on the scale of ``targets``).
    """
    N = X.shape[0]
    P, M = pending.x.shape[0], targets.shape[1]
    m, _ = jax.vmap(lambda post: jax.vmap(lambda x: gplib.predict(post, x))(pending.x))(posts)  # (M, P)
    kb = (mean[:, None] + std[:, None] * m).T  # back to the targets' scale
    Xa = jnp.concatenate([X, pending.x.astype(X.dtype)])
    ta = jnp.concatenate([targets, kb])
    ma = jnp.concatenate([masks, jnp.broadcast_to(pending.mask[:, None], (P, M))])
    La = grow_factors(chol, N + P)
    La = jax.vmap(lambda L, p, mk, im: gplib.append_rows(L, p, Xa, mk, gcfg, im, N, N + P))(
        La, params, ma.T, input_masks
    )
    return gplib.posterior_stacked(params, Xa, ta, ma, input_masks, mean, std, gcfg, chol=La), kb


def mean_stage_costs(state: BOState):
    """``(K,)`` mean observed cost of each stage over the told trials where
    it ran (0 where none did)."""
    valid = (jnp.arange(state.X.shape[0]) < state.n)[:, None]
    ok = valid & jnp.isfinite(state.stage_costs)
    total = jnp.sum(jnp.where(ok, state.stage_costs, 0.0), axis=0)
    return total / jnp.maximum(jnp.sum(ok, axis=0), 1)


def committed_cost(state: BOState, config: BOConfig, pending: Pending, costs=None, cost_mean=None, cost_std=None):
    """Expected cost still to be paid by the running trials: for each live
    pending row, the expected cost of its stages after ``memo_depth`` (its
    restored stages are already paid, up to ``epsilon``).

    * Stage cost GPs (``cost_model="stages"``: EEIPU, MS_CArBO, PBGI): the
      log-normal mean ``exp(mu_k + sigma_k^2 / 2)`` of each stage ``k >=
      memo_depth`` at the pending ``x``, the same cost model the
      acquisition prices candidates with.
    * One total-cost GP (EIPS, CArBO): its log-normal mean at ``x``, times
      the share of the observed mean stage costs that falls after
      ``memo_depth`` (1 for a fresh run).
    * No cost GP (EI, LaMBO, MS_BO): the mean observed cost of each stage
      after ``memo_depth``, summed.

    Args:
        state, config: the told trials and settings.
        pending: the running trials.
        costs, cost_mean, cost_std: the cost GPs' posteriors and
            standardization (:class:`eeipu_jax.acquisition.AcqState`'s), for
            methods that have them.

    Returns:
        A scalar in the budget's units.
    """
    kind = config.method_def.cost_model
    K = config.n_stages
    after = jnp.arange(K)[None, :] >= pending.memo_depth[:, None]  # (P, K)
    mean_k = mean_stage_costs(state)
    if kind in ("stages", "total") and costs is not None:
        mu, sigma = jax.vmap(lambda x: costlib.predict_log_cost(costs, cost_mean, cost_std, x))(pending.x)
        expected = jnp.exp(mu + 0.5 * sigma * sigma)  # (P, K) or (P, 1)
        if kind == "stages":
            c = jnp.sum(jnp.where(after, expected, 0.0), axis=1)
        else:
            share = jnp.sum(jnp.where(after, mean_k[None, :], 0.0), axis=1) / jnp.maximum(jnp.sum(mean_k), 1e-30)
            c = expected[:, 0] * jnp.where(pending.memo_depth == 0, 1.0, share)
    else:
        c = jnp.sum(jnp.where(after, mean_k[None, :], 0.0), axis=1)
    return jnp.sum(jnp.where(pending.mask, c, 0.0))


def acquisition_state(key, state: BOState, config: BOConfig, pending: Pending | None = None):
    """Fit (on schedule) and condition all surrogates of ``config.method`` and
    build its :class:`AcqState`.

    With ``pending`` (see "Pending trials" in the module doc) the objective
    GP is the kriging-believer fantasy (:func:`fantasize`), the incumbent
    ``best`` includes the fantasized values, and ``eta`` is computed from
    ``spent`` plus :func:`committed_cost`; the cost GPs and the
    hyperparameters are those of the told trials only.

    The method's ``cost_model`` says which cost GPs are fitted next to the
    objective GP (the state keeps ``1 + n_cost_models`` GPs for it).
    ``AcqState.extra`` is ``None``: a method's ``prepare`` hook fills it.

    Returns:
        ``(acq_state, state, y_eff)``: ``state`` carries the hyperparameters
        in use (``gp_params``: the warm start of the next refit) and the
        updated factors (told rows only); ``y_eff`` is the objective the GP
        is conditioned on (:func:`eeipu_jax.state.effective_objective`:
        scale-free, failed trials at the worst finished value), followed,
        with ``pending``, by the ``P`` fantasized values of the pending slots.
    """
    method = config.method_def
    valid, y_eff = effective_objective(state)
    k_fit, k_mc = jax.random.split(key)
    gcfg = config.gp

    # The objective GP and the cost GPs are fitted in one vmapped call (one
    # copy of the fitting program to compile, one batched loop to run).
    best = jnp.max(jnp.where(valid, y_eff, -jnp.inf))
    targets, masks, input_masks = y_eff[:, None], valid[:, None], jnp.ones((1, config.dim), state.X.dtype)
    has_costs = method.cost_model in ("total", "stages")
    if has_costs:
        log_c, cmasks, cinput = cost_data(state, config, valid)
        targets = jnp.concatenate([targets, log_c], axis=1)
        masks = jnp.concatenate([masks, cmasks], axis=1)
        input_masks = jnp.concatenate([input_masks, cinput], axis=0)
    params, posts, mean, std, state = surrogates(k_fit, state, config, state.gp_params, targets, masks,
                                                 input_masks, y_eff)
    # Acquisitions work on the standardized objective scale.
    obj_post = jax.tree.map(lambda a: a[0], posts)
    if pending is not None:
        one = lambda a: a[:1]  # noqa: E731  (the objective GP, as a stack of one)
        fposts, kb = fantasize(jax.tree.map(one, params), jax.tree.map(one, posts), state.chol[:1], state.X,
                               targets[:, :1], masks[:, :1], input_masks[:1], mean[:1], std[:1], gcfg, pending)
        obj_post = jax.tree.map(lambda a: a[0], fposts)
        # The believed values count as observed (Ginsbourger et al.): the
        # incumbent includes them, so EI at a pending point is ~0 even
        # where its mean beats the best told trial.
        best = jnp.maximum(best, jnp.max(jnp.where(pending.mask, kb[:, 0], -jnp.inf)))
        y_eff = jnp.concatenate([y_eff, kb[:, 0]])
    best = (best - mean[0]) / std[0]
    costs = cost_mean = cost_std = z = None
    if has_costs:
        costs = jax.tree.map(lambda a: a[1:], posts)
        cost_mean, cost_std = mean[1:], std[1:]
        z = costlib.normal_base_samples(k_mc, config.mc_samples, config.n_cost_models, state.X.dtype)

    spent = state.spent
    if pending is not None:  # the running trials' expected cost is committed budget
        spent = spent + committed_cost(state, config, pending, costs, cost_mean, cost_std)
    acq = acqlib.AcqState(
        obj=obj_post,
        best=best,
        costs=costs,
        cost_mean=cost_mean,
        cost_std=cost_std,
        z=z,
        log_epsilon=jnp.log(state.params.epsilon),
        eta=cooling(state, spent),
        extra=None,
    )
    return acq, state._replace(gp_params=params), y_eff

"""The generic BO step: ``init`` / ``ask`` / ``tell`` over a ``BOState`` pytree.

``ask(key, state, config, pending=None) -> (Proposal, state)`` proposes the
next trial; ``tell(state, x, y, stage_costs, memo_depth, charged)`` records
one. Both are pure; ``ask`` is jitted with the :class:`BOConfig` static and
the state (which carries the run's :class:`Params`) traced, and the state
has a fixed capacity, so a run compiles ``ask`` once per capacity (and
pending capacity), never per iteration, and changing a float setting
between asks compiles nothing new. This module names no particular method:
methods are plug-ins (:mod:`eeipu_jax.methods`).

One BO ask, for a method that scores candidates (``Method.score``):

1. the method's ``observe`` hook sees the trials told since the last ask;
2. the surrogates its ``cost_model`` needs are fitted on schedule and
   conditioned (:func:`eeipu_jax.surrogates.acquisition_state`; with
   ``pending``, the objective GP is the kriging-believer fantasy and the
   running trials' expected cost counts as committed budget);
3. its ``prepare`` hook runs (e.g. a parameter computed from its state);
4. one fixed-shape batch of candidates is scored
   (:func:`eeipu_jax.candidates.candidate_batch`: quasi-random points plus,
   for a memoizing method, the prefixes of the pool
   :func:`~eeipu_jax.state.prefix_pool`, running trials' prefixes
   included), snapped to representable points first;
5. the best ``n_refine`` of each memo depth are refined by projected Adam
   steps on their free coordinates, snapped and scored again;
6. the winner is proposed and the method's ``update`` hook sees it.

A method with its own search (``Method.propose``) replaces steps 2-6.

Warm-up: while fewer than ``n_warmup`` trials have been told, ``ask``
returns uniform random points (the synthetic drivers may instead tell a
cost-aware design from :mod:`eeipu_jax.design`). The budget spent when the
warm-up completes is ``b0`` of the cost-cooling schedule. A warm-up ``ask``
runs a small program of its own (the same proposal as the full step's
warm-up branch, bit for bit), so a run's first asks return at once and the
BO step compiles at the first ask after the warm-up.

**Integer and categorical columns.** Candidates are snapped to representable
points *before* they are scored (the free coordinates only: a memoized prefix
is copied bit for bit from its source trial), refined points are snapped and
scored again, and the winner is chosen on these snapped scores, so the score
of a proposal is the score of the point that will run.

**Fallback.** If every candidate's score is non-finite, ``ask`` does not take
an arbitrary row: it proposes a uniform random point (snapped, memo depth 0,
no source), sets ``Proposal.fallback`` and counts it in
``BOState.n_fallback``; drivers should log it.

**Pending trials.** ``ask(key, state, config, pending)`` takes the trials
still running (a parallel driver) as a :class:`Pending` of fixed capacity
``P``; see :mod:`eeipu_jax.surrogates` for what changes. The returned state
never holds pending rows: each trial is told when it finishes, in any order.
A proposal that reuses a running trial's prefix has ``Proposal.source ==
N + p``; the driver waits for that trial's stage output before restoring it.
During the warm-up, pending rows are ignored.

The pieces live in their own modules and are re-exported here, so
``loop`` is the one import a driver needs: :mod:`eeipu_jax.config`
(``BOConfig``, ``Params``), :mod:`eeipu_jax.state` (``BOState``, ``init``,
``tell``, ``Pending``, ...), :mod:`eeipu_jax.surrogates`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from eeipu_jax import candidates as candlib
from eeipu_jax.cpu import jit
from eeipu_jax.utils import collector_paused
from eeipu_jax.config import (
    BOConfig,
    Params,
    check_config,
    check_params,
    configure,
    default_params,
    replace_params,
)
from eeipu_jax.state import (
    BOState,
    Pending,
    Proposal,
    best_observed,
    canonicalize,
    capacity_for,
    check_pending,
    check_state,
    effective_objective,
    empty,
    ensure_capacity,
    grow,
    init,
    n_observations,
    no_pending,
    objective_values,
    pending_from,
    pool_eligible,
    prefix_pool,
    scaled_objective,
    tell,
    tell_traced,
)
from eeipu_jax.surrogates import acquisition_state, committed_cost, cooling, fantasize, surrogates

__all__ = [
    "BOConfig",
    "Params",
    "BOState",
    "Proposal",
    "Pending",
    "configure",
    "default_params",
    "replace_params",
    "set_params",
    "no_pending",
    "pending_from",
    "init",
    "empty",
    "ask",
    "ask_traced",
    "tell",
    "tell_traced",
    "grow",
    "ensure_capacity",
    "canonicalize",
    "best_observed",
    "objective_values",
    "scaled_objective",
    "effective_objective",
    "n_observations",
    "capacity_for",
    "prefix_pool",
    "acquisition_state",
    "surrogates",
    "fantasize",
    "committed_cost",
    "cooling",
    "warmup_proposal",
    "generic_proposal",
    "compiled_asks",
]


def set_params(state: BOState, config: BOConfig, **changes) -> BOState:
    """``state`` with some of its :class:`Params` changed (validated on the host).

    The params are traced leaves of the state, so the next ``ask`` compiles
    nothing new (the dtypes are kept).

    Args:
        state: the state.
        config: its config (names the method whose params these are).
        **changes: as for :func:`eeipu_jax.config.replace_params`.

    Raises:
        ValueError: a wrong argument, named.
    """
    check_state(state)
    check_config(config)
    current = check_params(jax.tree.map(lambda a: float(a), state.params), config.method_def)
    new = replace_params(current, config.method_def, **changes)
    return state._replace(params=jax.tree.map(lambda a, v: jnp.asarray(v, a.dtype), state.params, new))


# ---------------------------------------------------------------- ask
def warmup_proposal(key, state: BOState, config: BOConfig) -> Proposal:
    """A uniform random point (snapped), memo depth 0: a warm-up proposal."""
    x = config.snap(jax.random.uniform(key, (config.dim,), state.X.dtype))
    return Proposal(
        x=x,
        memo_depth=jnp.asarray(0, jnp.int32),
        source=jnp.asarray(-1, jnp.int32),
        score=jnp.asarray(jnp.nan, state.X.dtype),
        eta=jnp.asarray(1.0, state.X.dtype),
        fallback=jnp.asarray(False),
    )


def generic_proposal(key, state: BOState, config: BOConfig, pending: Pending | None = None):
    """Steps 2-6 of the module docstring for a method that scores candidates.

    Returns:
        ``(proposal, state)``: the state with the surrogates' hyperparameters
        and factors, the method state and the BO-step counter updated.
    """
    method = config.method_def
    k_fit, k_cand = jax.random.split(key)
    acq, new_state, y_eff = acquisition_state(k_fit, state, config, pending)
    method_state = state.method_state
    if method.prepare is not None:
        acq, method_state = method.prepare(acq, state, config)
    mparams = state.params.method

    pool_ok = pool_eligible(state, config)
    masks = jnp.asarray(config.prefix_masks)
    X = state.X
    pool = None
    if pending is not None:
        # The running trials' prefixes join the pool, ranked with the told
        # trials by their fantasized objective; batch sources index
        # [state rows] + [pending slots] (see Proposal).
        X = jnp.concatenate([state.X, pending.x.astype(state.X.dtype)])
        pool_ok = jnp.concatenate([pool_ok, pending.mask])
    if method.memoize:
        pool = candlib.prefix_pool(X, y_eff, pool_ok, config.top_q, masks, config.prefix_select)
    batch = candlib.candidate_batch(
        k_cand,
        X,
        y_eff,
        pool_ok,
        n_random=config.n_random,
        n_per_prefix=config.n_per_prefix,
        q=config.top_q,
        prefix_masks=masks,
        memoize=method.memoize,
        n_local=config.n_local,
        pool=pool,
    )

    def score(x, j):
        return method.score(x, j, acq, mparams)

    def snap_free(x, j):
        # Snap the free coordinates only: a memoized prefix is copied from its
        # source trial and must stay bit-identical for the cache to hit.
        return jnp.where(masks[j], x, config.snap(x))

    # Snap first, then score: the winner is chosen on the scores of the points
    # that will run (an integer/categorical winner chosen between bin centres
    # could snap onto an observed point).
    bx = jax.vmap(snap_free)(batch.x, batch.depth)
    vals = jax.vmap(score)(bx, batch.depth)
    vals = jnp.where(batch.valid & jnp.isfinite(vals), vals, -jnp.inf)

    if config.n_refine > 0:
        # Refine the best few candidates of *each* memo depth (the authors
        # maximize the acquisition separately for the fresh run and for every
        # prefix). A global top-k would refine only deep prefixes: their free
        # subspace is small, so random points already sit near its optimum,
        # while the best of 512 random points in the full cube is far from the
        # optimum of a fresh run, and memoization would win by default.
        groups = config.n_stages if method.memoize else 1
        top, top_ok = candlib.top_per_depth(vals, batch.depth, groups, config.n_refine)
        x0, d0, v0 = bx[top], batch.depth[top], vals[top]
        free = ~masks[d0]
        # Gradient steps on the continuous relaxation, then snapped and scored
        # again; a refined point replaces its start only if its snapped score
        # is higher.
        lr = state.params.refine_lr
        xs, vs = jax.vmap(
            lambda x, j, f: candlib.refine(lambda z: score(z, j), x, f, config.refine_steps, lr,
                                           finish=lambda z: snap_free(z, j))
        )(x0, d0, free)
        moved = jnp.isfinite(vs) & (vs > v0)
        xc = jnp.where(moved[:, None], xs, x0)
        vc = jnp.where(top_ok, jnp.where(moved, vs, v0), -jnp.inf)
        r = jnp.argmax(vc)
        x, j, src, v = xc[r], d0[r], batch.source[top[r]], vc[r]
    else:
        r = jnp.argmax(vals)
        x, j, src, v = bx[r], batch.depth[r], batch.source[r], vals[r]
    prop = Proposal(x=x, memo_depth=j, source=src, score=v, eta=acq.eta, fallback=jnp.asarray(False))
    if method.update is not None:
        method_state = method.update(method_state, prop, acq, state, config)
    return prop, new_state._replace(n_bo=state.n_bo + 1, method_state=method_state)


def _observe(state: BOState, config: BOConfig) -> BOState:
    """Run the method's ``observe`` hook on every row told since the last ask."""
    method = config.method_def
    if method.observe is None:
        return state._replace(n_observed=state.n)

    def body(row, ms):
        return method.observe(ms, state, config, row)

    ms = jax.lax.fori_loop(state.n_observed, state.n, body, state.method_state)
    return state._replace(method_state=ms, n_observed=state.n)


def _bo_step(rnd: Proposal, k_bo, state: BOState, config: BOConfig, pending: Pending | None = None):
    """A BO proposal, or the documented fallback (``rnd``, a warm-up
    proposal) when no candidate scored finite."""
    method = config.method_def
    propose = method.propose if method.propose is not None else generic_proposal
    prop, new_state = propose(k_bo, state, config, pending)
    # Every candidate non-finite (argmax would silently return row 0): propose
    # the uniform random point instead, flag it and count it.
    bad = ~jnp.isfinite(prop.score)
    rnd = rnd._replace(score=prop.score, eta=prop.eta, fallback=bad)
    prop = jax.tree.map(lambda a, b: jnp.where(bad, a, b), rnd, prop)
    return prop, new_state._replace(n_fallback=new_state.n_fallback + bad.astype(jnp.int32))


def _observe_and_draw(key, state: BOState, config: BOConfig):
    """What every ask does first: ``(warm-up proposal, observed state, the BO step's key)``.

    The warm-up point is also the BO step's fallback (same key): drawn once,
    outside :func:`ask_traced`'s branches, so its program holds one copy of
    it; a warm-up ask ends here (:func:`_warmup_ask`)."""
    k_warm, k_bo = jax.random.split(key)
    state = _observe(state, config)
    return warmup_proposal(k_warm, state, config), state, k_bo


def _warmup_ask(key, state: BOState, config: BOConfig):
    """The warm-up branch of :func:`ask_traced`: ``(warm-up proposal, observed state)``."""
    rnd, state, _ = _observe_and_draw(key, state, config)
    return rnd, state


def ask_traced(key, state: BOState, config: BOConfig, pending: Pending | None = None):
    """:func:`ask` without host checks and without ``jit``, for traced code
    (a jitted driver). ``pending`` must be a valid :class:`Pending` or ``None``."""
    rnd, state, k_bo = _observe_and_draw(key, state, config)
    in_warmup = state.n < state.n_warmup
    return jax.lax.cond(in_warmup, lambda: (rnd, state), lambda: _bo_step(rnd, k_bo, state, config, pending))


_TRACES = [0]


@functools.partial(jit, static_argnames=("config",))
def _ask(key, state: BOState, config: BOConfig, pending: Pending | None = None):
    _TRACES[0] += 1  # runs only while jax traces a new program
    return ask_traced(key, state, config, pending)


# Warm-up asks run this small program instead of _ask: the same outputs (the
# same ops on the same key), without compiling the BO step to return a random
# point. Not counted by compiled_asks.
_ask_warmup = jit(_warmup_ask, static_argnames=("config",))


def compiled_asks() -> int:
    """How many programs of the BO step this process has traced, hence
    compiled or loaded from the persistent compilation cache (one per config,
    state capacity and pending capacity; benchmarks and tests count them).
    Warm-up asks run a small program of their own (compiled in a fraction of
    a second, not counted here): the BO step compiles at the first ask after
    the warm-up."""
    return _TRACES[0]


@functools.lru_cache(maxsize=None)
def _method_state_structure(config: BOConfig):
    """The pytree structure of ``config``'s method state (for the host check)."""
    method = config.method_def
    if method.init is None:
        return jax.tree.structure(None)
    shape = jax.eval_shape(lambda: method.init(config, method.params))
    return jax.tree.structure(shape)


def ask(key, state: BOState, config: BOConfig, pending: Pending | None = None):
    """Propose the next trial.

    Args:
        key: PRNG key (split by the caller; never reused).
        state: current state (its ``params`` are the run's numbers).
        config: static settings.
        pending: the trials proposed earlier and still running (a parallel
            driver), as a :class:`Pending` of fixed capacity ``P``
            (:func:`pending_from`); checked here on the host. ``None``: the
            single-worker step. With ``pending``, the objective is
            fantasized at the pending points (kriging believer), their
            expected cost counts as spent for the cost cooling, and their
            prefixes may be proposed as memoized ones (``Proposal.source ==
            N + p``). ``ask`` compiles once per (state capacity, ``P``),
            whatever the number of live rows. During the warm-up, pending
            rows are ignored.

    Returns:
        ``(proposal, state)``: the new state carries the freshly fitted GP
        hyperparameters (warm start of the next ask), the method's state and
        the BO-step counter; it never contains the pending rows (tell each
        trial when it finishes, in any order, with :func:`tell`).

    Raises:
        ValueError: ``state``, ``config`` or ``pending`` of the wrong type or
            shape (e.g. a state built for another config).
    """
    check_config(config)
    check_state(state)
    if state.X.shape[1:] != (config.dim,) or state.stage_costs.shape[1:] != (config.n_stages,) or \
            state.chol.shape[0] != config.n_gps:
        raise ValueError(
            f"state (d={state.X.shape[1]}, K={state.stage_costs.shape[1]}, {state.chol.shape[0]} GPs) was not "
            f"built for this config (d={config.dim}, K={config.n_stages}, method {config.method!r} with "
            f"{config.n_gps} GPs)"
        )
    if int(state.space_id) != config.space_id:
        raise ValueError(
            f"state was built for another search space (fingerprint {int(state.space_id)}) than this config's "
            f"({config.space_id}), though both have d={config.dim} and K={config.n_stages}: ask with the config "
            "the state was built with (loop.init(config, ...))"
        )
    method = config.method_def
    if jax.tree.structure(state.method_state) != _method_state_structure(config) or \
            jax.tree.structure(state.params.method) != jax.tree.structure(method.params):
        raise ValueError(
            f"state holds another method's state or params than {config.method!r} needs: build it with "
            f"loop.init(config, ...) for this config"
        )
    if pending is not None:
        pending = check_pending(pending, config)
    if int(state.n) < int(state.n_warmup):
        # A warm-up proposal (pending rows are ignored then): the small
        # program, so the first asks of a run do not wait for the BO step to
        # compile. What _ask would return, bit for bit
        # (tests/test_loop.py::test_warmup_asks_run_without_compiling_the_bo_step).
        return _ask_warmup(key, canonicalize(state), config)
    with collector_paused():
        return _ask(key, canonicalize(state), config, pending)

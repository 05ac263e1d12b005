"""The state of a BO run and the pure functions that record trials in it.

This module owns :class:`BOState` (every trial told so far, at a fixed
capacity, plus the surrogates' kept hyperparameters and factors, the run's
:class:`~eeipu_jax.config.Params` and the method's own state), the
:class:`Proposal` an ``ask`` returns, the :class:`Pending` rows of running
trials, and :func:`init` / :func:`tell` / :func:`grow`.

**Fixed shapes.** Rows ``0 .. n-1`` hold the trials told so far, in order;
the arrays have a capacity ``N`` (a power of two, :func:`capacity_for`) and
:func:`tell` grows them to the next bucket when full, so ``ask`` compiles
once per capacity, not per trial.

**Validation.** :func:`tell` checks every argument on the host before
anything is traced (shapes, finiteness, ranges; NumPy scalars and 0-d arrays
are accepted) and raises a ``ValueError`` naming the argument and its value;
:func:`tell_traced` is the same record without the checks, for use inside
traced code (the jitted synthetic driver).

**Objective scale.** Proposals do not depend on the objective's units: any
increasing affine change ``a * y + b`` of the objective gives the same
proposals up to float32 rounding. :func:`tell` splits each objective, in
float64 on the host, into a float32 pair ``y`` (the value rounded to float32,
what the state reports) and ``y_lo`` (what the rounding lost), so ``1e9 + f``
keeps ``f``; objectives beyond the float32 range (``|y| > 3.4e38``) are
refused. The GP targets are then made scale-free
(:func:`eeipu_jax.gp.scale_free`, :func:`effective_objective`).
:func:`best_observed` and :func:`objective_values` return the objectives
exactly as told (``y + y_lo`` in float64).

**Outliers.** One extreme objective (a diverged run reporting ``-1e30``
among values of order 1) would make every other target ``~0`` after the
division by the largest difference: the GP would see a constant and the
proposals would be blind. The targets are therefore robust: a value further
than :data:`eeipu_jax.gp.OUTLIER_FENCE` (1000) median absolute deviations
from the median of the finished trials is moved next to the others, less
than one MAD beyond the best (or worst) value inside the fences, in its
order (:func:`eeipu_jax.gp.squash_outliers`): the GP sees it as the best or
worst point, as it sees a failed trial at the worst value. Why this and not a
rank or power transform of every value: those change ordinary data too
(every proposal of every method would move, and differences between good
values that the GP should see would shrink), while a far fence leaves data
without outliers bit for bit as they were (heavy tails of ordinary runs reach
~100 MADs: ``tests/test_pinned.py``) and acts only where the plain scale
breaks down. The fence and the squash are scale-free (median and MAD move
with ``a * y + b``), jittable with fixed shapes (two sorts of the capacity),
and keep the ranks, so the prefix pool (ranked by the same targets) keeps
the same trials.

**Failed trials** (objective NaN, or +-inf, which :func:`tell` also records as
a failure) are kept: the objective GP sees them at the worst objective among
the finished trials (the region is not worth revisiting, and the GP stays
well conditioned). Before any trial has finished, every row sits at the same
constant, so the standardized objective is 0 everywhere. Their stage costs
are used for the stages that ran (``NaN`` marks a stage that did not run).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from eeipu_jax import checks
from eeipu_jax.cpu import jit
from eeipu_jax import candidates as candlib
from eeipu_jax import gp as gplib
from eeipu_jax.config import BOConfig, Params, as_arrays, check_config, check_params, default_params

__all__ = [
    "BOState",
    "check_state",
    "Proposal",
    "Pending",
    "no_pending",
    "pending_from",
    "check_pending",
    "capacity_for",
    "init",
    "empty",
    "grow",
    "grow_factors",
    "ensure_capacity",
    "tell",
    "tell_traced",
    "n_observations",
    "objective_values",
    "best_observed",
    "scale_free_objective",
    "scaled_objective",
    "effective_objective",
    "pool_eligible",
    "prefix_pool",
    "canonicalize",
]


class BOState(NamedTuple):
    """All data of a run, at a fixed capacity ``N`` (a pytree of arrays).

    Rows ``0 .. n-1`` hold the trials told so far, in order.
    """

    X: Float[Array, "N d"]  # unit-cube inputs
    y: Float[Array, " N"]  # objective rounded to float32 (NaN for failed trials)
    y_lo: Float[Array, " N"]  # what the rounding lost: y + y_lo is the objective told
    stage_costs: Float[Array, "N K"]  # full (non-memoized) stage costs; NaN = unknown
    memo_depth: Int[Array, " N"]
    charged: Float[Array, " N"]  # what each trial cost the budget
    failed: Bool[Array, " N"]
    warmup: Bool[Array, " N"]
    n: Int[Array, ""]
    n_warmup: Int[Array, ""]
    n_bo: Int[Array, ""]  # BO asks so far (sets the refit schedule)
    n_fallback: Int[Array, ""]  # BO asks whose every candidate scored non-finite
    spent: Float[Array, ""]
    budget: Float[Array, ""]
    b0: Float[Array, ""]  # spent when the warm-up completed (the cooling's start)
    params: Params  # the run's numbers (never changed by ask or tell)
    # The surrogates: hyperparameters and Cholesky factors of the M GPs the
    # method keeps (eeipu_jax.surrogates: "Surrogate schedule").
    gp_params: gplib.GPParams  # stacked over M (the objective GP first, then the cost GPs)
    chol: Float[Array, "M N N"]  # lower Cholesky factor of each GP's masked covariance
    n_chol: Int[Array, ""]  # rows [0, n_chol) are in the factors (0: none: factor anew)
    n_fit: Int[Array, ""]  # trials told when the hyperparameters were last refitted (0: never)
    n_refits: Int[Array, ""]  # hyperparameter refits so far (sets which are cold)
    n_observed: Int[Array, ""]  # rows the method's ``observe`` hook has seen
    method_state: Any  # the method's own state (``Method.init``; ``None`` if it has none)
    space_id: Int[Array, ""]  # BOConfig.space_id of the config it was built for (ask checks it)


class Proposal(NamedTuple):
    """What ``ask`` proposes.

    ``source`` indexes the rows the memoized prefix comes from: the state's
    rows ``0 .. N-1`` (``N = state.X.shape[0]``, a told trial), then, when
    ``ask`` was given a :class:`Pending` of ``P`` slots, the pending slots as
    ``N .. N+P-1``: ``source == N + p`` means the prefix is the one running
    trial ``p`` is computing, and ``x``'s first ``memo_depth`` stages' columns
    equal ``pending.x[p]``'s bit for bit (the driver waits for that trial's
    stage output, then restores it). ``-1``: no prefix reused.
    """

    x: Float[Array, " d"]  # unit cube, snapped
    memo_depth: Int[Array, ""]  # leading stages to restore from the cache
    source: Int[Array, ""]  # row whose prefix is reused: state row < N, pending slot N + p; -1: none
    score: Float[Array, ""]  # acquisition value (log scale for EI-based methods)
    eta: Float[Array, ""]  # cost-cooling exponent used
    fallback: Bool[Array, ""]  # every candidate scored non-finite: x is a uniform random point


class Pending(NamedTuple):
    """Trials proposed and still running (a parallel driver's workers), as
    fixed-capacity masked rows: ``ask(..., pending=...)`` compiles once per
    ``(state capacity, P)``, whatever the number of live rows. Build one with
    :func:`pending_from` (validated) or :func:`no_pending`. See "Pending
    trials" in the module doc.
    """

    x: Float[Array, "P d"]  # unit-cube inputs of the running trials, as proposed (snapped)
    memo_depth: Int[Array, " P"]  # stages that running trial restores from the cache (0: none)
    mask: Bool[Array, " P"]  # live rows (False: an empty slot)


def no_pending(capacity: int, d: int) -> Pending:
    """A :class:`Pending` of ``capacity`` slots, all empty (host side)."""
    return pending_from(np.zeros((0, d)), np.zeros((0,), np.int64), capacity, d)


def pending_from(xs, memo_depths, capacity: int, d: int) -> Pending:
    """Pack the running trials into a :class:`Pending` of ``capacity`` slots
    (host side, before jit; slots ``0 .. n-1`` live, in the order given).

    Args:
        xs: ``(n, d)`` unit-cube points of the running trials, as proposed;
            finite, in ``[0, 1]`` (up to 1e-5 of rounding, then clipped).
        memo_depths: ``(n,)`` integers ``>= 0``: the stages each restores
            from the cache (:func:`ask` checks them against the config's
            number of stages).
        capacity: number of slots ``P >= 1`` (keep it fixed for a study,
            e.g. the number of workers, so ``ask`` does not recompile).
        d: dimension of the unit cube.

    Raises:
        ValueError: on a bad shape, value or ``n > capacity``.
    """
    capacity = checks.integer(capacity, "capacity")
    d = checks.integer(d, "d")
    if capacity < 1 or d < 1:
        raise ValueError(f"pending capacity and d must be >= 1, got capacity={capacity}, d={d}")
    try:
        x = np.asarray(xs, np.float64)
        depth = np.asarray(memo_depths)
    except (TypeError, ValueError):
        raise ValueError(f"pending xs must be an (n, {d}) array of numbers, got {xs!r}") from None
    if x.size == 0:
        x = x.reshape(0, d)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"pending xs must have shape (n, {d}), got {x.shape}")
    n = x.shape[0]
    if n > capacity:
        raise ValueError(f"{n} pending trials exceed the pending capacity {capacity}")
    if depth.shape != (n,):
        raise ValueError(f"pending memo_depths must have shape ({n},) (one per x), got {depth.shape}")
    if depth.dtype == bool or (n and not np.issubdtype(depth.dtype, np.number)):
        raise ValueError(f"pending memo_depths must be integers >= 0, got {memo_depths!r}")
    depth_f = depth.astype(np.float64)
    if n and not (np.all(np.isfinite(depth_f)) and np.all(depth_f == np.round(depth_f)) and np.all(depth_f >= 0)):
        raise ValueError(f"pending memo_depths must be integers >= 0, got {depth.tolist()}")
    pend = Pending(
        x=np.zeros((capacity, d), np.float32),
        memo_depth=np.zeros((capacity,), np.int32),
        mask=np.zeros((capacity,), bool),
    )
    pend.x[:n] = _check_pending_x(x)
    pend.memo_depth[:n] = depth_f.astype(np.int32)
    pend.mask[:n] = True
    return Pending(*(jnp.asarray(a) for a in pend))


def _check_pending_x(x: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"pending x must be finite, got {x.tolist()}")
    if np.any((x < -_X_TOLERANCE) | (x > 1.0 + _X_TOLERANCE)):
        raise ValueError(f"pending x must lie in the unit cube [0, 1]^{x.shape[-1]}, got {x.tolist()}")
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def check_pending(pending, config: BOConfig) -> Pending:
    """Host-side check of a :class:`Pending` given to :func:`ask` (shapes,
    values on the live rows, memo depths against the stages)."""
    if not isinstance(pending, Pending):
        raise ValueError(f"pending must be a Pending (see pending_from), got {type(pending).__name__}")
    x = np.asarray(pending.x, np.float64)
    depth = np.asarray(pending.memo_depth)
    mask = np.asarray(pending.mask)
    d, K = config.dim, config.n_stages
    if x.ndim != 2 or x.shape[1] != d or x.shape[0] < 1:
        raise ValueError(f"pending.x must have shape (P, {d}) with P >= 1, got {x.shape}")
    P = x.shape[0]
    if depth.shape != (P,) or not np.issubdtype(depth.dtype, np.integer):
        raise ValueError(f"pending.memo_depth must be ({P},) integers, got {depth.shape} {depth.dtype}")
    if mask.shape != (P,) or mask.dtype != bool:
        raise ValueError(f"pending.mask must be ({P},) booleans, got {mask.shape} {mask.dtype}")
    live = x[mask]
    _check_pending_x(live)
    bad = (depth[mask] < 0) | (depth[mask] > K - 1)
    if bad.any():
        raise ValueError(
            f"pending.memo_depth of live rows must lie in [0, {K - 1}] (the last stage is never restored), "
            f"got {depth[mask].tolist()}"
        )
    return Pending(
        x=jnp.asarray(np.where(mask[:, None], np.clip(x, 0.0, 1.0), 0.0), jnp.float32),
        memo_depth=jnp.asarray(np.where(mask, depth, 0), jnp.int32),
        mask=jnp.asarray(mask),
    )


def capacity_for(n: int, minimum: int = 16) -> int:
    """Bucketed capacity: the smallest power of two >= max(n, minimum)."""
    return 1 << max(0, math.ceil(math.log2(max(n, minimum, 1))))


def init(config: BOConfig, budget: float, params: Params | None = None, *, capacity: int = 32) -> BOState:
    """An empty state for ``config`` with room for ``capacity`` trials (host side).

    Args:
        config: static settings.
        budget: total budget (seconds or cost units); a positive finite number
            (Python or NumPy scalar, or a 0-d array).
        params: the run's numbers (default :func:`eeipu_jax.config.default_params`);
            validated here.
        capacity: preallocated rows (grown on demand by :func:`tell`; at
            least ``n_warmup + 1``).

    Raises:
        ValueError: a wrong argument, named (``config`` not a ``BOConfig``,
            a budget that is not a positive finite number, bad params).
    """
    check_config(config)
    budget = checks.number(budget, "budget")
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"budget must be a positive finite number, got {budget!r}")
    params = default_params(config) if params is None else check_params(params, config.method_def)
    capacity = checks.integer(capacity, "capacity")
    return empty(config, budget, params, capacity)


def empty(config: BOConfig, budget, params: Params, capacity: int) -> BOState:
    """An empty state, without host checks: ``budget`` and ``params`` may be
    traced (a jitted driver building one state per seed or setting).
    ``capacity`` is raised to ``capacity_for(n_warmup + 1)`` if smaller."""
    if capacity < config.n_warmup + 1:
        capacity = capacity_for(config.n_warmup + 1)
    N, d, K = capacity, config.dim, config.n_stages
    method = config.method_def
    f = jnp.float32
    p = gplib.default_params(d, config.gp)
    method_state = None if method.init is None else method.init(config, params.method)
    return BOState(
        X=jnp.zeros((N, d), f),
        y=jnp.full((N,), jnp.nan, f),
        y_lo=jnp.zeros((N,), f),
        stage_costs=jnp.full((N, K), jnp.nan, f),
        memo_depth=jnp.zeros((N,), jnp.int32),
        charged=jnp.zeros((N,), f),
        failed=jnp.zeros((N,), bool),
        warmup=jnp.zeros((N,), bool),
        n=jnp.asarray(0, jnp.int32),
        n_warmup=jnp.asarray(config.n_warmup, jnp.int32),
        n_bo=jnp.asarray(0, jnp.int32),
        n_fallback=jnp.asarray(0, jnp.int32),
        spent=jnp.asarray(0.0, f),
        budget=jnp.asarray(budget, f),
        b0=jnp.asarray(0.0, f),
        params=as_arrays(params, f),
        gp_params=jax.tree.map(lambda a: jnp.stack([a] * config.n_gps), p),
        chol=jnp.broadcast_to(jnp.eye(N, dtype=f), (config.n_gps, N, N)),
        n_chol=jnp.asarray(0, jnp.int32),
        n_fit=jnp.asarray(0, jnp.int32),
        n_refits=jnp.asarray(0, jnp.int32),
        n_observed=jnp.asarray(0, jnp.int32),
        method_state=jax.tree.map(jnp.asarray, method_state),
        space_id=jnp.asarray(config.space_id, jnp.int32),
    )


def grow(state: BOState, capacity: int) -> BOState:
    """A copy of ``state`` with room for ``capacity`` rows (not jitted)."""
    N = state.X.shape[0]
    if capacity < N:
        raise ValueError(f"cannot shrink capacity from {N} to {capacity}")
    pad = capacity - N

    def p(a, fill):
        return jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], fill, a.dtype)])

    return state._replace(
        X=p(state.X, 0.0),
        y=p(state.y, jnp.nan),
        y_lo=p(state.y_lo, 0.0),
        stage_costs=p(state.stage_costs, jnp.nan),
        memo_depth=p(state.memo_depth, 0),
        charged=p(state.charged, 0.0),
        failed=p(state.failed, False),
        warmup=p(state.warmup, False),
        chol=grow_factors(state.chol, capacity),
    )


def grow_factors(chol, capacity: int):
    """Factors padded to ``capacity`` rows: the new rows are padded data, whose
    factor rows are identity rows, so a grown factor stays exact."""
    M, N, _ = chol.shape
    eye = jnp.broadcast_to(jnp.eye(capacity, dtype=chol.dtype), (M, capacity, capacity))
    return eye.at[:, :N, :N].set(chol)


def ensure_capacity(state: BOState, extra: int = 1) -> BOState:
    """Grow to the next bucket if fewer than ``extra`` free rows remain."""
    n, N = int(state.n), state.X.shape[0]
    if n + extra <= N:
        return state
    return grow(state, capacity_for(n + extra))


def n_observations(state: BOState) -> int:
    return int(state.n)


def objective_values(state: BOState) -> np.ndarray:
    """The objectives told so far, in order, exactly as told (float64;
    NaN for failed trials). Host-side (not jittable)."""
    n = int(state.n)
    return np.asarray(state.y[:n], np.float64) + np.asarray(state.y_lo[:n], np.float64)


def best_observed(state: BOState) -> float:
    """Best finite objective told so far, as told (``-inf`` if none). Host-side."""
    y = objective_values(state)
    ok = ~np.asarray(state.failed[: int(state.n)])
    return float(np.max(y[ok])) if ok.any() else -math.inf


# ---------------------------------------------------------------- tell
_F32_MAX = float(np.finfo(np.float32).max)
_X_TOLERANCE = 1e-5  # unit-cube rounding slack accepted (then clipped) in ``tell``


def _vector(value, name: str, n: int) -> np.ndarray:
    """``value`` as ``(n,)`` float64, from real numbers only: strings, booleans,
    complex numbers and objects (``None``) are refused, not converted (NumPy
    would read ``"0.5"`` as 0.5, ``True`` as 1 and drop an imaginary part)."""
    try:
        a = np.asarray(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {n} numbers, got {value!r}") from None
    if a.dtype.kind not in "iuf":
        kind = {"b": "booleans", "c": "complex numbers", "U": "strings", "S": "bytes"}.get(a.dtype.kind, "objects")
        raise ValueError(f"{name} must be {n} numbers (real ones, not {kind}), got {value!r}")
    a = a.astype(np.float64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got shape {a.shape}: {value!r}")
    return a


def _check_trial(state: BOState, x, y, stage_costs, memo_depth, charged):
    """Validate one trial on the host; returns ``(x, y_hi, y_lo, costs, depth, charged)``."""
    N, d = state.X.shape
    K = state.stage_costs.shape[1]
    x = _vector(x, "x", d)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x must be finite, got {x.tolist()}")
    out = (x < -_X_TOLERANCE) | (x > 1.0 + _X_TOLERANCE)
    if out.any():
        raise ValueError(
            f"x must lie in the unit cube [0, 1]^{d} (the optimizer's coordinates; map raw values with "
            f"SearchSpace.to_unit), got {x.tolist()} (columns {np.flatnonzero(out).tolist()} outside)"
        )
    x = np.clip(x, 0.0, 1.0)

    if y is None:
        raise ValueError("y is None: tell a failed trial with y=float('nan')")
    y = checks.number(y, "y")
    if math.isfinite(y) and abs(y) > _F32_MAX:
        raise ValueError(
            f"y={y!r} is beyond the float32 range (|y| <= {_F32_MAX:.4g}) the optimizer stores; "
            "tell a rescaled objective (e.g. y / 1e10: proposals do not depend on the scale)"
        )

    depth = memo_depth
    if isinstance(depth, (bool, np.bool_)):
        raise ValueError(f"memo_depth must be an integer in [0, {K - 1}], got {memo_depth!r}")
    depth = checks.number(depth, "memo_depth")
    if not (depth == int(depth) and 0 <= depth <= K - 1):
        raise ValueError(
            f"memo_depth must be an integer in [0, {K - 1}] (stages restored from the cache; the last "
            f"stage never is), got {memo_depth!r}"
        )
    depth = int(depth)

    costs = _vector(stage_costs, "stage_costs", K)
    bad = np.isinf(costs) | (costs < 0) | (costs > _F32_MAX)
    if bad.any():
        raise ValueError(
            f"stage_costs must be finite and >= 0 (NaN for a stage that did not run) and fit float32 "
            f"(<= {_F32_MAX:.4g}), got {costs.tolist()}"
        )
    if np.isnan(costs[:depth]).any():
        raise ValueError(
            f"stage_costs of the {depth} memoized stage(s) must be their original compute costs (finite), "
            f"got {costs.tolist()}"
        )

    if charged is not None:
        charged = checks.number(charged, "charged")
        if not (math.isfinite(charged) and charged >= 0):
            raise ValueError(f"charged must be None or a finite number >= 0, got {charged!r}")
        if charged > _F32_MAX:
            raise ValueError(
                f"charged={charged!r} is beyond the float32 range (<= {_F32_MAX:.4g}) in which the budget is "
                "spent (spent would become inf)"
            )

    if math.isfinite(y):
        hi = np.float32(y)
        lo = np.float32(y - float(hi))  # exact in float64, then rounded: hi + lo == y to ~1e-14 relative
    else:  # NaN or +-inf: a failed trial
        hi, lo = np.float32(np.nan), np.float32(0.0)
    return x.astype(np.float32), hi, lo, costs.astype(np.float32), depth, charged


def tell_traced(state: BOState, x, y, stage_costs, memo_depth, charged=None, y_lo=0.0) -> BOState:
    """Record one trial without host checks, for traced code (a jitted driver).

    Arguments as for :func:`tell`, but nothing is validated and the state is
    not grown: the caller guarantees a free row and valid values
    (``charged=None``: the default charge).
    """
    has = charged is not None
    return _record(state, x, y, stage_costs, memo_depth, 0.0 if charged is None else charged, has, y_lo)


def _record(state: BOState, x, y, stage_costs, memo_depth, charged, has_charged, y_lo) -> BOState:
    i = state.n
    K = state.stage_costs.shape[1]
    y = jnp.asarray(y, state.y.dtype)
    costs = jnp.asarray(stage_costs, state.stage_costs.dtype).reshape(K)
    memo_depth = jnp.asarray(memo_depth, jnp.int32)
    failed = ~jnp.isfinite(y)
    # Default charge: epsilon per restored stage + the full cost of the others
    # (stages that never ran, NaN, cost nothing).
    k = jnp.arange(K)
    default = jnp.sum(jnp.where(k < memo_depth, state.params.epsilon, jnp.nan_to_num(costs, nan=0.0)))
    charge = jnp.where(has_charged, jnp.asarray(charged, state.charged.dtype), default)
    spent = state.spent + charge
    is_warm = i < state.n_warmup
    return state._replace(
        X=state.X.at[i].set(jnp.asarray(x, state.X.dtype)),
        y=state.y.at[i].set(jnp.where(failed, jnp.nan, y)),
        y_lo=state.y_lo.at[i].set(jnp.where(failed, 0.0, jnp.asarray(y_lo, state.y_lo.dtype))),
        stage_costs=state.stage_costs.at[i].set(costs),
        memo_depth=state.memo_depth.at[i].set(memo_depth),
        charged=state.charged.at[i].set(charge),
        failed=state.failed.at[i].set(failed),
        warmup=state.warmup.at[i].set(is_warm),
        n=i + 1,
        spent=spent,
        b0=jnp.where(i + 1 == state.n_warmup, spent, state.b0),
    )


def check_state(state: Any) -> BOState:
    """``state``, checked on the host to be a :class:`BOState` (``ValueError`` naming it)."""
    return checks.instance(state, BOState, "state", "from eeipu_jax.loop.init")


def tell(state: BOState, x, y, stage_costs, memo_depth=0, charged=None) -> BOState:
    """Record one finished (or failed) trial.

    Every argument is validated here, on the host, before anything is traced;
    a bad value raises ``ValueError`` naming the argument. Numbers may be
    Python or NumPy scalars or 0-d arrays.

    Args:
        state: current state; grown to the next capacity bucket if full.
        x: ``(d,)`` unit-cube point that ran (as proposed: snapped), finite
            and in ``[0, 1]`` (up to 1e-5 of rounding, then clipped).
        y: objective. NaN marks a failed trial; ``+inf`` and ``-inf`` are
            recorded as failed trials too (the optimizer cannot rank them).
            Finite values must fit float32 (``|y| <= 3.4e38``): the state
            keeps them as a float32 hi/lo pair, so large offsets lose nothing.
        stage_costs: ``(K,)`` full cost of each stage, each finite ``>= 0`` or
            NaN for a stage that did not run. For memoized stages, the cost of
            computing them originally (finite). These are what the cost GPs
            learn.
        memo_depth: number of leading stages restored from the cache, an
            integer in ``[0, K - 1]``.
        charged: what the trial cost the budget (finite, ``>= 0``); by default
            ``epsilon * memo_depth + sum of the other stages' costs``. Real runs
            pass measured seconds (restore time + compute time).

    Returns:
        The new state.
    """
    check_state(state)
    x, hi, lo, costs, depth, charged = _check_trial(state, x, y, stage_costs, memo_depth, charged)
    state = ensure_capacity(state)
    has = charged is not None
    return _record_jit(canonicalize(state), x, hi, costs, depth, np.float32(0.0 if charged is None else charged),
                       has, lo)


# One compiled record per capacity (``has_charged`` is traced, so telling with
# and without a charge share it).
_record_jit = jit(_record)


def canonicalize(state: BOState) -> BOState:
    """Give every leaf its canonical dtype (drops JAX's weak types), so a state
    edited by hand (``state._replace(spent=1.0)``) does not recompile ``ask``."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.asarray(a).dtype), state)



def scale_free_objective(state: BOState):
    """``(u, ok, scale)``: the finished trials (``ok``) and their objectives
    on the scale-free scale the GP is fitted on (:func:`eeipu_jax.gp.scale_free`
    with ``robust``: relative to the first finished trial, outliers squashed,
    divided by the largest difference, so in ``[-1, 1]``; 0 where not ``ok``),
    and that scale (objective units per unit of ``u``). See "Outliers" in the
    module docstring."""
    ok = (jnp.arange(state.X.shape[0]) < state.n) & ~state.failed
    u, _, scale = gplib.scale_free(state.y, ok, state.y_lo, robust=True)
    return u, ok, scale


def scaled_objective(state: BOState):
    """The finished trials' objectives on the scale-free float32 scale of
    :func:`scale_free_objective` (in ``[-1, 1]``); NaN for failed trials and
    padded rows. An increasing affine change of the objective leaves these
    values unchanged (up to float32 rounding)."""
    u, ok, _ = scale_free_objective(state)
    return jnp.where(ok, u, jnp.nan)


def effective_objective(state: BOState):
    """``(valid, y_eff)``: which rows hold trials, and the objective the GP is
    fitted on, on the scale-free scale of :func:`scaled_objective`.

    Failed trials are set to the worst finished objective; before any trial
    has finished they (like every row) are 0, a constant that standardizes
    to 0. Padded rows are 0.
    """
    valid = jnp.arange(state.X.shape[0]) < state.n
    u = scaled_objective(state)  # NaN in failed and padded rows
    worst = jnp.min(jnp.where(valid & ~state.failed, u, jnp.inf))
    worst = jnp.where(jnp.isfinite(worst), worst, 0.0)
    return valid, jnp.where(valid, jnp.where(state.failed, worst, u), 0.0)


def pool_eligible(state: BOState, config: BOConfig):
    """Rows that may provide memoized prefixes: finished trials (BO-phase
    ones only with ``prefix_pool="post_warmup"``)."""
    ok = (jnp.arange(state.X.shape[0]) < state.n) & ~state.failed
    if config.prefix_pool == "post_warmup":
        ok = ok & ~state.warmup
    return ok


def prefix_pool(state: BOState, config: BOConfig, y_eff=None) -> candlib.PrefixPool:
    """The memoized prefixes the next ``ask`` may propose, and the prefixes a
    ``top_q`` stage cache must keep: one definition for both.

    :func:`ask` proposes memoized candidates only from this pool, the
    simulated cache (:func:`eeipu_jax.simulate.is_cached`) holds exactly
    these prefixes, and the real runtime keeps exactly the stage outputs of
    these prefixes (the study's ``pool_keys``), so a memoized proposal is
    never a cache miss. Trials are ranked by the objective the GP sees
    (:func:`effective_objective`, an increasing function of the objective
    told).

    Pure and jittable; call it on the host after :func:`tell` to know what to
    keep.

    Returns:
        A :class:`eeipu_jax.candidates.PrefixPool`: for each depth
        ``j = 1 .. K-1`` (row ``j - 1``), up to ``top_q`` observation rows
        whose depth-``j`` prefix is on offer, with a validity mask.
    """
    if y_eff is None:
        _, y_eff = effective_objective(state)
    return candlib.prefix_pool(state.X, y_eff, pool_eligible(state, config), config.top_q,
                               jnp.asarray(config.prefix_masks), config.prefix_select)



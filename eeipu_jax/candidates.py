"""Candidate batches: quasi-random points plus memoized-prefix candidates.

One ``ask`` scores a single fixed-shape batch:

* ``n_random`` shifted-Sobol points in the unit cube (memo depth 0),
* optionally ``n_local`` Gaussian perturbations of each top observation
  (memo depth 0), and, for memoizing methods,
* for each prefix length ``j = 1 .. K-1`` and each of the ``Q`` depth-``j``
  prefixes of the pool (:func:`prefix_pool`: the prefixes of the top-``Q``
  observations, or the ``Q`` best distinct depth-``j`` prefixes),
  ``n_per_prefix`` points whose columns of stages ``0..j-1`` are copied from
  the observation providing the prefix (so the run can restore its cached
  stage ``j`` output) and whose other columns are quasi-random. Each carries
  its memo depth ``j`` and the index of the observation it copies
  (``source``).

The pool is also what a stage cache keeps (``top_q`` policy): the simulated
cache (:mod:`eeipu_jax.simulate`) and the real one ask the same function, so
every memoized proposal is a cache hit. Pool entries that repeat an earlier
prefix, or pad a depth with fewer than ``Q`` prefixes, are marked invalid
rather than removed, keeping the shape fixed. The best few
candidates are then refined by a few projected Adam steps on their free
coordinates (the prefix stays pinned, so the memo depth stays true).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

from eeipu_jax.costs import sobol_table

__all__ = [
    "Batch",
    "PrefixPool",
    "PREFIX_SELECT",
    "quasi_random",
    "same_prefix",
    "prefix_pool",
    "candidate_batch",
    "top_per_depth",
    "refine",
]


class Batch(NamedTuple):
    """A fixed-shape batch of candidates."""

    x: Float[Array, "b d"]
    depth: Int[Array, " b"]
    source: Int[Array, " b"]  # observation row the prefix comes from, -1 if none
    valid: Bool[Array, " b"]


def quasi_random(key, n: int, d: int, dtype=jnp.float32) -> Float[Array, "n d"]:
    """``n`` Sobol points in ``[0, 1]^d`` with a random shift (mod 1)."""
    table = jnp.asarray(sobol_table(n, d), dtype)
    return jnp.mod(table + jax.random.uniform(key, (d,), dtype), 1.0)


class PrefixPool(NamedTuple):
    """The memoized prefixes on offer: for each depth ``j = 1 .. K-1``, up to
    ``q`` prefixes, each named by the observation row that provides it.

    This is at once what the optimizer may propose (candidates copy the
    prefix columns of ``source``) and what a stage cache keeps under the
    ``top_q`` policy (the stage ``j - 1`` outputs of these prefixes), so a
    memoized proposal is always a cache hit (see :func:`prefix_pool`).
    """

    source: Int[Array, "km1 q"]  # row [j - 1, i]: observation providing the i-th depth-j prefix
    ok: Bool[Array, "km1 q"]  # the entry is a real, distinct prefix (False: padding or a repeat)


PREFIX_SELECT = ("top_trials", "top_prefixes")


def same_prefix(X, prefix_masks):
    """``(K - 1, N, N)``: whether rows ``a`` and ``b`` share their depth-``j`` prefix.

    Exact equality of the prefix columns (a cache key is exact too). One
    ``(N, N)`` comparison per column, accumulated in a loop, so memory stays
    ``O(K N^2)`` for any number of columns.
    """
    N, d = X.shape
    K = prefix_masks.shape[0] - 1
    masks = prefix_masks[1:K]  # (K-1, d)

    def body(c, mism):
        col = jax.lax.dynamic_index_in_dim(X, c, axis=1, keepdims=False)
        neq = col[:, None] != col[None, :]
        use = jax.lax.dynamic_index_in_dim(masks, c, axis=1, keepdims=False)  # (K-1,)
        return mism + (use[:, None, None] & neq[None]).astype(jnp.int32)

    mism = jax.lax.fori_loop(0, d, body, jnp.zeros((K - 1, N, N), jnp.int32))
    return mism == 0


def prefix_pool(X, y, eligible, q: int, prefix_masks, select: str = "top_trials") -> PrefixPool:
    """The prefixes on offer (and kept by a ``top_q`` cache): one definition.

    Args:
        X: ``(N, d)`` observations (unit cube).
        y: ``(N,)`` objective values (higher is better; ties go to the
            earlier row).
        eligible: ``(N,)`` rows allowed to provide prefixes (finished trials,
            and with ``prefix_pool="post_warmup"`` only BO-phase ones).
        q: prefixes per depth.
        prefix_masks: ``(K + 1, d)`` boolean column masks of each prefix depth.
        select: ``"top_trials"``: at every depth, the prefixes of the ``q``
            best eligible trials (the EEIPU authors' pool; a prefix that a
            better trial already provides is marked ``ok=False``, so several
            top trials sharing one prefix offer it once and the depth has
            fewer than ``q`` distinct prefixes). ``"top_prefixes"``: at each
            depth ``j`` separately, the ``q`` best *distinct* depth-``j``
            prefixes, a prefix ranked by the best eligible trial that has it
            (which also provides it).

    Returns:
        A :class:`PrefixPool` of shape ``(K - 1, q)`` (``q`` capped at ``N``).
        Pure and jittable; the host calls it too (through
        :func:`eeipu_jax.loop.prefix_pool`) to decide what a stage cache keeps.
    """
    if select not in PREFIX_SELECT:
        raise ValueError(f"prefix selection must be one of {PREFIX_SELECT}, got {select!r}")
    N = X.shape[0]
    q = min(q, N)
    K = prefix_masks.shape[0] - 1
    score = jnp.where(eligible, y, -jnp.inf)
    if select == "top_trials":
        top_val, idx = jax.lax.top_k(score, q)
        row_ok = jnp.isfinite(top_val)
        P = X[idx]  # (q, d)

        def one_depth(mask):
            same = jnp.all(jnp.where(mask, P[:, None, :] == P[None, :, :], True), axis=-1)  # (q, q)
            earlier = jnp.tril(jnp.ones((q, q), bool), k=-1)  # [a, b]: b < a
            dup = jnp.any(same & earlier & row_ok[None, :], axis=1)
            return row_ok & ~dup

        ok = jax.vmap(one_depth)(prefix_masks[1:K])  # (K-1, q)
        return PrefixPool(jnp.broadcast_to(idx[None, :], ok.shape).astype(jnp.int32), ok)

    # "top_prefixes": a row leads its prefix group if no eligible row that
    # ranks before it (higher y, or equal y and earlier) shares the prefix.
    rows = jnp.arange(N)
    before = (score[None, :] > score[:, None]) | ((score[None, :] == score[:, None]) & (rows[None, :] < rows[:, None]))
    same = same_prefix(X, prefix_masks)  # (K-1, N, N)
    led = jnp.any(same & before[None] & eligible[None, None, :], axis=2)  # (K-1, N)
    leader = eligible[None, :] & ~led
    top_val, idx = jax.lax.top_k(jnp.where(leader, score[None, :], -jnp.inf), q)  # (K-1, q)
    return PrefixPool(idx.astype(jnp.int32), jnp.isfinite(top_val))


def _local(key, centres, n: int, scales, dtype):
    """``n`` Gaussian perturbations of each centre, clipped to the cube.

    ``centres`` has shape ``(..., d)``; the result ``(..., n, d)``.
    Perturbation ``i`` uses ``scales[i % len(scales)]`` (unit-cube units), so
    each centre gets a spread of step sizes.
    """
    lead = centres.shape[:-1]
    z = jax.random.normal(key, lead + (n, centres.shape[-1]), dtype)
    sig = jnp.asarray([scales[i % len(scales)] for i in range(n)], dtype)[:, None]
    return jnp.clip(centres[..., None, :] + sig * z, 0.0, 1.0)


def candidate_batch(
    key,
    X,
    y,
    pool_ok,
    *,
    n_random: int,
    n_per_prefix: int,
    q: int,
    prefix_masks,
    memoize: bool,
    n_local: int = 0,
    local_scales: tuple = (0.02, 0.05, 0.15),
    select: str = "top_trials",
    pool: PrefixPool | None = None,
) -> Batch:
    """Build the candidate batch of one ``ask`` (see the module docstring).

    The memoized prefixes are those of :func:`prefix_pool` (``pool``, or
    computed here from ``X, y, pool_ok, q, prefix_masks, select``): for each
    depth ``j`` and each of its ``q`` pool entries, ``n_per_prefix`` points
    copy the entry's prefix columns exactly and fill the others
    quasi-randomly.

    With ``n_local > 0``, each of the top-``q`` observations also contributes
    ``n_local`` Gaussian perturbations of itself (fresh runs, every method), and
    for memoizing methods half of each prefix's free points perturb the source
    observation's own free coordinates instead of being uniform: local search
    around the best runs, which uniform points in a 5-10 dimensional cube
    rarely provide.
    """
    d = X.shape[1]
    k_rand, k_pref, k_loc = jax.random.split(key, 3)
    xr = quasi_random(k_rand, n_random, d, X.dtype)
    parts = [Batch(xr, jnp.zeros(n_random, jnp.int32), jnp.full(n_random, -1, jnp.int32),
                   jnp.ones(n_random, bool))]
    K = prefix_masks.shape[0] - 1
    if n_local > 0:
        qq = min(q, X.shape[0])
        top_val, top = jax.lax.top_k(jnp.where(pool_ok, y, -jnp.inf), qq)
        xl = _local(k_loc, X[top], n_local, local_scales, X.dtype)
        parts.append(Batch(
            xl.reshape(-1, d),
            jnp.zeros(qq * n_local, jnp.int32),
            jnp.full(qq * n_local, -1, jnp.int32),
            jnp.repeat(jnp.isfinite(top_val), n_local),
        ))
    if memoize and K > 1 and n_per_prefix > 0:
        if pool is None:
            pool = prefix_pool(X, y, pool_ok, q, prefix_masks, select)
        src, ok = pool.source.T, pool.ok.T  # (q, K-1): slot-major, as the batch is laid out
        qq = src.shape[0]
        k_free, k_shift, k_near = jax.random.split(k_pref, 3)
        free = quasi_random(k_free, n_per_prefix, d, X.dtype)  # shared free part, shifted per slot
        shifts = jax.random.uniform(k_shift, (qq, K - 1, 1, d), X.dtype)
        free = jnp.mod(free[None, None] + shifts, 1.0)  # (q, K-1, n, d)
        if n_local > 0:
            n_near = n_per_prefix // 2
            near = _local(k_near, X[src], n_near, local_scales, X.dtype)  # (q, K-1, n_near, d)
            free = free.at[:, :, :n_near].set(near)
        depths = jnp.arange(1, K, dtype=jnp.int32)
        masks = prefix_masks[1:K]  # (K-1, d)
        xp = jnp.where(masks[None, :, None, :], X[src][:, :, None, :], free)
        dp = jnp.broadcast_to(depths[None, :, None], (qq, K - 1, n_per_prefix))
        sp = jnp.broadcast_to(src[:, :, None], (qq, K - 1, n_per_prefix)).astype(jnp.int32)
        vp = jnp.broadcast_to(ok[:, :, None], (qq, K - 1, n_per_prefix))
        parts.append(Batch(xp.reshape(-1, d), dp.reshape(-1), sp.reshape(-1), vp.reshape(-1)))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def top_per_depth(vals, depth, n_depths: int, k: int):
    """Indices of the ``k`` best candidates of each memo depth ``0 .. n_depths-1``.

    Args:
        vals: ``(b,)`` scores (``-inf`` for invalid candidates).
        depth: ``(b,)`` memo depth of each candidate.
        n_depths: number of depth groups (static).
        k: candidates per group (static).

    Returns:
        ``(idx, ok)``, both ``(n_depths * k,)``, group by group, best first:
        candidate indices and whether each is a real member of its group (a
        group with fewer than ``k`` finite scores is padded with ``ok=False``).
    """
    in_group = depth[None, :] == jnp.arange(n_depths, dtype=depth.dtype)[:, None]
    top_val, top = jax.lax.top_k(jnp.where(in_group, vals[None, :], -jnp.inf), k)
    return top.reshape(-1), jnp.isfinite(top_val).reshape(-1)


def refine(score, x0, free, steps: int, lr: float, finish=None):
    """Projected Adam ascent of ``score`` on the free coordinates of one point.

    Args:
        score: ``x -> float`` (already closed over depth and state).
        x0: ``(d,)`` start in the unit cube.
        free: ``(d,)`` bool, coordinates that may move.
        steps: number of Adam steps (static).
        lr: learning rate in unit-cube units.
        finish: optional ``x -> x`` applied to the end point (e.g. snapping
            it to representable values).

    Returns:
        The end point; with ``finish``, ``(finish(end), score(finish(end)))``:
        the finished point is scored by one more pass of the loop body, whose
        value and gradient share one forward pass, so a program that refines
        holds one copy of the score's forward pass, not a second one to score
        the refined points.
    """
    opt = optax.adam(lr)
    value_and_grad = jax.value_and_grad(lambda x: -score(x))
    n = steps if finish is None else steps + 1

    def step(carry, i):
        x, s, _ = carry
        last = i == steps  # only with finish: the pass that scores the finished point
        xq = x if finish is None else jnp.where(last, finish(x), x)
        v, g = value_and_grad(xq)
        g = jnp.where(free & jnp.isfinite(g), g, 0.0)
        upd, s = opt.update(g, s, x)
        x_new = jnp.clip(optax.apply_updates(x, upd), 0.0, 1.0)
        return (jnp.where(last, xq, x_new), s, -v), None

    v0 = jnp.zeros((), x0.dtype)
    (x1, _, v1), _ = jax.lax.scan(step, (x0, opt.init(x0), v0), jnp.arange(n))
    return x1 if finish is None else (x1, v1)


def prefix_masks_array(stage_of_column, n_stages: int) -> np.ndarray:
    """``(K + 1, d)`` boolean masks, row ``j`` = columns of stages ``< j``."""
    soc = np.asarray(stage_of_column)
    return soc[None, :] < np.arange(n_stages + 1)[:, None]

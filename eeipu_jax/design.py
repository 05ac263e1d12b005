"""Initial (warm-up) designs.

* :func:`random_design`: independent uniform points in the unit cube, snapped
  to representable values (what real pipelines use: costs are unknown before
  anything has run).
* :func:`cost_aware_design`: the warm-up the EEIPU authors used on synthetic
  pipelines, where stage costs are known functions. Each design point is the
  survivor of ``n_candidates`` uniform candidates after alternately dropping
  (a) the costliest remaining candidate and (b) -- once a point has been
  chosen -- the candidate most similar to the chosen points, similarity being
  the largest dot product with a chosen point (on raw values, as the authors
  computed it; which for positive boxes favours dropping large-norm points).
  With 10 candidates the first point is the cheapest of 10; later points
  survive 5 cost removals and 4 similarity removals. All methods of a seed
  share the design, and its true cost ``b0`` is charged to the budget.

Both are pure and jittable (fixed shapes, ``lax`` loops).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["random_design", "cost_aware_design"]


def random_design(key, n: int, dim: int, snap: Callable | None = None, dtype=jnp.float32):
    """``(n, dim)`` uniform unit-cube points (snapped if ``snap`` is given)."""
    u = jax.random.uniform(key, (n, dim), dtype)
    return snap(u) if snap is not None else u


def cost_aware_design(
    key,
    n: int,
    dim: int,
    total_cost: Callable,
    *,
    n_candidates: int = 10,
    to_raw: Callable | None = None,
    snap: Callable | None = None,
    dtype=jnp.float32,
):
    """The authors' cheap-and-diverse warm-up (see the module docstring).

    Args:
        key: PRNG key.
        n: number of design points.
        dim: unit-cube dimension.
        total_cost: ``u (dim,) -> total cost`` (known during the warm-up of a
            synthetic pipeline).
        n_candidates: uniform candidates per design point.
        to_raw: ``u (dim,) -> raw values`` for the dot-product similarity
            (identity if ``None``).
        snap: optional snapping of candidates to representable points.

    Returns:
        ``(n, dim)`` unit-cube design.
    """
    to_raw = to_raw if to_raw is not None else (lambda u: u)
    keys = jax.random.split(key, n)

    def pick(i, chosen):
        cand = jax.random.uniform(keys[i], (n_candidates, dim), dtype)
        if snap is not None:
            cand = snap(cand)
        cost = jax.vmap(total_cost)(cand)
        raw_cand = jax.vmap(to_raw)(cand)
        raw_chosen = jax.vmap(to_raw)(chosen)
        row_ok = jnp.arange(n) < i
        sim = jnp.max(jnp.where(row_ok[None, :], raw_cand @ raw_chosen.T, -jnp.inf), axis=1)

        def remove(r, alive):
            use_sim = (r % 2 == 1) & (i > 0) & (alive.sum() > 1)
            score = jnp.where(use_sim, sim, cost)
            worst = jnp.argmax(jnp.where(alive, score, -jnp.inf))
            return alive.at[worst].set(False)

        alive = jax.lax.fori_loop(0, n_candidates - 1, remove, jnp.ones(n_candidates, bool))
        return chosen.at[i].set(cand[jnp.argmax(alive)])

    return jax.lax.fori_loop(0, n, pick, jnp.zeros((n, dim), dtype))

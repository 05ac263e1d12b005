"""Saving and restoring a :class:`~eeipu_jax.loop.BOState` (and a PRNG key) with orbax.

The state is a NamedTuple of arrays, so orbax's ``StandardCheckpointer``
handles it directly; restoring against the abstract shape of a template state
gives back the same NamedTuple types. Orbax writes into a temporary directory
and renames it when complete, so an interrupted save never leaves a checkpoint
that restores half-written.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["save_state", "restore_state"]


def save_state(path: str | os.PathLike, state: Any, key: jax.Array | None = None) -> None:
    """Save ``state`` (and optionally a PRNG ``key``) to directory ``path`` (overwritten)."""
    payload = {"state": state}
    if key is not None:
        payload["key"] = jax.random.key_data(key)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.abspath(os.fspath(path)), payload, force=True)
    ckpt.wait_until_finished()


def restore_state(path: str | os.PathLike, like: Any, with_key: bool = False):
    """Restore a state saved by :func:`save_state`.

    Args:
        path: checkpoint directory.
        like: a state with the same structure and shapes (e.g. from
            :func:`eeipu_jax.loop.init` and :func:`eeipu_jax.loop.grow`); its
            values are ignored.
        with_key: also restore and return the PRNG key.

    Returns:
        ``state`` or ``(state, key)``.
    """
    path = os.path.abspath(os.fspath(path))
    ckpt = ocp.StandardCheckpointer()
    meta = ckpt.metadata(path)
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
    # Capacity may have grown since ``like`` was made: take shapes from disk.
    saved_X = tree["state"]["X"] if isinstance(tree, dict) else None
    if saved_X is not None and tuple(saved_X.shape) != tuple(like.X.shape):
        from eeipu_jax.loop import grow

        like = grow(like, int(saved_X.shape[0]))
    target: dict[str, Any] = {"state": jax.tree.map(ocp.utils.to_shape_dtype_struct, like)}
    if isinstance(tree, dict) and "key" in tree:
        target["key"] = jax.ShapeDtypeStruct(tuple(tree["key"].shape), np.dtype(tree["key"].dtype))
    out = ckpt.restore(path, target)
    # Host round trip: uncommitted arrays with canonical (non-weak) types, so
    # the restored state hits the same compiled ``ask`` as a live one.
    state = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), out["state"])
    if not with_key:
        return state
    if "key" not in out:
        raise KeyError(f"checkpoint {path} holds no PRNG key")
    return state, jax.random.wrap_key_data(jnp.asarray(np.asarray(out["key"])))

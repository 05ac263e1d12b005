"""Saving and restoring a :class:`~eeipu_jax.loop.BOState` (and a PRNG key) with orbax.

The state is a NamedTuple of arrays, so orbax's ``StandardCheckpointer``
handles it directly; restoring against the abstract shape of a template state
gives back the same NamedTuple types. Orbax writes into a temporary directory
and renames it when complete, so an interrupted save never leaves a checkpoint
that restores half-written.

Checkpoints written before ``BOState`` gained ``y_lo`` (the low float32 part
of each objective), ``n_fallback`` and ``gittins`` (the Gittins-index state)
restore with those fields at the template's values (those of
:func:`eeipu_jax.loop.init`: zeros, and the initial ``lambda``): the
objectives of such a run were stored as float32 only, and it used no
Gittins index.
Checkpoints written before the state kept the GPs' Cholesky factors
(``chol``, ``n_chol``, ``n_fit``, ``n_refits``) restore with none kept and no
refit recorded (the template's ``n_chol = 0``), so the next ``ask`` refits the
hyperparameters (cold) and factors anew. The factors are part of the state and
of its checkpoints (``M x N x N`` float32: 4 MB for 4 GPs at capacity 512), so a
resumed run continues exactly where it stopped.
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


# Fields added to BOState after checkpoints were first written; an older
# checkpoint gets the template's (``loop.init``'s) values for them.
_NEWER_FIELDS = ("y_lo", "n_fallback", "gittins", "chol", "n_chol", "n_fit", "n_refits")


def _fields_added_since(like: Any, saved_fields) -> list[str]:
    if saved_fields is None or not hasattr(like, "_fields"):
        return []
    missing = [f for f in like._fields if f not in saved_fields]
    unknown = [f for f in missing if f not in _NEWER_FIELDS]
    if unknown:
        raise ValueError(f"checkpoint state lacks field(s) {unknown}: not a checkpoint of this state type")
    return missing


def restore_state(path: str | os.PathLike, like: Any, with_key: bool = False):
    """Restore a state saved by :func:`save_state`.

    Args:
        path: checkpoint directory.
        like: a state with the same structure and shapes (e.g. from
            :func:`eeipu_jax.loop.init` and :func:`eeipu_jax.loop.grow`); its
            values are ignored, except for fields an older checkpoint lacks.
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
    saved_fields = set(tree["state"]) if isinstance(tree, dict) and isinstance(tree.get("state"), dict) else None
    missing = _fields_added_since(like, saved_fields)
    like_saved = like if not missing else {k: v for k, v in like._asdict().items() if k not in missing}
    target: dict[str, Any] = {"state": jax.tree.map(ocp.utils.to_shape_dtype_struct, like_saved)}
    if isinstance(tree, dict) and "key" in tree:
        target["key"] = jax.ShapeDtypeStruct(tuple(tree["key"].shape), np.dtype(tree["key"].dtype))
    out = ckpt.restore(path, target)
    restored = out["state"]
    if missing:
        # An older checkpoint: the newer fields take the template's values.
        restored = type(like)(**{**{k: getattr(like, k) for k in missing}, **restored})
    # Host round trip: uncommitted arrays with canonical (non-weak) types, so
    # the restored state hits the same compiled ``ask`` as a live one.
    state = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), restored)
    if not with_key:
        return state
    if "key" not in out:
        raise KeyError(f"checkpoint {path} holds no PRNG key")
    return state, jax.random.wrap_key_data(jnp.asarray(np.asarray(out["key"])))

"""Saving and restoring a :class:`~eeipu_jax.loop.BOState` (and a PRNG key) with orbax.

The state is a NamedTuple of arrays, so orbax's ``StandardCheckpointer``
handles it directly; restoring against the abstract shape of a template state
gives back the same NamedTuple types. Orbax writes into a temporary directory
and renames it when complete, so an interrupted save never leaves a checkpoint
that restores half-written.

A checkpoint restores only into a state of the same layout (the same
fields, method state and params structure; the capacity may differ: it is
read from disk). One written by a different version of the state is refused
with a ``ValueError``; a study then rebuilds its state from its
``trials.jsonl``, the record every trial is on (see
:mod:`eeipu_jax.runtime.rundir`). The GPs' Cholesky factors are part of the
state (``M x N x N`` float32: 4 MB for 4 GPs at capacity 512), so a resumed
run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from eeipu_jax.state import grow
from eeipu_jax.utils import interrupts_deferred

__all__ = ["save_state", "restore_state"]


class _SaveErrors(logging.Filter):
    """Drops the errors orbax's background threads log (with tracebacks) on absl's logger while
    :func:`save_state` runs: a failed save raises that error to the caller, so the log would only
    repeat it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def save_state(path: str | os.PathLike, state: Any, key: jax.Array | None = None) -> None:
    """Save ``state`` (and optionally a PRNG ``key``) to directory ``path`` (overwritten).

    Returns once the save is complete, and leaves no orbax thread behind: a
    Ctrl-C during the save is delivered when it is complete
    (:func:`eeipu_jax.utils.interrupts_deferred`), and any other exception
    (``KeyboardInterrupt`` raised another way included) waits for orbax's
    background writes to finish before it propagates, so none is still
    running (and printing tracebacks) while the process exits.

    Raises:
        Exception: what orbax raises when the save fails (e.g. a ``ValueError``
            ``RESOURCE_EXHAUSTED`` on a full disk); orbax's temporary directory
            may be left next to ``path``.
    """
    payload = {"state": state}
    if key is not None:
        payload["key"] = jax.random.key_data(key)
    ckpt = ocp.StandardCheckpointer()
    absl_logger = logging.getLogger("absl")  # where orbax logs
    quiet = _SaveErrors()
    absl_logger.addFilter(quiet)
    try:
        with interrupts_deferred():
            try:
                ckpt.save(os.path.abspath(os.fspath(path)), payload, force=True)
                ckpt.wait_until_finished()
            except BaseException:
                with contextlib.suppress(Exception):
                    ckpt.close()  # waits for the background writes
                raise
            ckpt.close()
    finally:
        absl_logger.removeFilter(quiet)


def restore_state(path: str | os.PathLike, like: Any, with_key: bool = False):
    """Restore a state saved by :func:`save_state`.

    Args:
        path: checkpoint directory.
        like: a state with the same structure (e.g. from
            :func:`eeipu_jax.loop.init`); its values and capacity are ignored.
        with_key: also restore and return the PRNG key.

    Returns:
        ``state`` or ``(state, key)``.

    Raises:
        ValueError: the checkpoint holds a state of another layout.
    """
    path = os.path.abspath(os.fspath(path))
    ckpt = ocp.StandardCheckpointer()
    meta = ckpt.metadata(path)
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
    # Capacity may have grown since ``like`` was made: take shapes from disk.
    saved_X = tree["state"]["X"] if isinstance(tree, dict) else None
    if saved_X is not None and tuple(saved_X.shape) != tuple(like.X.shape):
        like = grow(like, int(saved_X.shape[0]))
    saved = tree.get("state") if isinstance(tree, dict) else None
    if isinstance(saved, dict) and hasattr(like, "_fields") and set(saved) != set(like._fields):
        raise ValueError(
            f"checkpoint {path} holds a state with fields {sorted(saved)}, not this state's "
            f"{sorted(like._fields)}: it was written by another version of the state"
        )
    target: dict[str, Any] = {"state": jax.tree.map(ocp.utils.to_shape_dtype_struct, like)}
    if isinstance(tree, dict) and "key" in tree:
        target["key"] = jax.ShapeDtypeStruct(tuple(tree["key"].shape), np.dtype(tree["key"].dtype))
    try:
        out = ckpt.restore(path, target)
    except (ValueError, KeyError, TypeError) as e:  # the same fields, another structure inside them
        raise ValueError(f"checkpoint {path} does not match this state's structure ({type(e).__name__}: {e})") from None
    restored = out["state"]
    # Host round trip: uncommitted arrays with canonical (non-weak) types, so
    # the restored state hits the same compiled ``ask`` as a live one.
    state = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), restored)
    if not with_key:
        return state
    if "key" not in out:
        raise KeyError(f"checkpoint {path} holds no PRNG key")
    return state, jax.random.wrap_key_data(jnp.asarray(np.asarray(out["key"])))

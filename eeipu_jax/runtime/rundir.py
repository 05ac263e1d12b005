"""A study's run directory: the process lock and the optimizer checkpoints.

* **Lock.** ``<run>/.lock`` is held (``fcntl.flock``, exclusive, non-blocking)
  by the process running the directory, so a second process is refused
  instead of interleaving trials. The kernel drops the lock when its process
  dies, so a killed run leaves nothing to clean up.
* **Checkpoints.** After every trial the :class:`~eeipu_jax.loop.BOState` and
  the PRNG key are saved with orbax under ``<run>/checkpoints/<n>/`` (``n``:
  trials told, zero-padded); the latest two are kept. Orbax writes into a
  temporary directory renamed when complete; a half-written one left by a
  kill is removed before a restore, and an unreadable checkpoint falls back
  to the one before it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil

from eeipu_jax.checkpoint import restore_state, save_state
from eeipu_jax.runtime.settings import ConfigError

__all__ = ["lock", "checkpoint_dirs", "save_checkpoint", "restore_checkpoint"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def lock(run_dir: str):
    """Hold the run directory's lock for the block.

    Raises:
        ConfigError: another process holds it.
    """
    fh = open(os.path.join(run_dir, ".lock"), "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise ConfigError(f"run directory {run_dir!r} is in use by another process") from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def checkpoint_dirs(run_dir: str) -> list[tuple[int, str]]:
    """``[(n, path), ...]`` of the complete checkpoints, oldest first."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        if name.isdigit():  # orbax's in-progress directories carry a suffix
            out.append((int(name), os.path.join(root, name)))
    return sorted(out)


def save_checkpoint(run_dir: str, state, key) -> None:
    """Save ``(state, key)`` as checkpoint ``state.n``; keep the latest two."""
    n = int(state.n)
    path = os.path.join(run_dir, "checkpoints", f"{n:08d}")
    if os.path.exists(path):  # a resumed run re-saving the same step
        shutil.rmtree(path)
    save_state(path, state, key)
    for _, old in checkpoint_dirs(run_dir)[:-2]:
        shutil.rmtree(old)


def restore_checkpoint(run_dir: str, like):
    """The newest readable checkpoint's ``(state, key)``, or ``None``.

    Also removes checkpoints a killed process left half-written (orbax's
    temporary directories; never restored). The caller holds the lock.
    """
    root = os.path.join(run_dir, "checkpoints")
    for name in os.listdir(root) if os.path.isdir(root) else ():
        if not name.isdigit():
            shutil.rmtree(os.path.join(root, name))
    for _, path in reversed(checkpoint_dirs(run_dir)):
        try:
            return restore_state(path, like, with_key=True)
        except Exception as e:  # an unreadable checkpoint: fall back to an older one
            logger.warning("checkpoint %s is unreadable (%s: %s); trying an older one", path, type(e).__name__, e)
    return None

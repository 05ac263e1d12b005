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
  to the one before it. A save that fails (a full disk: orbax's
  ``RESOURCE_EXHAUSTED``) removes what it wrote and raises
  :class:`~eeipu_jax.runtime.settings.StorageError`; the records are on disk
  already, so the run resumes from the checkpoint before it.
* **Checkpoints the records do not cover.** A checkpoint counts the trials it
  has told (``n``); one with more trials than ``trials.jsonl`` holds (its
  last lines were lost) is never restored: :func:`restore_checkpoint` takes
  the newest readable one the records cover and removes the others, and the
  lost trials run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil

import jax

from eeipu_jax.checkpoint import restore_state, save_state
from eeipu_jax.runtime.records import ensure_free_space, writing
from eeipu_jax.runtime.settings import ConfigError, StorageError

__all__ = ["lock", "checkpoint_dirs", "save_checkpoint", "restore_checkpoint"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def lock(run_dir: str):
    """Hold the run directory's lock for the block.

    Raises:
        ConfigError: another process holds it.
        StorageError: the lock file cannot be created (a full disk).
    """
    path = os.path.join(run_dir, ".lock")
    with writing(f"the lock file {path}"):
        fh = open(path, "w")
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


def _cause(e: BaseException) -> tuple[str, int | None]:
    """``(one line, errno)`` of a failed save: an ``OSError``'s, or orbax's (tensorstore names the
    OS error as ``os_error_code='28'`` inside a message that holds the whole storage spec)."""
    if isinstance(e, OSError):
        return e.strerror or str(e), e.errno
    text = str(e).splitlines()[0] if str(e) else ""
    code = re.search(r"os_error_code='(\d+)'", text)
    status = re.match(r"[A-Z_]+(?=:)", text)
    if code:
        return f"{os.strerror(int(code.group(1)))} ({status.group(0) if status else type(e).__name__})", int(code.group(1))
    return f"{type(e).__name__}: {text[:200]}", None


def _remove_partial(root: str) -> None:
    """Remove what interrupted or failed saves left in ``root``: orbax's temporary directories."""
    for name in os.listdir(root) if os.path.isdir(root) else ():
        if not name.isdigit():
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def save_checkpoint(run_dir: str, state, key) -> None:
    """Save ``(state, key)`` as checkpoint ``state.n``; keep the latest two.

    Raises:
        StorageError: the checkpoint could not be written (a full disk); what
            the save wrote is removed, older checkpoints stay.
    """
    n = int(state.n)
    root = os.path.join(run_dir, "checkpoints")
    path = os.path.join(root, f"{n:08d}")
    try:
        if os.path.exists(path):  # a resumed run re-saving the same step
            shutil.rmtree(path)
        ensure_free_space(path, sum(leaf.nbytes for leaf in jax.tree.leaves(state)))
        save_state(path, state, key)
    except Exception as e:
        shutil.rmtree(path, ignore_errors=True)
        _remove_partial(root)
        text, errno = _cause(e)
        raise StorageError(f"could not write the checkpoint {path}: {text}", errno) from None
    for _, old in checkpoint_dirs(run_dir)[:-2]:
        shutil.rmtree(old)


def restore_checkpoint(run_dir: str, like, max_n: int | None = None):
    """The newest readable checkpoint's ``(state, key)`` of at most ``max_n`` trials, or ``None``.

    Also removes checkpoints a killed process left half-written (orbax's
    temporary directories; never restored) and, with ``max_n``, those of more
    trials than ``max_n`` (the records they count were lost: restoring them
    would tell the optimizer trials that are not on record). The caller holds
    the lock.
    """
    root = os.path.join(run_dir, "checkpoints")
    _remove_partial(root)
    for n, path in reversed(checkpoint_dirs(run_dir)):
        if max_n is not None and n > max_n:
            logger.warning("checkpoint %s counts %d trials, more than the %d on record; removing it (the "
                           "trials lost from the records run again)", path, n, max_n)
            shutil.rmtree(path)
            continue
        try:
            return restore_state(path, like, with_key=True)
        except Exception as e:  # an unreadable checkpoint: fall back to an older one
            logger.warning("checkpoint %s is unreadable (%s: %s); trying an older one", path, type(e).__name__, e)
    return None

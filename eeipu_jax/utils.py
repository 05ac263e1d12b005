"""Process-level conveniences (not used inside jitted code)."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading

import jax

__all__ = ["enable_compilation_cache", "default_cache_root", "interrupts_deferred", "collector_paused"]


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off inside the block, and back on after
    it only if it was on.

    The library's entry points that may trace a new program (``loop.ask``, the
    synthetic drivers' steps) run inside it: tracing and lowering the BO step
    allocate hundreds of thousands of Python objects, and the collector's
    passes over a large heap (jax, a user's pipeline, Ray) took 0.4-0.6 s of a
    first ask's ~2 s of tracing and lowering (docs/bo_step_profile.md,
    section 6). A compiled call runs in XLA; reference counting frees memory
    meanwhile, and cycles are collected after the block. With several threads
    inside at once, the collector is back on as soon as a thread that found it
    on leaves (a thread still inside then runs with it on, as without this).
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def default_cache_root() -> str:
    """``$EEIPU_JAX_CACHE`` or ``~/.cache/eeipu_jax``."""
    return os.environ.get("EEIPU_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "eeipu_jax"))


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache (XLA executables on disk).

    Compiling the BO step takes seconds to tens of seconds on a CPU; with the
    cache, a second process (a resumed run, another seed, a test worker)
    loads it instead. Set ``EEIPU_JAX_XLA_CACHE=off`` to disable.

    Returns:
        The cache directory, or ``None`` if disabled.
    """
    if os.environ.get("EEIPU_JAX_XLA_CACHE", "").lower() in ("off", "0", "false"):
        return None
    path = path or os.environ.get("EEIPU_JAX_XLA_CACHE") or os.path.join(default_cache_root(), "xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


@contextlib.contextmanager
def interrupts_deferred():
    """Hold a Ctrl-C (SIGINT) that arrives during the block until the block ends, then deliver it.

    For writes that must not stop halfway: an orbax save interrupted while its
    background threads write goes on in them, and they print tracebacks
    while the process exits. A second Ctrl-C during the block is delivered at
    once (a write that hangs can still be stopped). Only on the main thread
    and under a Python-level SIGINT handler (Python's default raises
    ``KeyboardInterrupt``); otherwise the block runs as it is. The handler is
    restored when the block ends.
    """
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if not callable(previous):
        yield
        return
    held: list = []

    def hold(signum, frame):
        if held:  # a second Ctrl-C: now
            previous(signum, frame)
        held.append((signum, frame))

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        previous(*held[0])

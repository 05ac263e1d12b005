"""Process-level conveniences (not used inside jitted code)."""

from __future__ import annotations

import os

import jax

__all__ = ["enable_compilation_cache", "default_cache_root"]


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

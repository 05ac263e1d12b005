"""Deprecated location: moved to :mod:`eeipu_jax.runtime.cache` (this module only re-exports it)."""

import warnings

from eeipu_jax.runtime.cache import CachePolicy, CacheStats, CorruptEntry, PACK_BYTES, StageCache, parse_bytes, prefix_keys, stage_cache_key  # noqa: F401

__all__ = ['CachePolicy', 'CacheStats', 'CorruptEntry', 'PACK_BYTES', 'StageCache', 'parse_bytes', 'prefix_keys', 'stage_cache_key']

warnings.warn(
    "pipelines.cache moved to eeipu_jax.runtime.cache; import from there",
    DeprecationWarning,
    stacklevel=2,
)

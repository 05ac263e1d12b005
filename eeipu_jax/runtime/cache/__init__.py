"""The stage-output cache: content-addressed orbax entries of stage outputs.

One job per module:

* :mod:`~eeipu_jax.runtime.cache.keys` -- what identifies a stage output (the
  SHA-256 of the pipeline, version, stage, seed and prefix hyperparameters);
* :mod:`~eeipu_jax.runtime.cache.codec` -- a stage output pytree <-> a JSON
  structure and the arrays orbax saves;
* :mod:`~eeipu_jax.runtime.cache.meta` -- an entry's ``meta.json``: its
  checksum and the checks of its values;
* :mod:`~eeipu_jax.runtime.cache.policy` -- which entries are kept
  (``top_q`` / ``all``) and the size limit;
* :mod:`~eeipu_jax.runtime.cache.store` -- the entries on disk: atomic
  writes, verified restores, the policy applied, LRU eviction, statistics.
"""

from eeipu_jax.runtime.cache.codec import PACK_BYTES
from eeipu_jax.runtime.cache.keys import prefix_keys, stage_cache_key
from eeipu_jax.runtime.cache.meta import CorruptEntry
from eeipu_jax.runtime.cache.policy import CachePolicy, parse_bytes
from eeipu_jax.runtime.cache.store import CacheStats, StageCache

__all__ = [
    "CachePolicy",
    "CacheStats",
    "CorruptEntry",
    "PACK_BYTES",
    "StageCache",
    "parse_bytes",
    "prefix_keys",
    "stage_cache_key",
]

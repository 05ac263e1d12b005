"""Stage-cache policies: which entries a cache keeps, and its size limit.

* ``"all"`` keeps every entry: each stage output is written as soon as the
  stage finishes.
* ``"top_q"`` keeps the entries of the prefixes of the ``q`` best finished
  trials of a run (by objective): a trial's outputs are written only once its
  objective places it among the top ``q``, and entries of the run's trials that
  drop out of the top ``q`` are deleted
  (:meth:`eeipu_jax.runtime.cache.StageCache.record_trial`). Inside a
  :class:`~eeipu_jax.runtime.study.Study` the kept prefixes are exactly the
  optimizer's prefix pool (:func:`eeipu_jax.loop.prefix_pool`), so what the
  optimizer proposes and what the cache keeps have one definition.

A byte limit with least-recently-used eviction applies on top of either
policy. :func:`parse_bytes` reads sizes such as ``"500MB"`` or ``"2GiB"``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["CachePolicy", "parse_bytes", "POLICIES"]

POLICIES = ("top_q", "all")

_BYTE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_bytes(text: str | int | float) -> int:
    """``"500MB"``, ``"2GiB"``, ``"1e9"`` or a number -> bytes (positive int)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        i = len(s)
        while i > 0 and s[i - 1].isalpha():
            i -= 1
        num, unit = s[:i], s[i:]
        if unit not in _BYTE_UNITS:
            raise ValueError(f"unknown byte unit {unit!r} in {text!r}; use one of B, KB, MB, GB, KiB, MiB, GiB")
        try:
            value = float(num) * _BYTE_UNITS[unit]
        except ValueError:
            raise ValueError(f"cannot read a byte size from {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"a byte size must be positive, got {text!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class CachePolicy:
    """Which entries a :class:`StageCache` keeps.

    Attributes:
        kind: ``"top_q"`` (prefixes of the ``q`` best finished trials) or
            ``"all"``.
        q: number of top trials whose prefixes are kept (``"top_q"``).
        max_bytes: size limit of the whole cache directory's entries (``None``:
            unlimited); least-recently-used entries are evicted beyond it.
    """

    kind: str = "top_q"
    q: int = 5
    max_bytes: int | None = None

    def __post_init__(self):
        if self.kind not in POLICIES:
            raise ValueError(f"cache policy must be one of {list(POLICIES)}, got {self.kind!r}")
        if isinstance(self.q, bool) or not isinstance(self.q, (int, np.integer)) or self.q < 1:
            raise ValueError(f"cache q must be a positive integer, got {self.q!r}")
        if self.max_bytes is not None and (
            isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, (int, np.integer)) or self.max_bytes <= 0
        ):
            raise ValueError(f"cache max_bytes must be a positive integer or None, got {self.max_bytes!r}")

    @property
    def eager(self) -> bool:
        """Whether outputs are written as soon as each stage finishes."""
        return self.kind == "all"

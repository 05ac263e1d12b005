"""Stage-cache keys: what identifies a stage output.

The output of stage ``j`` is stored under :func:`stage_cache_key`: the SHA-256
of a canonical JSON document holding the pipeline name and version, ``j``, the
run seed and the raw hyperparameters of stages ``0 .. j``. Keys are exact: any
byte of difference in a prefix parameter is a different entry; parameters of
later stages are not part of the key, so a candidate that shares a prefix with
an earlier trial finds that trial's entries.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["stage_cache_key", "prefix_keys"]


def _canonical_value(value: Any, where: str) -> Any:
    """A hyperparameter value as a JSON scalar with an exact representation."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{where}: non-finite hyperparameter value {value!r}")
        return v  # json writes repr(v), which round-trips exactly
    if value is None or isinstance(value, str):
        return value
    raise TypeError(
        f"{where}: hyperparameter value {value!r} of type {type(value).__name__} has no stable "
        "key; use bool, int, float, str or None"
    )


def stage_cache_key(
    pipeline: str, version: str, stage_index: int, params_prefix: Mapping[str, Mapping], seed: int
) -> str:
    """The cache key of stage ``stage_index``'s output.

    The key is ``sha256(doc).hexdigest()`` where ``doc`` is the UTF-8 JSON text
    (``sort_keys=True, separators=(",", ":")``) of::

        {"pipeline": name, "version": version, "stage": j, "seed": seed,
         "params": {stage_name: {param: value}} for stages 0..j}

    Args:
        pipeline: pipeline name.
        version: pipeline version (bump it when a stage's code changes).
        stage_index: ``j``, the stage whose output is keyed.
        params_prefix: raw hyperparameters of stages ``0 .. j`` in pipeline
            order, ``{stage_name: {param_name: value}}`` (exactly ``j + 1``
            stages).
        seed: the run seed (stage PRNG keys derive from it).

    Returns:
        A 64-character hex string.
    """
    if len(params_prefix) != stage_index + 1:
        raise ValueError(
            f"stage {stage_index}'s key needs the parameters of {stage_index + 1} stage(s), "
            f"got {len(params_prefix)}"
        )
    params = {
        str(stage): {
            str(k): _canonical_value(v, f"stage {stage!r} parameter {k!r}") for k, v in values.items()
        }
        for stage, values in params_prefix.items()
    }
    doc = {
        "pipeline": str(pipeline),
        "version": str(version),
        "stage": int(stage_index),
        "seed": int(seed),
        "params": params,
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prefix_keys(pipeline, params: Mapping[str, Mapping], seed: int) -> tuple[str, ...]:
    """Keys of stages ``0 .. K-2`` of ``pipeline`` for one configuration.

    Args:
        pipeline: a :class:`eeipu_jax.runtime.Pipeline`.
        params: nested raw configuration ``{stage_name: {param: value}}``.
        seed: run seed.

    Returns:
        ``K - 1`` keys (the last stage is never cached).
    """
    names = [s.name for s in pipeline.stages]
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"configuration has no parameters for stage(s) {missing}")
    return tuple(
        stage_cache_key(
            pipeline.name, pipeline.version, j, {n: params[n] for n in names[: j + 1]}, seed
        )
        for j in range(len(names) - 1)
    )

"""Ahead-of-time compilation of a pipeline's jitted stage functions.

A stage that calls a jitted function compiles it the first time it sees a new
static argument or input shape (a new batch size, say). On a CPU that can cost
several times the stage's own work (the ``segmentation`` pipeline at ``cpu``
size: about 16 s to compile the U-Net training for one batch size, 4 s to
run it). Charged to the trial that happens to use the shape first, it is noise
for the cost models: the same configuration costs 20 s once and 4 s after.
It is a per-process, per-shape cost, not a property of the hyperparameters,
so pipelines whose shapes come from a finite set compile them all in
``prepare()``, which the runner does not charge (like the authors' untimed
preprocessing). With JAX's persistent compilation cache, which
every tuning run of the experiment scripts turns on, only the first process on a
machine pays the full compile; the others load each executable in about a
second.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

__all__ = ["precompile"]

logger = logging.getLogger(__name__)


def precompile(fn: Callable, calls: Iterable[tuple[tuple, dict]], *, label: str = "") -> float:
    """Compile the jitted ``fn`` for each ``(args, static_kwargs)`` in ``calls``.

    ``args`` may hold arrays or :class:`jax.ShapeDtypeStruct`; the executables
    go into ``fn``'s own cache, so later calls with the same shapes, dtypes and
    static arguments do not compile again.

    Returns:
        Seconds spent.
    """
    t0 = time.perf_counter()
    n = 0
    for args, kwargs in calls:
        fn.lower(*args, **kwargs).compile()
        n += 1
    seconds = time.perf_counter() - t0
    logger.info("precompiled %s for %d shape(s) in %.1f s", label or getattr(fn, "__name__", "fn"), n, seconds)
    return seconds

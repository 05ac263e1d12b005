"""Stages and pipelines: the things being tuned.

A **stage** is a pure-ish function ``fn(inputs, params, key) -> output``:

* ``inputs`` is the previous stage's output pytree (for stage 0, the
  pipeline's ``prepare()`` output: data loaded once, untimed);
* ``params`` is a dict of this stage's raw hyperparameters (from its
  :class:`~eeipu_jax.space.StageSpace`);
* ``key`` is a PRNG key derived from the run's seed and the stage index only,
  so a stage computes the same output whether its inputs were just computed
  or restored from the cache (memoized restarts are bit-identical).

The output is a pytree of arrays (what the cache saves with orbax). The last
stage returns the objective: a scalar, or a dict with an ``"objective"`` entry
(and any other metrics). A **pipeline** is an ordered tuple of stages, a name
and a version (both part of every cache key, so bumping the version
invalidates cached outputs after a code change).

Example (a two-stage pipeline)::

    def fit(data, p, key):
        return {"w": jnp.linalg.solve(data["A"] + p["ridge"] * jnp.eye(3), data["b"])}

    def score(out, p, key):
        return -jnp.sum((out["w"] * p["scale"] - 1.0) ** 2)

    pipe = Pipeline(
        "toy", "1",
        stages=(Stage("fit", fit, (Float("ridge", 1e-3, 1.0, log=True),)),
                Stage("score", score, (Float("scale", 0.5, 2.0),))),
        prepare=lambda: {"A": jnp.eye(3), "b": jnp.ones(3)},
    )
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from eeipu_jax.runtime.records import jsonable
from eeipu_jax.runtime.settings import ConfigError
from eeipu_jax.space import SearchSpace, StageSpace

__all__ = ["Stage", "Pipeline", "PrepareError", "stage_key", "objective_of"]

logger = logging.getLogger(__name__)


class PrepareError(ConfigError):
    """A pipeline's ``prepare()`` raised: no trial can run (its data could not be loaded).

    The message names the pipeline and the original error (chained as
    ``__cause__``). A :class:`~eeipu_jax.runtime.settings.ConfigError`, so the
    ``eeipu`` command reports it on one line and exits with status 2; nothing
    is recorded, and a study continues once ``prepare()`` works.
    """


@dataclasses.dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    Attributes:
        name: stage name (unique in its pipeline; the search-space group name).
        fn: ``fn(inputs, params, key) -> output pytree``.
        params: the stage's hyperparameters (``Float``/``Int``/``Categorical``).
    """

    name: str
    fn: Callable[[Any, dict, jax.Array], Any]
    params: Sequence = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"a stage's name must be a non-empty string, got {self.name!r}")
        if not callable(self.fn):
            raise TypeError(f"stage {self.name!r}: fn must be a function fn(inputs, params, key) -> output, "
                            f"got {type(self.fn).__name__} {self.fn!r}")
        if isinstance(self.params, (str, bytes)) or not isinstance(self.params, Sequence):
            raise TypeError(f"stage {self.name!r}: params must be a sequence of Float/Int/Categorical, "
                            f"got {self.params!r}")

    @property
    def space(self) -> StageSpace:
        return StageSpace(self.name, tuple(self.params))


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """An ordered list of stages with a name, a version and a data loader.

    Attributes:
        name: pipeline name (part of cache keys).
        version: bump when a stage's code changes (part of cache keys).
        stages: the stages in order.
        prepare: ``() -> pytree`` loading the data stage 0 consumes (called
            once per process, untimed, like the authors' preprocessing).
        description: one line for ``--help`` and tables.
    """

    name: str
    version: str
    stages: tuple
    prepare: Callable[[], Any] = lambda: None
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ValueError(f"pipeline {self.name!r} has no stages")
        for s in self.stages:
            if not isinstance(s, Stage):
                raise TypeError(f"pipeline {self.name!r}: {s!r} is not a Stage")
        self.space  # validates names and parameters

    @property
    def space(self) -> SearchSpace:
        return SearchSpace([s.space for s in self.stages])

    @property
    def n_stages(self) -> int:
        return len(self.stages)


def stage_key(seed: int, stage_index: int) -> jax.Array:
    """The PRNG key of stage ``stage_index`` in a run with ``seed``."""
    return jax.random.fold_in(jax.random.key(seed), stage_index)


def _metric(name: str, value: Any) -> tuple[bool, Any]:
    """``(kept, value)``: an extra metric as ``trials.jsonl`` records it (see :func:`objective_of`)."""
    if isinstance(value, (bool, np.bool_, str)) or value is None:
        return True, value.item() if isinstance(value, np.bool_) else value
    if hasattr(value, "shape") and hasattr(value, "dtype") or isinstance(value, (int, float, np.number)):
        a = np.asarray(value)
        if a.ndim == 0 and a.dtype.kind in "biuf":
            return True, a.item() if a.dtype.kind == "b" else float(a)
        return False, f"an array of shape {a.shape} and dtype {a.dtype}"
    value = jsonable(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False, f"a {type(value).__name__}, not JSON"
    return True, value


def objective_of(output: Any) -> tuple[float, dict]:
    """``(objective, metrics)`` from a last stage's output (scalar or dict).

    Only the objective decides whether a trial succeeded. The other entries
    of a dict are kept as metrics when ``trials.jsonl`` can record them: a
    scalar number (Python, NumPy or JAX, 0-d arrays too) as a float, a bool,
    a string, ``None``, or a JSON value (lists and dicts of those). Anything
    else (an array of more than one element, an object) is dropped with a
    warning that names it; the trial stays ``ok``.

    Raises:
        KeyError: a dict without ``"objective"``.
        TypeError, ValueError: an objective that is not a scalar number.
    """
    if not isinstance(output, dict):
        return float(output), {}
    if "objective" not in output:
        raise KeyError("the last stage returned a dict without an 'objective' entry")
    objective = float(output["objective"])
    metrics = {}
    for name, value in output.items():
        if name == "objective":
            continue
        kept, value = _metric(name, value)
        if kept:
            metrics[name] = value
        else:
            logger.warning("metric %r of the last stage is %s; it is not recorded (record scalars, strings "
                           "or JSON values)", name, value)
    return objective, metrics

"""Synthetic pipelines whose stages sleep their simulated cost: parallel trials without cores.

``sleepy(name, scale)`` turns a synthetic pipeline of :mod:`pipelines.synthetic`
(the EEIPU paper's benchmarks, arXiv 2411.03731) into a runtime
:class:`~eeipu_jax.runtime.Pipeline`: stage ``s`` sleeps ``scale *
c_s(x_s)`` wall seconds (its simulated cost), passes the raw hyperparameters
seen so far to the next stage, and the last stage returns the synthetic
objective. A sleeping stage holds no core, so W trials at once need no W
cores: the parallel benchmark (``benchmarks/parallel.py``) and the Ray tests
measure scheduling, memoization and asynchrony, not compute. Stage outputs are
small NumPy arrays, so the stage cache works as for a real pipeline. The
cost and objective functions are jitted and compiled in ``prepare()`` (once
per process, untimed), so a trial's seconds are its sleeps.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np

from eeipu_jax.runtime.pipeline import Pipeline, Stage
from eeipu_jax.space import Float
from pipelines import synthetic

__all__ = ["sleepy"]


@functools.lru_cache(maxsize=None)
def _compiled(name: str):
    """The pipeline's jitted ``(stage costs, objective)`` of raw inputs, compiled in this process."""
    pipe = synthetic.get_pipeline(name)
    costs, objective = jax.jit(pipe.stage_costs_raw), jax.jit(pipe.objective_raw)
    zeros = np.zeros(pipe.dim, np.float32)
    jax.block_until_ready((costs(zeros), objective(zeros)))  # compile now: prepare() is untimed
    return costs, objective


def _stage_fn(pipe: synthetic.SyntheticPipeline, s: int, scale: float):
    names = [f"x{j}" for j in range(pipe.dims[s])]
    start = sum(pipe.dims[:s])
    last = s == pipe.n_stages - 1

    def fn(inputs, params, key):
        del key  # deterministic
        mine = np.asarray([params[n] for n in names], np.float32)
        seen = mine if inputs is None else np.concatenate([np.asarray(inputs["x"], np.float32), mine])
        full = np.zeros(pipe.dim, np.float32)
        full[: start + len(mine)] = seen
        costs, objective = _compiled(pipe.name)
        time.sleep(scale * float(costs(full)[s]))
        if last:
            return {"objective": float(objective(full))}
        return {"x": seen}

    return fn


def _prepare(name: str) -> None:
    _compiled(name)  # stage 0 reads no data


def sleepy(name: str = "synthetic3", scale: float = 0.01) -> Pipeline:
    """A synthetic pipeline whose stages sleep ``scale`` seconds per unit of simulated cost.

    Args:
        name: a synthetic pipeline or layout (:func:`pipelines.synthetic.get_pipeline`).
        scale: wall seconds per cost unit.

    Returns:
        The pipeline, named ``sleepy-<name>-<scale>`` (so caches of different
        scales never mix).
    """
    if not (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be positive seconds per cost unit, got {scale!r}")
    pipe = synthetic.get_pipeline(name)
    stages = []
    for s, (d, (lo, hi)) in enumerate(zip(pipe.dims, pipe.boxes)):
        params = [Float(f"x{j}", float(lo), float(hi)) for j in range(d)]
        stages.append(Stage(f"stage{s}", _stage_fn(pipe, s, float(scale)), params))
    return Pipeline(f"sleepy-{pipe.name}-{scale:g}", "1", tuple(stages),
                    prepare=functools.partial(_prepare, pipe.name),
                    description=f"{pipe.name} with stages sleeping {scale:g} s per cost unit")

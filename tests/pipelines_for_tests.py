"""Pipelines used by the runtime tests (importable as ``tests.pipelines_for_tests:<name>``).

``CALLS`` counts stage executions per (pipeline, stage) in this process, so a
test can tell a restored or re-told trial from a rerun one.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

from eeipu_jax.space import Categorical, Float
from eeipu_jax.runtime.pipeline import Pipeline, Stage
from pipelines.toy import make_toy_small

CALLS: collections.Counter = collections.Counter()
COMPLETED: collections.Counter = collections.Counter()


def _counted(pipeline: Pipeline, name: str) -> Pipeline:
    def wrap(stage: Stage) -> Stage:
        def fn(inputs, params, key):
            CALLS[(name, stage.name)] += 1
            return stage.fn(inputs, params, key)

        return Stage(stage.name, fn, stage.params)

    return Pipeline(name, pipeline.version, tuple(wrap(s) for s in pipeline.stages), pipeline.prepare)


@functools.lru_cache(maxsize=None)
def counting_toy() -> Pipeline:
    """The small demo pipeline with stage calls counted under ``"counting_toy"``.

    One instance per process, so its jitted stages compile once for all tests.
    """
    return _counted(make_toy_small(), "counting_toy")


def slow_toy() -> Pipeline:
    """The small demo pipeline whose training stage sleeps 0.15 s (kill tests)."""
    return make_toy_small(stage_sleep=(0.0, 0.15, 0.0))


@functools.lru_cache(maxsize=None)
def flaky() -> Pipeline:
    """Two stages; stage ``prep``'s ``mode`` makes the trial fail in each supported way.

    ``ok``: fine; ``raise``: ``prep`` raises; ``nan``: the objective is NaN;
    ``sleep``: ``prep`` sleeps 30 s (for time limits; ``COMPLETED`` counts
    ``prep`` calls that returned).
    """

    def prep(data, p, key):
        CALLS[("flaky", "prep")] += 1
        if p["mode"] == "raise":
            raise RuntimeError("prep exploded on purpose")
        if p["mode"] == "sleep":
            time.sleep(30.0)
        COMPLETED[("flaky", "prep")] += 1
        return {"v": jnp.asarray(p["a"], jnp.float32) * data["scale"], "nan": jnp.asarray(p["mode"] == "nan")}

    def fit(inputs, p, key):
        CALLS[("flaky", "fit")] += 1
        value = -((inputs["v"] - p["b"]) ** 2)
        return {"objective": jnp.where(inputs["nan"], jnp.nan, value), "v": inputs["v"]}

    return Pipeline(
        "flaky",
        "1",
        (
            Stage("prep", prep, (Categorical("mode", ("ok", "raise", "nan", "sleep")), Float("a", 0.0, 1.0))),
            Stage("fit", fit, (Float("b", 0.0, 1.0),)),
        ),
        prepare=lambda: {"scale": jnp.float32(2.0)},
    )


@functools.lru_cache(maxsize=None)
def failing_toy() -> Pipeline:
    """The counted small demo pipeline, failing in parts of its space.

    ``train`` raises when ``lr > 0.02``; the objective is NaN when
    ``scale > 1.2``. Same search space as :func:`counting_toy`, so the
    optimizer compiles once for both.
    """
    base = counting_toy()
    features, train, evaluate = base.stages

    def failing_train(inputs, p, key):
        if p["lr"] > 0.02:
            raise RuntimeError(f"diverged at lr={p['lr']:.3g} (on purpose)")
        return train.fn(inputs, p, key)

    def nan_evaluate(inputs, p, key):
        out = evaluate.fn(inputs, p, key)
        return {**out, "objective": jnp.nan} if p["scale"] > 1.2 else out

    return Pipeline(
        "failing_toy",
        base.version,
        (features, Stage("train", failing_train, train.params), Stage("evaluate", nan_evaluate, evaluate.params)),
        base.prepare,
    )


def fail_on_call(pipeline: Pipeline, stage_index: int, call: int = 2, name: str | None = None) -> Pipeline:
    """``pipeline`` (renamed ``name``) whose stage ``stage_index`` raises
    ``ValueError("injected failure")`` on its ``call``-th execution in this
    process and runs normally otherwise: an injected bad trial."""
    st = pipeline.stages[stage_index]
    calls = {"n": 0}

    def fn(data, p, key):
        calls["n"] += 1
        if calls["n"] == call:
            raise ValueError("injected failure")
        return st.fn(data, p, key)

    stages = pipeline.stages[:stage_index] + (Stage(st.name, fn, st.params),) + pipeline.stages[stage_index + 1:]
    return dataclasses.replace(pipeline, name=name or pipeline.name, stages=stages)


def raising_factory() -> Pipeline:
    """A pipeline factory that fails (as a user's may): the CLI must say so in one line."""
    raise RuntimeError("this factory fails on purpose")


def nan_choice() -> Pipeline:
    """The small demo pipeline with a categorical whose choices include NaN (no stable cache key)."""
    base = make_toy_small()
    first = base.stages[0]
    odd = Stage(first.name, first.fn, tuple(first.params) + (Categorical("mix", (0.5, float("nan"))),))
    return Pipeline("nan_choice", base.version, (odd,) + base.stages[1:], base.prepare)


def sleepy_small() -> Pipeline:
    """``synthetic3`` with stages sleeping 0.005 s per unit of simulated cost (Ray tests)."""
    from pipelines.sleepy import sleepy

    return sleepy("synthetic3", 0.005)


def stall_once(flag: str) -> Pipeline:
    """:func:`sleepy_small` whose first stage, the first time any process runs it,
    writes its process id to ``flag`` and sleeps 120 s: a worker to kill mid-trial.

    The file is created exclusively, so exactly one trial stalls.
    """
    import os

    base = sleepy_small()
    first = base.stages[0]

    def fn(inputs, params, key):
        try:
            fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return first.fn(inputs, params, key)
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120.0)
        return first.fn(inputs, params, key)

    stages = (Stage(first.name, fn, first.params),) + base.stages[1:]
    return dataclasses.replace(base, name="stall_once", stages=stages)


def bad_prepare() -> Pipeline:
    """The small demo pipeline whose ``prepare()`` raises (its data is missing)."""
    base = counting_toy()

    def prepare():
        raise FileNotFoundError("no such file: data/missing.npz")

    return dataclasses.replace(base, name="bad_prepare", prepare=prepare)


def sleepy_bad_prepare() -> Pipeline:
    """:func:`sleepy_small` whose ``prepare()`` raises (Ray tests)."""
    base = sleepy_small()

    def prepare():
        raise FileNotFoundError("no such file: data/missing.npz")

    return dataclasses.replace(base, name="sleepy_bad_prepare", prepare=prepare)


@functools.lru_cache(maxsize=None)
def extra_metrics() -> Pipeline:
    """:func:`counting_toy` whose last stage returns, beside a valid objective, metrics of
    every kind: scalars (Python, NumPy, JAX), a bool, a string, a JSON list, and two that
    ``trials.jsonl`` cannot record (a non-scalar array, an object)."""
    import numpy as np

    base = counting_toy()
    last = base.stages[-1]

    def evaluate(inputs, p, key):
        out = last.fn(inputs, p, key)
        return {**out, "note": "ok", "flag": True, "count": 3, "half": np.float32(0.5), "jax0d": jnp.float32(2.0),
                "pair": [1, "a"], "curve": jnp.arange(4.0), "model": object()}

    return dataclasses.replace(base, name="extra_metrics",
                               stages=base.stages[:-1] + (Stage(last.name, evaluate, last.params),))


@functools.lru_cache(maxsize=None)
def misbehaving() -> Pipeline:
    """Two stages of NumPy arrays whose ``fit`` stage misbehaves as its ``mode`` says.

    ``clean``: objective ``sum(v) + b``; ``assign``: reassigns an entry of
    its input dict first (allowed: its own container); ``inplace``: adds to
    its input array in place (refused: inputs are read-only); ``huge``: an
    objective of 1e39 (beyond float32); ``bigint``: ``10**400`` (beyond
    float64); ``exit``: ``sys.exit(0)``. ``prep``'s ``touch`` changes the
    prepared data in place when ``"yes"``.
    """
    import sys

    import numpy as np

    def prep(data, p, key):
        if p["touch"] == "yes":
            data["base"] *= 2.0
        return {"v": data["base"] * p["a"], "n": np.arange(3)}

    def fit(inputs, p, key):
        mode = p["mode"]
        if mode == "assign":
            inputs["v"] = inputs["v"] + 4.0
        elif mode == "inplace":
            inputs["v"] += 4.0
        elif mode == "huge":
            return {"objective": 1e39}
        elif mode == "bigint":
            return {"objective": 10**400}
        elif mode == "exit":
            sys.exit(0)
        return {"objective": float(np.sum(inputs["v"])) + p["b"]}

    return Pipeline(
        "misbehaving",
        "1",
        (
            Stage("prep", prep, (Float("a", 0.0, 1.0), Categorical("touch", ("no", "yes")))),
            Stage("fit", fit, (Categorical("mode", ("clean", "assign", "inplace", "huge", "bigint", "exit")),
                               Float("b", 0.0, 1.0))),
        ),
        prepare=lambda: {"base": np.ones(3)},
    )


def always(mode: str) -> Pipeline:
    """:func:`misbehaving` with ``fit`` always in ``mode`` (``"hang"``: ``prep`` sleeps 30 s), so every
    trial of a study meets it; one pipeline name per mode."""
    base = misbehaving()
    prep, fit = base.stages

    def fixed_prep(data, p, key):
        if mode == "hang":
            time.sleep(30.0)
        return prep.fn(data, {**p, "touch": "no"}, key)

    stages = (Stage("prep", fixed_prep, (Float("a", 0.0, 1.0),)),
              Stage("fit", lambda inputs, p, key: fit.fn(inputs, {**p, "mode": mode}, key), (Float("b", 0.0, 1.0),)))
    return dataclasses.replace(base, name=f"always_{mode}", stages=stages)


def always_exit() -> Pipeline:
    return always("exit")


def always_hang() -> Pipeline:
    return always("hang")


def extreme_objectives() -> Pipeline:
    """:func:`misbehaving` whose objective is 1e39 when ``a > 0.6``, ``10**400`` when ``a < 0.3``,
    ``sum(v) + b`` otherwise."""
    base = misbehaving()
    prep, fit = base.stages

    def fixed_prep(data, p, key):
        return {**prep.fn(data, {**p, "touch": "no"}, key), "a": p["a"]}

    def mode_fit(inputs, p, key):
        mode = "huge" if inputs["a"] > 0.6 else "bigint" if inputs["a"] < 0.3 else "clean"
        return fit.fn(inputs, {**p, "mode": mode}, key)

    stages = (Stage("prep", fixed_prep, (Float("a", 0.0, 1.0),)), Stage("fit", mode_fit, (Float("b", 0.0, 1.0),)))
    return dataclasses.replace(base, name="extreme_objectives", stages=stages)


#: Seconds :func:`compiling`'s jitted function sleeps while JAX traces it (compile time, not compute).
TRACE_SLEEP = 0.4
#: Seconds :func:`compiling`'s first stage sleeps at every call (its compute).
COMPUTE_SLEEP = 0.05


@jax.jit
def _slow_to_trace(x, a):
    time.sleep(TRACE_SLEEP)  # runs once, while JAX traces: the first call's compile, not a trial's compute
    return jnp.sum(x) * a


@functools.lru_cache(maxsize=None)
def compiling() -> Pipeline:
    """Two stages; the first calls a jitted function whose tracing takes ``TRACE_SLEEP`` s (only in
    a process's first trial) and sleeps ``COMPUTE_SLEEP`` s (every trial)."""

    def first(data, p, key):
        time.sleep(COMPUTE_SLEEP)
        return _slow_to_trace(jnp.ones(4), p["a"])

    def second(x, p, key):
        return {"objective": -float((x - p["b"]) ** 2)}

    return Pipeline("compiling", "1", (Stage("first", first, (Float("a", 0.0, 1.0),)),
                                       Stage("second", second, (Float("b", 0.0, 4.0),))))

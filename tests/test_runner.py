"""Runner: memoized restarts are bit-identical, costs of restored stages, failures."""

from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np
import pytest

from eeipu_jax.space import SpaceError
from eeipu_jax.runtime.cache import CachePolicy, StageCache
from eeipu_jax.runtime.pipeline import objective_of, stage_key
from eeipu_jax.runtime.runner import Runner
from tests import pipelines_for_tests as tp

SEED = 3


def _params(pipe, u):
    return pipe.space.from_unit(np.full(pipe.space.dim, u))


def _direct(pipe, params, seed):
    """Every stage's output computed by calling the stage functions in order."""
    outs, inp = [], pipe.prepare()
    for j, stage in enumerate(pipe.stages):
        inp = stage.fn(inp, dict(params[stage.name]), stage_key(seed, j))
        outs.append(inp)
    return outs


def _bits_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(la, lb)
    )


@pytest.fixture
def toy():
    return tp.counting_toy()


def test_memoized_restart_is_bit_identical_to_a_full_run(tmp_path, toy):
    params = _params(toy, 0.4)
    expected = _direct(toy, params, SEED)
    cache = StageCache(tmp_path, CachePolicy("all"))
    runner = Runner(toy, seed=SEED, cache=cache)

    full = runner.run(params, keep_outputs=True)
    assert full.ok and full.memo_depth == 0
    for out, exp in zip(full.outputs, expected):
        assert _bits_equal(out, exp)
    assert full.objective == objective_of(expected[-1])[0]
    assert set(full.saved_keys) == set(full.cache_keys)

    calls = dict(tp.CALLS)
    again = runner.run(params, keep_outputs=True)  # stages 0 and 1 restored
    assert again.memo_depth == 2
    assert tp.CALLS[("counting_toy", "features")] == calls[("counting_toy", "features")]
    assert tp.CALLS[("counting_toy", "train")] == calls[("counting_toy", "train")]
    assert _bits_equal(again.outputs[1], expected[1])
    assert again.objective == full.objective and again.metrics == full.metrics

    # Only stage 0 cached: stage 1 recomputed from the restored features.
    cache._remove(full.cache_keys[1])
    partial = runner.run(params, keep_outputs=True)
    assert partial.memo_depth == 1
    assert _bits_equal(partial.outputs[0], expected[0]) and _bits_equal(partial.outputs[1], expected[1])
    assert partial.objective == full.objective

    # A different last stage on the restored prefix equals its own full computation.
    other = {s: dict(v) for s, v in params.items()}
    other["evaluate"]["scale"] = 1.25
    res = runner.run(other)
    assert res.memo_depth == 2
    assert res.objective == objective_of(_direct(toy, other, SEED)[-1])[0]


def test_restored_stage_costs(tmp_path, toy):
    params = _params(toy, 0.6)
    runner = Runner(toy, seed=SEED, cache=StageCache(tmp_path, CachePolicy("all")))
    first = runner.run(params)
    again = runner.run(params)
    assert again.memo_depth == 2
    # The cost models see the original compute costs of the restored stages ...
    np.testing.assert_array_equal(again.stage_costs[:2], first.stage_costs[:2])
    # ... while the trial is charged the measured restore, which is not free.
    assert again.stage_seconds[1] == again.restore_seconds > 0 and again.stage_seconds[0] == 0.0
    assert again.charged >= again.restore_seconds + again.stage_seconds[2]
    assert np.all(np.isfinite(again.stage_costs))


def test_non_memoizing_runs_never_restore(tmp_path, toy):
    params = _params(toy, 0.2)
    cache = StageCache(tmp_path, CachePolicy("all"))
    Runner(toy, seed=SEED, cache=cache).run(params)
    before = tp.CALLS[("counting_toy", "features")]
    res = Runner(toy, seed=SEED, cache=cache, restore=False).run(params)
    assert res.memo_depth == 0 and tp.CALLS[("counting_toy", "features")] == before + 1
    assert cache.stats.lookups == 1  # only the first runner looked


def test_different_seed_does_not_hit(tmp_path, toy):
    params = _params(toy, 0.2)
    cache = StageCache(tmp_path, CachePolicy("all"))
    Runner(toy, seed=SEED, cache=cache).run(params)
    assert Runner(toy, seed=SEED + 1, cache=cache).run(params).memo_depth == 0


def test_corrupted_entry_is_recomputed(tmp_path, toy, caplog):
    params = _params(toy, 0.5)
    cache = StageCache(tmp_path, CachePolicy("all"))
    runner = Runner(toy, seed=SEED, cache=cache)
    full = runner.run(params)
    data = os.path.join(cache.entry_path(full.cache_keys[1]), "data")
    biggest = max((os.path.join(r, f) for r, _, fs in os.walk(data) for f in fs), key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) - 7)
    train_calls = tp.CALLS[("counting_toy", "train")]
    with caplog.at_level(logging.WARNING, logger="eeipu_jax.runtime.cache.store"):
        res = runner.run(params)
    assert any("discarding cache entry" in r.message for r in caplog.records)
    assert res.memo_depth == 1  # fell back to the intact stage-0 entry
    assert tp.CALLS[("counting_toy", "train")] == train_calls + 1
    assert res.objective == full.objective
    assert res.saved_keys == (full.cache_keys[1],)  # the recomputed output replaced it
    assert runner.run(params).memo_depth == 2


def test_top_q_writes_only_admitted_trials(tmp_path, toy):
    cache = StageCache(tmp_path, CachePolicy("top_q", q=1))
    runner = Runner(toy, seed=SEED, cache=cache)
    results = []
    for u in (0.1, 0.5, 0.9, 0.3):
        res = runner.run(_params(toy, u))
        admitted = not results or res.objective > max(r.objective for r in results)
        assert res.saved_keys == (res.cache_keys if admitted else ())
        results.append(res)
        cache.record_trial(res.objective, res.cache_keys)
    assert any(r.saved_keys == () for r in results)  # the policy did refuse some
    best = max(results, key=lambda r: r.objective)
    assert {e.key for e in cache.entries()} == set(best.cache_keys)


def test_invalid_configuration_fails_before_compute(toy):
    runner = Runner(toy, seed=0)
    params = _params(toy, 0.5)
    params["train"]["steps"] = 10_000
    calls = sum(tp.CALLS.values())
    with pytest.raises(SpaceError, match="steps"):
        runner.run(params)
    del params["train"]["steps"]
    with pytest.raises(SpaceError, match="steps"):
        runner.run(params)
    assert sum(tp.CALLS.values()) == calls
    with pytest.raises(ValueError, match="seed"):
        Runner(toy, seed=-1)
    with pytest.raises(ValueError, match="stage_timeout"):
        Runner(toy, seed=0, stage_timeout=0.0)


# ---------------------------------------------------------------- failures
def _flaky_params(mode):
    return {"prep": {"mode": mode, "a": 0.25}, "fit": {"b": 0.5}}


def test_raising_stage_is_a_failed_trial(tmp_path):
    pipe = tp.flaky()
    cache = StageCache(tmp_path, CachePolicy("all"))
    res = Runner(pipe, seed=0, cache=cache).run(_flaky_params("raise"))
    assert res.status == "failed" and math.isnan(res.objective)
    assert "prep" in res.error and "RuntimeError" in res.error and "exploded" in res.error
    assert "Traceback" in res.traceback
    assert res.failed_stage == 0
    assert np.isfinite(res.stage_costs[0]) and np.isnan(res.stage_costs[1])  # fit never ran
    assert res.charged >= res.stage_costs[0] > 0
    assert cache.entries() == []


def test_nan_objective_is_a_failed_trial(tmp_path):
    pipe = tp.flaky()
    res = Runner(pipe, seed=0, cache=StageCache(tmp_path, CachePolicy("all"))).run(_flaky_params("nan"))
    assert res.status == "failed" and "non-finite" in res.error and math.isnan(res.objective)
    assert res.failed_stage is None and np.all(np.isfinite(res.stage_costs))  # every stage ran
    ok = Runner(pipe, seed=0).run(_flaky_params("ok"))
    assert ok.ok and ok.objective == pytest.approx(-((0.25 * 2.0 - 0.5) ** 2))


def test_stage_over_its_time_limit_is_interrupted(tmp_path):
    pipe = tp.flaky()
    done = tp.COMPLETED[("flaky", "prep")]
    res = Runner(pipe, seed=0, stage_timeout=0.3).run(_flaky_params("sleep"))
    assert res.status == "failed" and "time limit" in res.error and res.failed_stage == 0
    assert tp.COMPLETED[("flaky", "prep")] == done  # the 30 s sleep never returned
    assert np.isnan(res.stage_costs[1]) and res.charged > 0


def test_prepare_is_not_charged():
    import time

    from eeipu_jax.space import Float
    from eeipu_jax.runtime.pipeline import Pipeline, Stage

    def slow_prepare():
        time.sleep(0.5)
        return {"a": np.float32(1.0)}

    pipe = Pipeline("slow-prepare", "1", stages=(
        Stage("s0", lambda d, p, k: {"v": d["a"] * p["x"]}, (Float("x", 0.0, 1.0),)),
        Stage("s1", lambda o, p, k: o["v"] + p["y"], (Float("y", 0.0, 1.0),)),
    ), prepare=slow_prepare)
    res = Runner(pipe, seed=0).run({"s0": {"x": 0.5}, "s1": {"y": 0.25}})
    assert res.ok and res.objective == pytest.approx(0.75)
    assert res.charged < 0.4  # the 0.5 s of preparation is not part of the trial's charge

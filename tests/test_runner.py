"""Runner: memoized restarts are bit-identical, costs of restored stages, failures."""

from __future__ import annotations

import logging
import math
import os
import re
import sys

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


# ------------------------------------------------ what a stage does to its inputs
def _mis(a=0.5, mode="clean", touch="no", b=0.1):
    return {"prep": {"a": a, "touch": touch}, "fit": {"mode": mode, "b": b}}


@pytest.mark.parametrize("policy", ["top_q", "all"])
def test_a_stage_cannot_change_what_the_cache_restores(tmp_path, policy):
    """Under "top_q" a stage's output is held until the objective is known; a later stage that changed
    it in place made the cache store (and restore) something the stage never returned: 5.9 fresh,
    9.9 memoized. Inputs are read-only views now: the same trial fresh and memoized agree, an
    in-place change fails its trial with a clear error, and the prepared data stay as prepared."""
    from eeipu_jax.runtime.driver import TrialWorker

    pipe = tp.misbehaving()
    worker = TrialWorker(pipe, seed=0, cache_dir=str(tmp_path), policy=CachePolicy(policy, q=5), restore=True,
                         write=True, stage_timeout=None)
    fresh = worker.run(0, _mis(mode="assign"))  # reassigning an entry of its input dict is its own business
    worker.commit(0, True)
    again = worker.run(1, _mis(mode="assign"))
    assert fresh.ok and again.ok and again.memo_depth == 1
    assert again.objective == fresh.objective == pytest.approx(3 * 0.5 + 4 * 3 + 0.1)
    assert worker.run(2, _mis(mode="clean")).objective == pytest.approx(1.5 + 0.1)  # restored as returned
    for token, params in ((3, _mis(mode="inplace")), (4, _mis(a=0.7, mode="inplace"))):  # restored, then fresh
        bad = worker.run(token, params)
        assert bad.status == "failed" and bad.failed_stage == 1
        assert "read-only" in bad.error and "copy an array before changing it in place" in bad.error
    touched = worker.run(5, _mis(a=0.9, touch="yes"))
    assert touched.status == "failed" and touched.failed_stage == 0 and "read-only" in touched.error
    assert worker.run(6, _mis(a=0.9)).objective == pytest.approx(3 * 0.9 + 0.1)  # the prepared data unchanged
    worker.commit(6, True)
    restored, _ = worker.cache.restore(worker.runner.run(_mis(a=0.9)).cache_keys[0])
    np.testing.assert_array_equal(restored["v"], np.full(3, 0.9))


def test_read_only_inputs_cost_no_copy_and_keep_containers_and_order():
    from collections import OrderedDict, namedtuple

    from eeipu_jax.runtime.runner import read_only

    big = np.zeros(10_000_000)
    P = namedtuple("P", "x y")
    tree = {"z": big, "a": [np.ones(2), (np.int32(3), None)], "p": P(np.ones(1), 2.5),
            "o": OrderedDict(k=np.ones(1)), "j": jax.numpy.ones(2)}
    out = read_only(tree)
    assert list(out) == ["z", "a", "p", "o", "j"] and out is not tree and out["a"] is not tree["a"]
    assert np.shares_memory(out["z"], big) and not out["z"].flags.writeable and big.flags.writeable
    assert isinstance(out["p"], P) and isinstance(out["o"], OrderedDict) and isinstance(out["a"][1], tuple)
    assert out["j"] is tree["j"] and out["a"][1][0] == 3
    with pytest.raises(ValueError, match="read-only"):
        out["z"] += 1
    out["a"].append(1)
    assert len(tree["a"]) == 2  # the caller's containers are its own


# ------------------------------------------------------- what a stage returns
@pytest.mark.parametrize("mode, message", [("huge", "beyond the float32 range"), ("bigint", "OverflowError"),
                                           ("exit", r"called sys.exit\(0\)")])
def test_an_objective_the_optimizer_cannot_store_or_a_stage_exit_fails_the_trial(tmp_path, mode, message):
    res = Runner(tp.misbehaving(), seed=0, cache=StageCache(tmp_path, CachePolicy("all"))).run(_mis(mode=mode))
    assert res.status == "failed" and math.isnan(res.objective)
    assert re.search(message, res.error), res.error
    assert np.all(np.isfinite(res.stage_costs[: 2 if mode != "exit" else 1]))


def test_keyboard_interrupt_in_a_stage_still_stops_the_caller():
    from eeipu_jax.runtime.pipeline import Pipeline, Stage
    from eeipu_jax.space import Float

    def interrupted(d, p, k):
        raise KeyboardInterrupt

    pipe = Pipeline("ctrl-c", "1", (Stage("s0", interrupted, (Float("x", 0.0, 1.0),)),))
    with pytest.raises(KeyboardInterrupt):
        Runner(pipe, seed=0).run({"s0": {"x": 0.5}})


def test_a_deadline_interrupts_a_hanging_stage():
    import time

    t0 = time.time()
    res = Runner(tp.always_hang(), seed=0).run({"prep": {"a": 0.5}, "fit": {"b": 0.5}}, deadline=t0 + 0.5)
    assert res.status == "failed" and "the study's time limit ran out" in res.error and res.failed_stage == 0
    assert time.time() - t0 < 5.0


def test_pipelines_are_checked_when_built_or_named():
    from eeipu_jax.runtime.pipeline import Stage
    from eeipu_jax.runtime.registry import PIPELINES, get_pipeline, register_pipeline
    from eeipu_jax.space import Float

    with pytest.raises(TypeError, match=r"stage 's': fn must be a function .*got int 42"):
        Stage("s", 42, (Float("x", 0.0, 1.0),))
    with pytest.raises(TypeError, match="params must be a sequence"):
        Stage("s", lambda d, p, k: d, "x")
    # a path names a Pipeline or a function without arguments returning one: nothing else is called
    for path, message in (("sys:exit", "builtin_function_or_method"), ("os:getcwd", "not a Pipeline"),
                          ("collections:OrderedDict", "not a Pipeline"), ("math:pi", "resolved to a float"),
                          ("tests.pipelines_for_tests:fail_on_call", "not a Pipeline"),  # needs arguments
                          ("tests.pipelines_for_tests:raising_factory", "fails on purpose")):
        with pytest.raises(ValueError, match=message):
            get_pipeline(path)
    assert get_pipeline("tests.pipelines_for_tests:counting_toy") is tp.counting_toy()  # lru_cache-wrapped: fine
    try:
        register_pipeline("exits", lambda: sys.exit(3))
        with pytest.raises(ValueError, match=r"building it raised SystemExit"):
            get_pipeline("exits")
        register_pipeline("not-a-pipeline", lambda: 42, overwrite=True)
        with pytest.raises(ValueError, match=r"its factory returned '42' \(int\), not a Pipeline"):
            get_pipeline("not-a-pipeline")
    finally:
        PIPELINES.pop("exits", None)
        PIPELINES.pop("not-a-pipeline", None)

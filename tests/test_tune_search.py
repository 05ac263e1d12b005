"""EEIPUSearcher: a Ray Tune experiment end to end, and the searcher's state round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

ray = pytest.importorskip("ray")
tune = pytest.importorskip("ray.tune")

from eeipu_jax.runtime import parallel  # noqa: E402
from pipelines import synthetic  # noqa: E402
from tests import pipelines_for_tests as tp  # noqa: E402

SMALL_BO = dict(n_random=64, mc_samples=64, n_refine=0, n_per_prefix=8)


@pytest.fixture(scope="module")
def local_ray():
    started = parallel.connect(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


def _objective(params) -> float:
    pipe = synthetic.get_pipeline("synthetic3")
    x = np.concatenate([[params[f"stage{s}"][f"x{j}"] for j in range(d)] for s, d in enumerate(pipe.dims)])
    return float(pipe.objective_raw(np.asarray(x, np.float32)))


def test_a_tune_experiment_runs_with_the_eeipu_searcher(local_ray, tmp_path):
    from eeipu_jax.runtime.tune_search import CONFIG_KEY, EEIPUSearcher, pipeline_trainable

    pipeline = tp.sleepy_small()
    searcher = EEIPUSearcher(pipeline, seed=0, max_concurrent=2, n_warmup=3, bo_options=SMALL_BO)
    tuner = tune.Tuner(
        tune.with_resources(pipeline_trainable(pipeline, cache_dir=str(tmp_path / "cache"), seed=0), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=6, max_concurrent_trials=2,
                                    metric="objective", mode="max"),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="eeipu", verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 6 and not results.errors
    for r in results:  # every reported objective is the pipeline's at the suggested parameters
        assert r.metrics["status"] == "ok"
        assert math.isclose(r.metrics["objective"], _objective(r.config[CONFIG_KEY]), rel_tol=1e-5, abs_tol=1e-5)
    # the searcher told every trial, with the costs the trainable measured
    assert int(searcher.state.n) == 6 and not searcher.live
    told_y = np.sort(np.asarray(searcher.state.y[:6], np.float64))
    np.testing.assert_allclose(told_y, np.sort([r.metrics["objective"] for r in results]), rtol=1e-5)
    best = results.get_best_result()
    assert best.metrics["objective"] == max(r.metrics["objective"] for r in results)

    # save / restore: a new searcher continues from the same state and key
    path = str(tmp_path / "searcher.pkl")
    searcher.save(path)
    again = EEIPUSearcher(pipeline, seed=123, max_concurrent=2, n_warmup=3, bo_options=SMALL_BO)
    again.restore(path)
    assert int(again.state.n) == 6
    a, b = searcher.suggest("next-a"), again.suggest("next-b")
    assert a == b  # same state, same key: the same proposal

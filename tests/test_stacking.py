"""Stacking pipeline and its offline tfds data: end to end, memoized restarts, failures, metrics."""

import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from pipelines.cache import CachePolicy, StageCache
from pipelines.registry import get_pipeline
from pipelines.runner import Runner


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    os.environ["EEIPU_JAX_DATA_DIR"] = d
    yield d
    os.environ.pop("EEIPU_JAX_DATA_DIR", None)


PARAMS = {"level0": dict(n_estimators0=5, learning_rate0=0.1, max_depth0=3, n_estimators1=5, max_depth1=6,
                         learning_rate1=0.2),
          "meta": dict(C=1.0, tol=1e-4, max_iter=100)}


def test_builder_prepares_once_and_reloads_without_tensorflow(data_dir):
    import sys

    from pipelines.data.common import load_arrays
    from pipelines.data.credit_table import CreditTable

    train = load_arrays(CreditTable, "train", config="tiny")
    test = load_arrays(CreditTable, "test", config="tiny")
    assert train["x"].shape == (900, 40) and test["x"].shape == (300, 40) and train["x"].dtype == np.float32
    assert 0.03 < train["y"].mean() < 0.2  # imbalanced, as a default-rate table
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(data_dir) for f in fs if "array_record" in f)
    assert files
    mtimes = [os.path.getmtime(f) for f in files]
    CreditTable._split_generators = None  # a second load must not generate again
    try:
        again = load_arrays(CreditTable, "train", config="tiny")
    finally:
        del CreditTable._split_generators
    np.testing.assert_array_equal(again["x"], train["x"])
    assert [os.path.getmtime(f) for f in files] == mtimes
    assert "tensorflow" not in sys.modules
    with pytest.raises(ValueError, match="unknown split"):
        load_arrays(CreditTable, "validation", config="tiny")
    with pytest.raises(ValueError, match="unknown config"):
        load_arrays(CreditTable, "train", config="huge")


def test_roc_auc_against_sklearn_and_a_pair_count():
    from sklearn.metrics import roc_auc_score

    from pipelines.stacking import roc_auc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # with ties
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    pos, neg = s[y == 1], s[y == 0]
    pairs = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(s, y) == pytest.approx(pairs, abs=1e-12)


def test_logistic_meta_learner_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    from pipelines.stacking import fit_logistic

    rng = np.random.default_rng(1)
    x = rng.uniform(size=(300, 4)).astype(np.float32)
    y = (x @ np.array([2.0, -1.0, 0.5, 0.0]) + 0.3 * rng.normal(size=300) > 0.7).astype(np.float32)
    w, n = fit_logistic(jnp.asarray(x), jnp.asarray(y), jnp.float32(0.5), jnp.float32(1e-5), jnp.int32(300))
    ref = LogisticRegression(C=0.5, tol=1e-8, max_iter=1000).fit(x, y)
    np.testing.assert_allclose(np.asarray(w["w"]), ref.coef_[0], rtol=2e-3, atol=2e-3)
    assert float(w["b"]) == pytest.approx(ref.intercept_[0], abs=2e-3)
    _, n1 = fit_logistic(jnp.asarray(x), jnp.asarray(y), jnp.float32(0.5), jnp.float32(1e-5), jnp.int32(3))
    assert int(n1) == 3 and int(n) <= 300  # max_iter bounds the iterations


def test_trial_end_to_end_and_memoized_restart_gives_the_same_objective(data_dir, tmp_path):
    pipe = get_pipeline("stacking-tiny")
    cache = StageCache(str(tmp_path / "cache"), CachePolicy("all"))
    full = Runner(pipe, seed=0, cache=cache).run(PARAMS)
    assert full.ok and full.memo_depth == 0 and 0.5 < full.objective <= 1.0
    assert full.stage_costs[0] > full.stage_costs[1]  # the level-0 stage dominates the cost
    again = Runner(pipe, seed=0, cache=cache).run(PARAMS)
    assert again.memo_depth == 1 and again.objective == full.objective
    fresh = Runner(pipe, seed=0, cache=None).run(PARAMS)
    assert fresh.objective == full.objective  # same seed, from scratch


def test_a_raising_stage_is_a_failed_trial_and_the_run_goes_on(data_dir, tmp_path, monkeypatch):
    from pipelines import stacking

    real = stacking._learners

    def learners(p, seed, rounds):  # a level-0 learner that rejects one configuration
        if p["n_estimators0"] == 7:
            raise ValueError("ExtraTrees exploded")
        return real(p, seed, rounds)

    monkeypatch.setattr(stacking, "_learners", learners)
    pipe = stacking.make_pipeline("tiny")
    runner = Runner(pipe, seed=0, cache=None)
    bad = {"level0": dict(PARAMS["level0"], n_estimators0=7), "meta": PARAMS["meta"]}
    res = runner.run(bad)
    assert res.status == "failed" and math.isnan(res.objective) and res.failed_stage == 0
    assert "exploded" in res.error and res.charged > 0
    assert runner.run(PARAMS).ok  # the next trial runs

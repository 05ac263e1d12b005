"""The stacking pipeline: metric and meta-learner against scikit-learn, one trial,
memoized restarts, failed trials inside a tuning run."""

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from eeipu_jax import Study
from tests.pipelines_for_tests import fail_on_call
from eeipu_jax.runtime.cache import CachePolicy, StageCache
from pipelines.registry import get_pipeline
from eeipu_jax.runtime.runner import Runner
from pipelines.stacking import fit_logistic, make_tiny, roc_auc

SMALL_BO = (("n_random", 64), ("mc_samples", 64), ("n_refine", 0), ("n_per_prefix", 8))
P1 = {
    "level0": {"n_estimators0": 5, "learning_rate0": 0.1, "max_depth0": 3, "n_estimators1": 4,
               "max_depth1": 5, "learning_rate1": 0.2},
    "meta": {"C": 1.0, "tol": 1e-4, "max_iter": 100},
}
P2 = {"level0": P1["level0"], "meta": {"C": 0.2, "tol": 1e-3, "max_iter": 30}}


pytestmark = pytest.mark.usefixtures("module_data_dir")  # tfds data prepared once per module


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    score = np.round(rng.normal(size=300) + y, 1)  # many ties
    assert float(roc_auc(y, score)) == pytest.approx(roc_auc_score(y, score), abs=1e-6)
    assert float(roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))) == pytest.approx(0.75)


def test_logistic_matches_sklearn():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 + rng.normal(size=400) > 0).astype(np.int32)
    for C in (0.1, 3.0):
        w, n_iter = fit_logistic(x, y, np.float32(C), np.float32(1e-7), np.int32(500))
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(x, y)
        np.testing.assert_allclose(np.asarray(w[:-1]), ref.coef_[0], rtol=2e-3, atol=2e-4)
        assert float(w[-1]) == pytest.approx(ref.intercept_[0], abs=1e-3)
        assert 0 < int(n_iter) < 500
    _, n_iter = fit_logistic(x, y, np.float32(1.0), np.float32(1e-7), np.int32(3))
    assert int(n_iter) == 3  # max_iter stops it


def test_one_trial_end_to_end():
    pipe = get_pipeline("stacking-tiny")
    res = Runner(pipe, seed=0).run(P1, keep_outputs=True)
    assert res.ok, res.error
    feats = res.outputs[0]
    assert feats["train_meta"].shape == (427, 4) and feats["test_meta"].shape == (142, 4)
    assert np.all((feats["train_meta"] >= 0) & (feats["train_meta"] <= 1))
    # Independent meta-learner and metric: sklearn on the same meta-features.
    ref = LogisticRegression(C=1.0, tol=1e-4, max_iter=100).fit(feats["train_meta"], feats["train_y"])
    expected = roc_auc_score(feats["test_y"], ref.decision_function(feats["test_meta"]))
    assert res.objective == pytest.approx(expected, abs=2e-3)
    assert 0.9 < res.objective <= 1.0
    assert res.stage_costs[0] > 0 and res.stage_costs[1] > 0


def test_memoized_restart_equals_full_run(tmp_path):
    pipe = make_tiny()
    cache = StageCache(tmp_path / "cache", CachePolicy("all"))
    first = Runner(pipe, seed=3, cache=cache).run(P1)
    assert first.ok and first.memo_depth == 0
    memo = Runner(pipe, seed=3, cache=StageCache(tmp_path / "cache", CachePolicy("all"))).run(P2)
    assert memo.ok and memo.memo_depth == 1  # level0 restored from orbax
    scratch = Runner(pipe, seed=3).run(P2)
    assert scratch.memo_depth == 0
    assert memo.objective == scratch.objective


def failing_tiny():
    """stacking-tiny whose meta stage raises on its second call (an injected bad trial)."""
    return fail_on_call(make_tiny(), 1, name="stacking-tiny-failing")


def test_failed_stage_is_a_failed_trial_and_the_run_goes_on(tmp_path):
    study = Study.create(str(tmp_path / "run"), "tests.test_stacking:failing_tiny", "ei", 1e6, 0, n_warmup=3,
                         bo=dict(SMALL_BO))
    summary = study.optimize(5)
    lines = [json.loads(s) for s in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    assert [r["status"] for r in lines] == ["ok", "failed", "ok", "ok", "ok"]
    assert "injected failure" in lines[1]["error"] and lines[1]["failed_stage"] == 1
    assert summary["n_trials"] == 5 and summary["n_failed"] == 1
    assert summary["best"]["y"] == max(r["y"] for r in lines if r["status"] == "ok")

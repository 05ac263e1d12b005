"""The segmentation pipeline: CRF step, schedule, mIoU and augmentation against NumPy,
one trial on the offline data, memoized restarts, failed trials inside a tuning run."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import Study
from eeipu_jax.runtime.cache import CachePolicy, StageCache
from eeipu_jax.runtime.runner import Runner
from tests.pipelines_for_tests import fail_on_call
from pipelines.registry import get_pipeline
from pipelines.segmentation import Conv3x3, augment_copies, make_tiny, mean_field_step, mean_iou, one_cycle

SMALL_BO = (("n_random", 64), ("mc_samples", 64), ("n_refine", 0), ("n_per_prefix", 8))
P1 = {
    "augment": {"mean_r": 0.5, "mean_g": 0.45, "mean_b": 0.4, "std_r": 0.25, "std_g": 0.2, "std_b": 0.3},
    "train": {"batch_size": 16, "peak_lr": 1e-2, "weight_decay": 1e-4},
    "crf": {"sigma": 1.0, "compat": 1.0, "confidence": 1.0},
}
P2 = {"augment": P1["augment"], "train": P1["train"], "crf": {"sigma": 2.0, "compat": 2.5, "confidence": 0.7}}


pytestmark = pytest.mark.usefixtures("module_data_dir")  # tfds data prepared once per module


def test_mean_field_step_matches_numpy_loops():
    rng = np.random.default_rng(0)
    H, W, L, R = 5, 6, 3, 2
    sigma, compat, conf = 1.3, 0.8, 1.5
    log_p = np.log(rng.dirichlet(np.ones(L), size=(H, W)))
    q = rng.dirichlet(np.ones(L), size=(H, W))
    # Brute force: k_ij = exp(-|i-j|^2/(2 sigma^2)) for window pixels j != i, d_i = sum_j k_ij,
    # message_i = sum_j k_ij q_j / sqrt(d_i d_j) (symmetric normalization).
    def k(i, j, a, b):
        return math.exp(-((a - i) ** 2 + (b - j) ** 2) / (2 * sigma**2))

    def window(i, j):
        return [(a, b) for a in range(max(0, i - R), min(H, i + R + 1))
                for b in range(max(0, j - R), min(W, j + R + 1)) if (a, b) != (i, j)]

    d = np.array([[sum(k(i, j, a, b) for a, b in window(i, j)) for j in range(W)] for i in range(H)])
    msg = np.zeros_like(q)
    for i in range(H):
        for j in range(W):
            for a, b in window(i, j):
                msg[i, j] += k(i, j, a, b) * q[a, b] / math.sqrt(d[i, j] * d[a, b])
    z = conf * log_p + compat * msg
    expected = np.exp(z - z.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    got = mean_field_step(jnp.asarray(log_p, jnp.float32), jnp.asarray(q, jnp.float32), sigma, compat, conf, R)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def test_conv3x3_matches_numpy_loops_and_lax_conv():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
    conv = Conv3x3(4, im2col=True)
    params = conv.init(jax.random.key(0), jnp.asarray(x))["params"]
    kern, bias = np.asarray(params["kernel"], np.float64), np.asarray(params["bias"], np.float64) + 0.5
    params = {"kernel": params["kernel"], "bias": jnp.asarray(bias, jnp.float32)}
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros((2, 5, 6, 4))
    for n in range(2):
        for i in range(5):
            for j in range(6):
                for di in range(3):
                    for dj in range(3):
                        expected[n, i, j] += xp[n, i + di, j + dj] @ kern[di, dj]
    expected += bias
    for im2col in (True, False):
        got = Conv3x3(4, im2col=im2col).apply({"params": params}, jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_one_cycle_matches_closed_form():
    T, peak = 100, 0.02
    init, final, up = peak / 25, peak / 25 / 1e4, 30
    sched = one_cycle(T, peak)
    for t in (0, 7, 15, 30, 31, 64, 99, 100, 150):
        if t <= up:
            expected = init + (peak - init) * (1 - math.cos(math.pi * t / up)) / 2
        else:
            s = min(t - up, T - up) / (T - up)
            expected = peak + (final - peak) * (1 - math.cos(math.pi * s)) / 2
        assert float(sched(t)) == pytest.approx(expected, rel=1e-5, abs=1e-9), t


def test_mean_iou_hand_example():
    pred = np.array([[0, 0, 1], [1, 2, 2]])
    target = np.array([[0, 1, 1], [1, 2, 0]])
    # class 0: inter 1, union 3; class 1: inter 2, union 3; class 2: inter 1, union 2; others absent.
    assert float(mean_iou(jnp.asarray(pred), jnp.asarray(target))) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3, abs=1e-6)


def test_augment_copies_are_dihedral_transforms_of_the_same_pairs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5, 5, 2)).astype(np.float32)
    y = rng.integers(0, 6, size=(4, 5, 5))
    xs, ys = augment_copies(jax.random.key(0), jnp.asarray(x), jnp.asarray(y), 3)
    assert xs.shape == (12, 5, 5, 2) and ys.shape == (12, 5, 5)
    for k in range(12):
        i = k % 4
        ok = False
        for flip in (False, True):
            for r in range(4):
                tx = np.rot90(x[i][:, ::-1] if flip else x[i], r, axes=(0, 1))
                ty = np.rot90(y[i][:, ::-1] if flip else y[i], r, axes=(0, 1))
                ok |= np.array_equal(np.asarray(xs[k]), tx) and np.array_equal(np.asarray(ys[k]), ty)
        assert ok, k


def test_one_trial_end_to_end():
    pipe = get_pipeline("segmentation-tiny")
    res = Runner(pipe, seed=0).run(P1, keep_outputs=True)
    assert res.ok, res.error
    aug, trained = res.outputs[0], res.outputs[1]
    assert aug["x"].shape == (48, 32, 32, 3) and aug["y"].shape == (48, 32, 32)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(trained["params"]))
    assert 0.0 < res.objective <= 1.0 and 0.0 <= res.metrics["miou_raw"] <= 1.0
    assert np.all(res.stage_costs > 0)


def test_memoized_restart_equals_full_run(tmp_path):
    pipe = make_tiny()
    first = Runner(pipe, seed=3, cache=StageCache(tmp_path / "cache", CachePolicy("all"))).run(P1)
    assert first.ok and first.memo_depth == 0
    memo = Runner(pipe, seed=3, cache=StageCache(tmp_path / "cache", CachePolicy("all"))).run(P2)
    assert memo.ok and memo.memo_depth == 2  # augment and train restored from orbax
    scratch = Runner(pipe, seed=3).run(P2)
    assert scratch.ok and scratch.memo_depth == 0
    assert memo.objective == scratch.objective
    assert memo.metrics["miou_raw"] == scratch.metrics["miou_raw"]


def failing_tiny():
    """segmentation-tiny whose train stage raises on its second call (an injected bad trial)."""
    return fail_on_call(make_tiny(), 1, name="segmentation-tiny-failing")


@pytest.mark.slow
def test_failed_stage_is_a_failed_trial_and_the_run_goes_on(tmp_path):
    study = Study.create(str(tmp_path / "run"), "tests.test_segmentation:failing_tiny", "ei", 1e6, 0, n_warmup=3,
                         bo=dict(SMALL_BO))
    summary = study.optimize(4)
    lines = [json.loads(s) for s in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    assert [r["status"] for r in lines] == ["ok", "failed", "ok", "ok"]
    assert "injected failure" in lines[1]["error"] and lines[1]["failed_stage"] == 1
    assert summary["n_trials"] == 4 and summary["n_failed"] == 1

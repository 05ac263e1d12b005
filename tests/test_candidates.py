"""Candidate batches: shapes, prefixes copied exactly, duplicates masked, refinement."""

import jax
import jax.numpy as jnp
import numpy as np

from eeipu_jax import candidates as cand

SOC = (0, 0, 1, 1, 2)
MASKS = jnp.asarray(cand.prefix_masks_array(SOC, 3))


def _data():
    X = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 5)), jnp.float32)
    X = X.at[3, :2].set(X[1, :2])  # rows 1 and 3 share the stage-0 prefix
    y = jnp.asarray([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, jnp.nan, 0.0])
    ok = jnp.isfinite(y) & (jnp.arange(8) < 7)
    return X, jnp.where(ok, y, 0.0), ok


def test_prefix_masks():
    np.testing.assert_array_equal(np.asarray(MASKS), [[0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])


def test_prefix_pool_top_q_and_duplicates():
    X, y, ok = _data()
    idx, valid = cand.prefix_pool(X, y, ok, 3, MASKS)
    assert list(np.asarray(idx)) == [1, 3, 5]  # best three finished rows
    # row 3 repeats row 1's stage-0 prefix (depth 1) but not its depth-2 prefix
    np.testing.assert_array_equal(np.asarray(valid), [[True, True], [False, True], [True, True]])


def test_batch_layout_prefixes_and_local_points():
    X, y, ok = _data()
    b = cand.candidate_batch(jax.random.key(0), X, y, ok, n_random=16, n_per_prefix=4, q=3,
                             prefix_masks=MASKS, memoize=True, n_local=6)
    assert b.x.shape == (16 + 3 * 6 + 3 * 2 * 4, 5)
    x, depth, src, valid = (np.asarray(a) for a in b)
    assert np.all((x >= 0) & (x <= 1))
    assert np.all(depth[:34] == 0) and np.all(src[:34] == -1)
    # local points sit near their centre
    centres = np.asarray(X)[[1, 3, 5]]
    loc = x[16:34].reshape(3, 6, 5)
    assert np.all(np.abs(loc - centres[:, None]).max(axis=(1, 2)) < 0.8)
    assert np.median(np.abs(loc - centres[:, None])) < 0.1
    # memoized candidates copy their source's prefix columns exactly
    for i in range(34, len(x)):
        cols = np.asarray(MASKS[depth[i]])
        np.testing.assert_array_equal(x[i, cols], np.asarray(X)[src[i], cols])
    assert set(depth[34:]) == {1, 2}
    assert not valid[34 + 1 * 8: 34 + 1 * 8 + 4].any()  # row 3's duplicate depth-1 prefix is masked
    # non-memoizing methods get no prefix candidates
    b0 = cand.candidate_batch(jax.random.key(0), X, y, ok, n_random=16, n_per_prefix=4, q=3,
                              prefix_masks=MASKS, memoize=False, n_local=0)
    assert b0.x.shape == (16, 5)


def test_quasi_random_fills_the_cube_evenly():
    x = np.asarray(cand.quasi_random(jax.random.key(1), 256, 3))
    counts = np.histogram(x[:, 0], bins=8, range=(0, 1))[0]
    assert counts.min() == counts.max() == 32  # a shifted Sobol net is balanced


def test_refine_moves_only_free_coordinates_and_never_worsens():
    target = jnp.asarray([0.3, 0.7, 0.2, 0.9, 0.5])
    score = lambda x: -jnp.sum((x - target) ** 2)
    x0 = jnp.full(5, 0.5)
    free = jnp.asarray([False, False, True, True, True])
    x1, v1 = cand.refine(score, x0, free, steps=60, lr=0.05)
    np.testing.assert_array_equal(np.asarray(x1[:2]), [0.5, 0.5])
    assert float(v1) > float(score(x0))
    np.testing.assert_allclose(np.asarray(x1[2:]), [0.2, 0.9, 0.5], atol=0.05)

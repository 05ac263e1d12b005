"""Candidate batches: shapes, prefixes copied exactly, duplicates masked, refinement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import candidates as cand
from eeipu_jax.cpu import jit  # the library's compile options (eeipu_jax.cpu)

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
    pool = cand.prefix_pool(X, y, ok, 3, MASKS)
    assert pool.source.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(pool.source), [[1, 3, 5], [1, 3, 5]])  # best three finished rows
    # row 3 repeats row 1's stage-0 prefix (depth 1) but not its depth-2 prefix
    np.testing.assert_array_equal(np.asarray(pool.ok), [[True, False, True], [True, True, True]])


def _pool_loop(X, y, eligible, q, masks, select):
    """Brute-force pool: python loops over rows, ranked by (y desc, row asc)."""
    X, y, eligible, masks = map(np.asarray, (X, y, eligible, masks))
    order = sorted(np.flatnonzero(eligible), key=lambda r: (-y[r], r))
    out = []
    for j in range(1, masks.shape[0] - 1):
        cols = masks[j]
        if select == "top_trials":
            rows, seen = order[:q], []
            entries = []
            for r in rows:
                key = tuple(X[r, cols])
                entries.append((r, key not in seen))
                seen.append(key)
        else:
            seen, entries = set(), []
            for r in order:
                key = tuple(X[r, cols])
                if key not in seen:
                    seen.add(key)
                    entries.append((r, True))
            entries = entries[:q]
        out.append(entries)
    return out


@pytest.mark.parametrize("select", ["top_trials", "top_prefixes"])
def test_prefix_pool_matches_a_brute_force_loop(select):
    rng = np.random.default_rng(3)
    for trial in range(5):
        N, q = 24, 5
        # few distinct values per column, so prefixes repeat at every depth
        X = jnp.asarray(rng.integers(0, 3, size=(N, 5)) / 2.0, jnp.float32)
        y = jnp.asarray(rng.integers(0, 6, size=N), jnp.float32)  # ties on purpose
        eligible = jnp.asarray(rng.uniform(size=N) < 0.8)
        pool = cand.prefix_pool(X, y, eligible, q, MASKS, select)
        ref = _pool_loop(X, y, eligible, q, MASKS, select)
        src, ok = np.asarray(pool.source), np.asarray(pool.ok)
        for j, entries in enumerate(ref):
            got = [(int(s), bool(o)) for s, o in zip(src[j], ok[j]) if o or select == "top_trials"]
            want = entries if select == "top_trials" else [e for e in entries if e[1]]
            if select == "top_trials":
                got = got[: len(want)]
            assert got == want, (trial, j)
            assert ok[j].sum() == sum(o for _, o in entries)


def test_prefix_pool_refuses_an_unknown_selection():
    X, y, ok = _data()
    with pytest.raises(ValueError, match="prefix selection"):
        cand.prefix_pool(X, y, ok, 3, MASKS, "random")


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


def test_refine_moves_only_free_coordinates_towards_the_optimum():
    target = jnp.asarray([0.3, 0.7, 0.2, 0.9, 0.5])
    score = lambda x: -jnp.sum((x - target) ** 2)
    x0 = jnp.full(5, 0.5)
    free = jnp.asarray([False, False, True, True, True])
    x1 = cand.refine(score, x0, free, steps=60, lr=0.05)
    np.testing.assert_array_equal(np.asarray(x1[:2]), [0.5, 0.5])
    assert float(score(x1)) > float(score(x0))
    np.testing.assert_allclose(np.asarray(x1[2:]), [0.2, 0.9, 0.5], atol=0.05)


def test_refine_with_finish_returns_the_finished_end_point_and_its_score():
    """The extra pass that scores the finished point neither moves the end
    point nor scores another: the same end point as without ``finish``, then
    finished (here: snapped to a grid of quarters), and its score in closed form."""
    target = np.array([0.3, 0.7, 0.2, 0.9, 0.5])
    score = lambda x: -jnp.sum((x - jnp.asarray(target)) ** 2)
    x0 = jnp.full(5, 0.5)
    free = jnp.asarray([False, True, True, True, True])
    grid = lambda x: jnp.round(x * 4.0) / 4.0
    x_end = np.asarray(cand.refine(score, x0, free, steps=25, lr=0.05))
    xs, vs = cand.refine(score, x0, free, steps=25, lr=0.05, finish=grid)
    np.testing.assert_array_equal(np.asarray(xs), np.round(x_end * 4.0) / 4.0)
    assert not np.array_equal(np.asarray(xs), x_end)  # the finish did something
    assert float(vs) == pytest.approx(-np.sum((np.asarray(xs, np.float64) - target) ** 2), rel=1e-6)


def test_top_per_depth_matches_a_loop():
    rng = np.random.default_rng(0)
    vals = rng.normal(size=60).astype(np.float32)
    depth = rng.integers(0, 4, 60).astype(np.int32)
    vals[depth == 3] = -np.inf  # an empty group: only padding comes back
    vals[5] = -np.inf
    idx, ok = cand.top_per_depth(jnp.asarray(vals), jnp.asarray(depth), 4, 3)
    idx, ok = np.asarray(idx).reshape(4, 3), np.asarray(ok).reshape(4, 3)
    for j in range(4):
        want = [i for i in np.argsort(-vals, kind="stable") if depth[i] == j and np.isfinite(vals[i])][:3]
        assert idx[j][ok[j]].tolist() == want, j
    assert not ok[3].any()


def test_memoizing_ask_reaches_the_brute_force_maximum_of_its_acquisition():
    """EEIPU's search space is: any fresh point (memo depth 0), or, for each of the
    top-q finished trials and each depth j = 1, 2, that trial's stage 0..j-1 columns
    with the rest free. A brute-force search of that space (dense grids over the
    free columns, then a Nelder-Mead polish of each grid winner) bounds what ask
    can find: its proposal must score within a small tolerance of the brute-force
    maximum, and come from the same memo depth when the depths' maxima are apart."""
    from scipy.optimize import minimize

    from eeipu_jax.methods import ei_family
    from eeipu_jax import loop

    soc = (0, 0, 1, 2)
    cfg = loop.BOConfig(stage_of_column=soc, bins=(0,) * 4, method="eeipu", n_warmup=4, mc_samples=256)
    state = loop.init(cfg, 1e6, capacity=16)
    rng = np.random.default_rng(1)
    for _ in range(10):
        x = rng.uniform(size=4)
        y = float(np.sin(3 * x[0]) * np.cos(2 * x[1]) - (x[2] - 0.6) ** 2 - 0.5 * (x[3] - 0.3) ** 2)
        state = loop.tell(state, x, y, np.array([1.0 + 3 * x[0], 0.5 + 2 * x[1] + x[2], 0.2 + x[3]]))
    prop, _ = loop.ask(jax.random.key(7), state, cfg)
    acq, _, _ = jit(loop.acquisition_state, static_argnums=2)(jax.random.key(7), state, cfg)
    score = jit(jax.vmap(lambda x, j: ei_family.eeipu(x, j, acq, None), in_axes=(0, None)), static_argnums=1)

    X = np.asarray(state.X[:10], np.float64)
    y = np.asarray(state.y[:10], np.float64)
    top = np.argsort(-y)[: cfg.top_q]
    g = (np.arange(24) + 0.5) / 24
    best = {}  # depth -> (value, x)

    def polish(x0, free, j):
        def neg(z):
            x = x0.copy()
            x[free] = np.clip(z, 0, 1)
            return -float(score(jnp.asarray(x[None], jnp.float32), j)[0])

        r = minimize(neg, x0[free], method="Nelder-Mead", options=dict(xatol=1e-4, fatol=1e-6, maxiter=400))
        x = x0.copy()
        x[free] = np.clip(r.x, 0, 1)
        return -neg(x[free]), x

    for j in range(3):
        free = np.asarray(soc) >= j
        grid = np.stack(np.meshgrid(*[g] * int(free.sum()), indexing="ij"), -1).reshape(-1, int(free.sum()))
        for src in (top if j > 0 else [None]):
            cand = np.tile(X[src] if src is not None else np.zeros(4), (len(grid), 1))
            cand[:, free] = grid
            vals = np.asarray(score(jnp.asarray(cand, jnp.float32), j))
            v, x = polish(cand[np.argmax(vals)], free, j)
            if v > best.get(j, (-np.inf,))[0]:
                best[j] = (v, x)
    bf_depth = max(best, key=lambda j: best[j][0])
    bf = best[bf_depth][0]
    got = float(prop.score)
    assert bf - 2e-3 <= got <= bf + 2e-3, (got, {j: round(v[0], 4) for j, v in best.items()})
    gaps = sorted(v[0] for v in best.values())
    if gaps[-1] - gaps[-2] > 1e-2:
        assert int(prop.memo_depth) == bf_depth
    j = int(prop.memo_depth)
    if j > 0:
        cols = np.asarray(soc) < j
        assert int(prop.source) in top
        np.testing.assert_array_equal(np.asarray(prop.x)[cols], np.asarray(state.X[int(prop.source)])[cols])

"""Objective scale: an increasing affine change of the objective changes no proposal;
values beyond float32 are refused; huge, tiny and offset objectives keep their digits."""

import jax
import numpy as np
import pytest

from eeipu_jax import gp, loop
from eeipu_jax.space import Float, SearchSpace, StageSpace

# One worker runs this file's tests: its module fixture is built once (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("objective_scale")

SPACE = SearchSpace(
    [
        StageSpace("prep", [Float("a", 0.0, 1.0), Float("b", 0.0, 1.0)]),
        StageSpace("train", [Float("c", 0.0, 1.0), Float("d", 0.0, 1.0)]),
        StageSpace("eval", [Float("e", 0.0, 1.0)]),
    ]
)
CFG = loop.BOConfig.from_space(SPACE, method="eeipu", n_warmup=4, n_random=128, n_per_prefix=16, mc_samples=256)
N_BO = 4


def f(u):
    u = np.asarray(u, np.float64)
    return float(-np.sum((u - 0.35) ** 2) + 0.3 * np.sin(5.0 * u[0]))  # in about [-2.1, 0.3]


def stage_costs(u):
    u = np.asarray(u, np.float64)
    return np.array([1.0 + 4.0 * u[0], 0.5 + 2.0 * u[2], 0.2 + 0.2 * u[4]])


TRANSFORMS = {
    "f": lambda v: v,
    "1e9+f": lambda v: 1e9 + v,
    "1e-9*f": lambda v: 1e-9 * v,
    "1e30*f": lambda v: 1e30 * v,
    "3f-7": lambda v: 3.0 * v - 7.0,
}


def run(transform, replace=None):
    """4 warm-up trials (same points) and N_BO asks with the same keys; ``replace``:
    ``{trial: objective}`` told instead of the transformed ``f``."""
    replace = replace or {}
    state = loop.init(CFG, budget=1e3, capacity=16)
    told = []
    for i, u in enumerate(SPACE.sample(np.random.default_rng(0), CFG.n_warmup)):
        told.append(replace.get(i, transform(f(u))))
        state = loop.tell(state, u, told[-1], stage_costs(u))
    props = []
    key = jax.random.key(0)
    for _ in range(N_BO):
        key, sub = jax.random.split(key)
        prop, state = loop.ask(sub, state, CFG)
        x = np.asarray(prop.x)
        props.append(prop)
        told.append(replace.get(len(told), transform(f(x))))
        state = loop.tell(state, x, told[-1], stage_costs(x), int(prop.memo_depth))
    return props, state, np.array(told)


@pytest.fixture(scope="module")
def runs():
    return {name: run(t) for name, t in TRANSFORMS.items()}


@pytest.mark.parametrize("name", [n for n in TRANSFORMS if n != "f"])
def test_affine_changes_of_the_objective_give_the_same_proposals(runs, name):
    ref = runs["f"][0]
    got = runs[name][0]
    for i, (a, b) in enumerate(zip(ref, got)):
        assert int(a.memo_depth) == int(b.memo_depth) and int(a.source) == int(b.source), (name, i)
        np.testing.assert_allclose(np.asarray(b.x), np.asarray(a.x), atol=2e-3, err_msg=f"{name}, ask {i}")
        # acquisitions live on the standardized scale: the scores agree too
        assert float(b.score) == pytest.approx(float(a.score), abs=2e-3), (name, i)
        assert np.isfinite(float(b.score)) and not bool(b.fallback)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_the_state_reports_the_raw_objective(runs, name):
    _, state, told = runs[name]
    assert int(state.n) == CFG.n_warmup + N_BO
    # y + y_lo gives back the float64 value told (1e9 + f keeps f's digits)
    np.testing.assert_allclose(loop.objective_values(state), told, rtol=1e-13, atol=0)
    assert loop.best_observed(state) == pytest.approx(told.max(), rel=1e-13)


def test_objective_spread_near_the_float32_limit_stays_finite():
    """1e38 * f: differences of raw values overflow float32 and sums of squares
    overflow everywhere; the scale-free targets do not."""
    props, _, _ = run(lambda v: 1e38 * v)
    assert all(np.isfinite(float(p.score)) for p in props), [float(p.score) for p in props]
    assert not any(bool(p.fallback) for p in props)
    ref = run(TRANSFORMS["f"])[0]
    np.testing.assert_allclose(np.asarray(props[-1].x), np.asarray(ref[-1].x), atol=2e-3)


def test_values_beyond_float32_are_refused_and_infinities_are_failures():
    state = loop.init(CFG, budget=10.0)
    u = SPACE.sample(np.random.default_rng(1), 1)[0]
    for y in (1e39, -4e38):
        with pytest.raises(ValueError, match=r"y=.*float32 range.*rescale"):
            loop.tell(state, u, y, stage_costs(u))
    for y in (np.inf, -np.inf, np.nan):
        s = loop.tell(state, u, y, stage_costs(u))
        assert bool(s.failed[0]) and np.isnan(loop.objective_values(s)[0])
    s = loop.tell(state, u, 3.4e38, stage_costs(u))  # representable: accepted
    assert loop.best_observed(s) == pytest.approx(3.4e38, rel=1e-12)


def test_standardize_is_scale_free_against_numpy():
    rng = np.random.default_rng(0)
    v = rng.normal(size=12)
    mask = np.ones(12, bool)
    mask[[3, 9]] = False
    ref = (v[mask] - v[mask].mean()) / v[mask].std(ddof=1)
    for a, b in [(1.0, 0.0), (1e-9, 0.0), (1e30, 0.0), (3.0, -7.0), (1e37, 1e37)]:
        y = a * v + b
        hi = y.astype(np.float32)
        z, _, _ = gp.standardize(hi, mask)
        np.testing.assert_allclose(np.asarray(z)[mask], ref, atol=1e-5, err_msg=f"{a} * v + {b}")
        assert np.all(np.asarray(z)[~mask] == 0)
    # an offset float32 cannot hold: the hi/lo pair keeps the digits
    y = 1e9 + v
    hi = y.astype(np.float32)
    lo = (y - hi.astype(np.float64)).astype(np.float32)
    z, _, _ = gp.standardize(hi, mask, lo)
    np.testing.assert_allclose(np.asarray(z)[mask], ref, atol=1e-5)
    # constant data: std 1, finite zeros
    z, mean, std = gp.standardize(np.full(12, 1e-20, np.float32), mask)
    assert float(std) == 1.0 and np.all(np.asarray(z) == 0)


WARMUP_F = np.array([f(u) for u in SPACE.sample(np.random.default_rng(0), CFG.n_warmup)])


@pytest.mark.parametrize("outlier", [-1e30, -3e38])
def test_one_extreme_objective_leaves_the_proposals_as_they_were(runs, outlier):
    """A diverged trial reporting -1e30 where the run had its worst value: the GP still sees the
    other values, so the next proposals are those of the run without it (before the targets were
    robust, every other value became ~0: the first proposal moved by 0.14 and the second took
    another prefix)."""
    trial = int(np.argmin(WARMUP_F))
    ref = runs["f"][0]
    got, state, _ = run(TRANSFORMS["f"], replace={trial: outlier})
    assert loop.objective_values(state)[trial] == pytest.approx(outlier, rel=1e-6)  # kept as told
    u = np.asarray(loop.scaled_objective(state))[: CFG.n_warmup]
    others = np.delete(u, trial)
    assert np.ptp(others) > 0.1 and u[trial] < others.min()  # the others keep their differences, it its rank
    for i in range(2):  # the asks before the runs' own observations drift apart
        a, b = ref[i], got[i]
        assert (int(a.memo_depth), int(a.source)) == (int(b.memo_depth), int(b.source)), (outlier, i)
        np.testing.assert_allclose(np.asarray(b.x), np.asarray(a.x), atol=0.02, err_msg=f"{outlier}, ask {i}")


def test_a_runaway_best_objective_stays_the_best_and_its_prefix_is_reused():
    trial = int(np.argmax(WARMUP_F))
    got, state, _ = run(TRANSFORMS["f"], replace={trial: 1e30})
    u = np.asarray(loop.scaled_objective(state))[: CFG.n_warmup]
    others = np.delete(u, trial)
    assert np.ptp(others) > 0.1 and u[trial] > others.max()
    assert loop.best_observed(state) == pytest.approx(1e30, rel=1e-6)
    assert (int(got[0].memo_depth), int(got[0].source)) == (2, trial)  # exploited, as without it


def test_robust_targets_leave_ordinary_data_bit_for_bit_and_squash_only_outliers():
    rng = np.random.default_rng(3)
    mask = np.ones(16, bool)
    mask[[4, 11]] = False
    # ordinary data, heavy tails included (a synthetic run's first bad regions: ~84 MADs out)
    for v in (rng.normal(size=16), rng.standard_cauchy(size=16), np.r_[-6.4, -2.6, -5.5, -5.6, -36.4, -1.9,
                                                                          -41.8, -34.1, -145.0, -5.6, -2.9,
                                                                          -9.6, -28.7, -86.7, -3.0, -4.0]):
        y = v.astype(np.float32)
        plain = gp.scale_free(y, mask)
        robust = gp.scale_free(y, mask, robust=True)
        for a, b in zip(plain, robust):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    # outliers: in their order, next to the others, which keep their values relative to each other
    v = rng.normal(size=16)
    for rows, values in (([2], [-1e30]), ([0], [1e30]), ([0, 7], [3e38, -3e38]), ([3, 5, 9], [1e20, 1e25, -1e6])):
        y = v.copy()
        y[rows] = values
        u, _, scale = gp.scale_free(y.astype(np.float32), mask, robust=True)
        u, keep = np.asarray(u), mask.copy()
        keep[rows] = False
        ref = (v[keep] - v[keep][0]) / (float(scale) / 2 * 2)  # the others, affinely
        got = u[keep] - u[keep][0]
        np.testing.assert_allclose(got / np.ptp(got), ref / np.ptp(ref), atol=1e-5)
        for r, value in zip(rows, values):
            assert (u[r] > u[keep].max()) if value > 0 else (u[r] < u[keep].min())
        assert np.ptp(u[keep]) > 0.5 * np.ptp(u[mask])  # the others span most of [-1, 1]
        order = np.argsort(y[mask], kind="stable")
        assert np.all(np.diff(u[mask][order]) >= 0)  # ranks kept
    # scale-free with an outlier too
    y = v.copy()
    y[2] = -1e30
    ref = np.asarray(gp.scale_free(y.astype(np.float32), mask, robust=True)[0])
    for a, b in [(1e-9, 0.0), (3.0, -7.0), (1e8, 1e9)]:
        z = a * y + b
        hi = z.astype(np.float32)
        lo = (z - hi.astype(np.float64)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(gp.scale_free(hi, mask, lo, robust=True)[0]), ref, atol=1e-5)

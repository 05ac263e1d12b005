"""Pending-aware ask (running trials of a parallel driver as masked rows): the
kriging-believer fantasy against a float64 NumPy GP, the committed budget in
the cooling against hand computations, memoized prefixes of running trials,
one compile per pending capacity, every method, validation."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from eeipu_jax import costs as costlib
from eeipu_jax import gp as gplib
from eeipu_jax import loop
from eeipu_jax.methods import ei_family
from eeipu_jax.cpu import jit  # the library's compile options (eeipu_jax.cpu)
from tests import reference as ref
from tests.test_ask import CFG, SPACE, filled, objective, stage_costs

acquisition_state = jit(loop.acquisition_state, static_argnums=2)
K = 3
PREFIX_COLS = {1: 2, 2: 4}  # memo depth -> number of leading columns of SPACE (2 + 2 + 1 columns)


def _pending(xs, depths, capacity=3):
    return loop.pending_from(np.asarray(xs, np.float64), depths, capacity, SPACE.dim)


def _objective_reference(state, cfg, params, Xq, extra_X=None, extra_y=None):
    """Float64 posterior mean and variance of the standardized objective GP at
    ``Xq``, conditioned on the told rows (and optional extra rows, already on
    the standardized scale)."""
    n = int(state.n)
    ls, amp, noise, mean = ref.hyper(params, cfg.gp)
    X = np.asarray(state.X[:n], np.float64)
    y = ref.objective_targets(loop.objective_values(state), np.asarray(state.failed[:n]))
    if extra_X is not None:
        X, y = np.concatenate([X, extra_X]), np.concatenate([y, extra_y])
    return ref.posterior(X, y, np.asarray(Xq, np.float64), ls, amp, noise, mean, jitter=cfg.gp.jitter)


# ----------------------------------------------------------- the fantasy
def test_kriging_believer_collapses_the_variance_at_pending_points_only():
    """Two live pending rows (of three slots): the fantasized GP equals a NumPy
    GP conditioned on the told rows plus the pending x's at their posterior
    means; its std at a pending x is ~0 (noise level), its mean is unchanged
    everywhere, and EI there is ~0 against the incumbent that includes the
    believed values. The objective is noise-free, so without the default noise
    prior the fitted noise is near its floor and the std at a pending x is ~0;
    in general it falls to the noise level, what telling that trial leaves
    (the pending row enters the factor exactly as its tell will)."""
    cfg = dataclasses.replace(CFG, gp=gplib.GPConfig(noise_prior=None))
    state = filled(cfg, n=10)
    xp = np.array([[0.35, 0.35, 0.35, 0.35, 0.35], [0.8, 0.2, 0.6, 0.1, 0.9]])
    pend = _pending(xp, [0, 0])
    acq0, fitted, _ = acquisition_state(jax.random.key(3), loop.canonicalize(state), cfg)
    acq, fitted_p, y_aug = acquisition_state(jax.random.key(3), loop.canonicalize(state), cfg, pend)
    # the same hyperparameters: pending rows never refit anything
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda a: a[0], fitted.gp_params)), jax.tree.leaves(jax.tree.map(lambda a: a[0], fitted_p.gp_params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    m_told, v_told = _objective_reference(state, cfg, jax.tree.map(lambda a: a[0], fitted.gp_params), xp)
    # believed values: the told-rows posterior mean at each pending x
    m_fant, v_fant = _objective_reference(state, cfg, jax.tree.map(lambda a: a[0], fitted.gp_params), xp, extra_X=xp, extra_y=m_told)
    Xq = np.concatenate([xp, SPACE.sample(np.random.default_rng(7), 6)])
    mq_ref, vq_ref = _objective_reference(state, cfg, jax.tree.map(lambda a: a[0], fitted.gp_params), Xq, extra_X=xp, extra_y=m_told)
    pred = jax.vmap(lambda x: gplib.predict(acq.obj, x))(jnp.asarray(Xq, jnp.float32))
    pred0 = jax.vmap(lambda x: gplib.predict(acq0.obj, x))(jnp.asarray(Xq, jnp.float32))
    np.testing.assert_allclose(np.asarray(pred[0]), mq_ref, atol=2e-3)
    np.testing.assert_allclose(np.asarray(pred[1]), np.maximum(vq_ref, 1e-12), atol=2e-3)
    np.testing.assert_allclose(np.asarray(pred[0]), np.asarray(pred0[0]), atol=2e-3)  # mean unchanged
    _, amp, noise, _ = ref.hyper(jax.tree.map(lambda a: a[0], fitted.gp_params), cfg.gp)
    sd_pending = np.sqrt(np.asarray(pred[1])[:2])
    assert noise < 1e-3 and np.all(sd_pending <= 1.5 * np.sqrt(noise) + 1e-3), (sd_pending, noise)
    assert np.all(sd_pending < 0.1 * np.sqrt(np.asarray(v_told))), (sd_pending, v_told)
    np.testing.assert_allclose(m_fant, m_told, atol=1e-6)
    # the fantasized values (on y_eff's scale) follow the told rows
    _, mean_s, std_s = gplib.standardize(y_aug[:16], jnp.arange(16) < 10)
    np.testing.assert_allclose((np.asarray(y_aug[16:18]) - float(mean_s)) / float(std_s), m_told, atol=2e-3)
    # EI at a pending x: ~0 (incumbent includes the believed values), and far below EI before
    best = max(float(acq0.best), float(np.max(m_told)))
    assert float(acq.best) == pytest.approx(best, abs=2e-3)
    for i in range(2):
        before = float(ei_family.ei(jnp.asarray(xp[i], jnp.float32), 0, acq0, None))
        after = float(ei_family.ei(jnp.asarray(xp[i], jnp.float32), 0, acq, None))
        sd = np.sqrt(max(v_fant[i], 1e-12))
        u = (m_told[i] - best) / sd
        want = sd * (stats.norm.pdf(u) + u * stats.norm.cdf(u))  # closed-form EI, float64
        assert np.exp(after) == pytest.approx(want, abs=1e-4)
        assert want < 1e-3 * np.exp(before), (want, before)


def test_an_empty_pending_set_changes_nothing():
    """All slots masked: the same proposal as the single-worker path (a
    different compiled program, so up to float32 rounding)."""
    state = filled(CFG, n=10)
    for k in range(2):
        p0, s0 = loop.ask(jax.random.key(k), state, CFG)
        p1, s1 = loop.ask(jax.random.key(k), state, CFG, loop.no_pending(3, SPACE.dim))
        np.testing.assert_allclose(np.asarray(p1.x), np.asarray(p0.x), atol=1e-4)
        assert int(p1.memo_depth) == int(p0.memo_depth) and int(p1.source) == int(p0.source)
        assert float(p1.eta) == float(p0.eta)
        np.testing.assert_allclose(np.asarray(s1.chol), np.asarray(s0.chol), atol=1e-5)


# ----------------------------------------------------------- committed budget
def test_committed_budget_without_a_cost_gp_is_the_mean_observed_stage_cost():
    """EI has no cost GP: a pending fresh run commits the mean observed cost of
    every stage, a pending depth-2 run only that of stage 2 (hand computation)."""
    cfg = dataclasses.replace(CFG, method="ei")
    state = filled(cfg, n=10, failed=(3,))  # trial 3's stage 2 did not run
    costs = np.array([stage_costs(u) for u in SPACE.sample(np.random.default_rng(0), 10)])
    costs[3, 2] = np.nan
    mean_k = np.nanmean(costs, axis=0)
    pend = _pending(np.full((2, 5), 0.5), [0, 2])
    acq, _, _ = acquisition_state(jax.random.key(0), loop.canonicalize(state), cfg, pend)
    committed = mean_k.sum() + mean_k[2]
    B, spent, b0 = float(state.budget), float(state.spent), float(state.b0)
    assert float(acq.eta) == pytest.approx((B - spent - committed) / (B - b0), abs=1e-5)


def test_committed_budget_with_stage_cost_gps_is_the_lognormal_mean_of_the_stages_that_run():
    """EEIPU: the expected cost of a pending run's stages after its memo depth,
    exp(mu + sigma^2 / 2) of each stage's cost GP (NumPy float64 GP on the
    library's hyperparameters), is counted as spent in eta."""
    state = filled(CFG, n=10)
    xp = np.array([[0.2, 0.7, 0.4, 0.5, 0.3], [0.9, 0.1, 0.8, 0.6, 0.2]])
    depths = [1, 0]
    pend = _pending(xp, depths)
    acq, fitted, _ = acquisition_state(jax.random.key(1), loop.canonicalize(state), CFG, pend)
    n = int(state.n)
    X = np.asarray(state.X[:n], np.float64)
    C = np.asarray(state.stage_costs[:n], np.float64)
    in_masks = costlib.stage_input_masks(SPACE.stage_of_column, K, "prefix")
    expected = np.zeros((2, K))
    for k in range(K):
        ls, amp, noise, gmean = ref.hyper(jax.tree.map(lambda a: a[k + 1], fitted.gp_params), CFG.gp)
        z, mu_c, sd_c = ref.standardize(np.log(C[:, k]))
        m, v = ref.posterior(X, z, xp, ls, amp, noise, gmean, jitter=CFG.gp.jitter, input_mask=in_masks[k])
        mu, sigma = mu_c + sd_c * m, sd_c * np.sqrt(np.maximum(v, 1e-12))
        expected[:, k] = np.exp(mu + 0.5 * sigma**2)
    committed = expected[0, 1:].sum() + expected[1].sum()
    B, spent, b0 = float(state.budget), float(state.spent), float(state.b0)
    want = (B - spent - committed) / (B - b0)
    assert 0.0 < want < 1.0
    assert float(acq.eta) == pytest.approx(want, abs=2e-3)
    got = loop.committed_cost(state, CFG, pend, acq.costs, acq.cost_mean, acq.cost_std)
    assert float(got) == pytest.approx(committed, rel=2e-3)


# ----------------------------------------------------------- memoized prefixes
def test_a_running_trial_in_the_best_region_lends_its_prefix():
    """With ``prefix_pool="post_warmup"`` and only warm-up trials told, the
    running (BO-phase) trials are the only prefixes on offer: memoized
    proposals reuse one (source == N + p, prefix columns equal to
    pending.x[p]'s bit for bit), the one next to the optimum, and an empty
    slot never lends its (zero) prefix."""
    cfg = dataclasses.replace(CFG, top_q=2, n_warmup=12, prefix_pool="post_warmup")
    state = filled(cfg, n=12, seed=3)
    N = state.X.shape[0]
    xp = np.array([[0.5, 0.5, 0.5, 0.5, 0.5], [0.38, 0.33, 0.36, 0.34, 0.35]], np.float32)
    pend = loop.pending_from(xp, [0, 0], 3, SPACE.dim)
    srcs = []
    for k in range(4):
        prop, new = loop.ask(jax.random.key(k), state, cfg, pend)
        src, j, x = int(prop.source), int(prop.memo_depth), np.asarray(prop.x)
        srcs.append(src)
        assert -1 <= src < N + 3 and int(new.n) == int(state.n)
        if src >= N:
            p = src - N
            assert bool(pend.mask[p]) and j >= 1
            np.testing.assert_array_equal(x[: PREFIX_COLS[j]], xp[p, : PREFIX_COLS[j]])
        elif src >= 0:
            np.testing.assert_array_equal(x[: PREFIX_COLS[j]], np.asarray(state.X[src, : PREFIX_COLS[j]]))
    assert N + 1 in srcs, srcs  # the running trial near the optimum (slot 1)
    assert N + 2 not in srcs  # an empty slot never lends a prefix


def test_the_returned_state_holds_no_pending_row():
    state = filled(CFG, n=10)
    pend = _pending(np.full((2, 5), 0.4), [0, 1])
    p0, s0 = loop.ask(jax.random.key(5), state, CFG)
    p1, s1 = loop.ask(jax.random.key(5), state, CFG, pend)
    assert int(s1.n) == int(state.n) and int(s1.n_chol) == int(s0.n_chol) == 10
    np.testing.assert_array_equal(np.asarray(s1.X), np.asarray(state.X))
    assert s1.chol.shape == s0.chol.shape
    np.testing.assert_allclose(np.asarray(s1.chol), np.asarray(s0.chol), atol=1e-5)
    assert int(s1.n_refits) == int(s0.n_refits) and int(s1.n_fit) == int(s0.n_fit)


# ----------------------------------------------------------- compile once
def test_pending_asks_compile_once_per_pending_capacity(caplog):
    """0, 1, ..., P live rows of a capacity-P Pending reuse one compiled ask; a
    different capacity compiles again (so the count can fail)."""
    P = 5  # a capacity no other test uses: its first ask compiles in this process
    state = filled(CFG, n=10)
    xs = SPACE.sample(np.random.default_rng(2), P)
    caplog.set_level(logging.WARNING)
    with jax.log_compiles():
        for live in range(P + 1):
            loop.ask(jax.random.key(live), state, CFG, _pending(xs[:live], [live % 2] * live, capacity=P))
        once = [r for r in caplog.records if "Compiling jit(_ask)" in r.getMessage()]
        caplog.clear()
        loop.ask(jax.random.key(0), state, CFG, _pending(xs[:1], [0], capacity=P + 1))
        again = [r for r in caplog.records if "Compiling jit(_ask)" in r.getMessage()]
    assert len(once) == 1, [r.getMessage()[:80] for r in once]
    assert len(again) == 1


# ----------------------------------------------------------- every method
# Each method is one more compile (~17 s). The default suite runs one method per path through
# the pending code: ei (no cost GP: mean observed stage costs), eips (total-cost GP), eeipu
# (stage-cost GPs and in-flight prefixes), lambo and ms_bo (their own propose hooks); the others
# share those paths and run with the slow tests.
_SLOW = ("carbo", "ms_carbo", "pbgi", "eeipu_nomemo", "pbgi_nomemo")
METHODS = ["ei", "eips", "eeipu", "lambo", "ms_bo"] + [pytest.param(m, marks=pytest.mark.slow) for m in _SLOW]
SMALL = dict(n_warmup=4, n_random=64, n_per_prefix=8, n_refine=1, refine_steps=3, mc_samples=64)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_accepts_pending_rows(method):
    cfg = loop.BOConfig.from_space(SPACE, method=method, **SMALL)
    state = filled(cfg, n=8)
    N = state.X.shape[0]
    pend = _pending([[0.3, 0.4, 0.35, 0.3, 0.4], [0.7, 0.6, 0.2, 0.9, 0.5]], [0, 1])
    prop, new = loop.ask(jax.random.key(0), state, cfg, pend)
    x = np.asarray(prop.x)
    assert np.all(np.isfinite(x)) and np.all((x >= 0) & (x <= 1)), x
    assert np.isfinite(float(prop.score)) and not bool(prop.fallback)
    assert 0 <= int(prop.memo_depth) <= K - 1 and -1 <= int(prop.source) < N + 3
    if not cfg.method_def.memoize:
        assert int(prop.memo_depth) == 0 and int(prop.source) == -1
    assert 0.0 <= float(prop.eta) <= 1.0
    assert int(new.n) == int(state.n)


# ----------------------------------------------------------- validation
def test_pending_from_and_ask_refuse_bad_rows():
    d = SPACE.dim
    with pytest.raises(ValueError, match="exceed the pending capacity"):
        loop.pending_from(np.zeros((3, d)), [0, 0, 0], 2, d)
    with pytest.raises(ValueError, match="shape"):
        loop.pending_from(np.zeros((2, d + 1)), [0, 0], 3, d)
    with pytest.raises(ValueError, match="unit cube"):
        loop.pending_from(np.full((1, d), 1.5), [0], 3, d)
    with pytest.raises(ValueError, match="finite"):
        loop.pending_from(np.full((1, d), np.nan), [0], 3, d)
    with pytest.raises(ValueError, match="integers >= 0"):
        loop.pending_from(np.zeros((1, d)), [-1], 3, d)
    with pytest.raises(ValueError, match="integers >= 0"):
        loop.pending_from(np.zeros((1, d)), [0.5], 3, d)
    with pytest.raises(ValueError, match="capacity"):
        loop.pending_from(np.zeros((0, d)), [], 0, d)
    empty = loop.no_pending(4, d)
    assert empty.x.shape == (4, d) and not bool(jnp.any(empty.mask))
    state = filled(CFG, n=6)
    with pytest.raises(ValueError, match=r"memo_depth of live rows must lie in \[0, 2\]"):
        loop.ask(jax.random.key(0), state, CFG, _pending(np.zeros((1, d)), [3]))
    with pytest.raises(ValueError, match="pending.x must have shape"):
        loop.ask(jax.random.key(0), state, CFG, loop.no_pending(2, d + 1))
    with pytest.raises(ValueError, match="must be a Pending"):
        loop.ask(jax.random.key(0), state, CFG, np.zeros((1, d)))

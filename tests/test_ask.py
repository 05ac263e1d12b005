"""What ``ask`` does at its edges, each checked against an independent computation:
snapped proposals on integer spaces, the all-non-finite fallback, what the objective GP
is fitted on (failed trials), the total-cost model, cooling modes, stage-only cost
inputs, the cold/warm refit schedule and local candidates."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import costs as costlib
from eeipu_jax import gp, loop, methods
from eeipu_jax.methods import ei_family
from eeipu_jax.space import Float, Int, SearchSpace, StageSpace
from eeipu_jax.cpu import jit  # the library's compile options (eeipu_jax.cpu)
from tests import reference as ref

# ----------------------------------------------------------- integer spaces
INT_SPACE = SearchSpace([StageSpace("a", [Int("p", 0, 3)]), StageSpace("b", [Int("q", 0, 3)])])


def _int_objective(u):
    r = INT_SPACE.from_unit_array(np.asarray(u, np.float64))
    return float(-((r[0] - 1.4) ** 2 + (r[1] - 2.3) ** 2))


@pytest.mark.parametrize("data_seed", [1, 2])
def test_integer_proposals_are_chosen_on_snapped_scores(data_seed):
    """16-point space, 6 observed. Choosing the winner between bin centres and
    snapping it afterwards proposed an observed point for every key on these two
    data sets; scoring snapped candidates never does, and the proposal's score is
    the score of the point that runs."""
    cfg = loop.BOConfig.from_space(INT_SPACE, method="ei", n_warmup=3)
    state = loop.init(cfg, 1e3, capacity=16)
    for p in np.random.default_rng(data_seed).permutation(16)[:6]:
        u = INT_SPACE.to_unit_array(np.array([p // 4, p % 4], np.float64))
        state = loop.tell(state, u, _int_objective(u), np.ones(2))
    X = np.asarray(state.X[:6])
    acq_fn = jit(loop.acquisition_state, static_argnums=2)
    for k in range(4):
        key = jax.random.key(k)
        prop, _ = loop.ask(key, state, cfg)
        x = np.asarray(prop.x)
        np.testing.assert_allclose(x, INT_SPACE.snap(x.astype(np.float64)), atol=1e-6)
        assert not np.any(np.all(np.abs(X - x) < 1e-6, axis=1)), (k, x)
        # Brute force over all 16 points with the same fitted EI (EI's fit does
        # not depend on the key: one cold start from the default point): the
        # proposal is the best point of the space.
        acq, _, _ = acq_fn(jax.random.key(99), loop.canonicalize(state), cfg)
        grid = INT_SPACE.to_unit_array(np.array([[a, b] for a in range(4) for b in range(4)], np.float64))
        vals = np.asarray(jax.vmap(lambda z: ei_family.ei(z, 0, acq, None))(jnp.asarray(grid, jnp.float32)))
        assert float(prop.score) == pytest.approx(vals.max(), abs=1e-5)
        np.testing.assert_allclose(x, grid[np.argmax(vals)], atol=1e-6)


# ----------------------------------------------------------- fallback
def _nan_score(x, memo_depth, state, params):
    del memo_depth, state, params
    return jnp.nan * jnp.sum(x)


methods.register(methods.Method("test_nan_scores", _nan_score, "none", False,
                                description="every score NaN (tests only)"), overwrite=True)

SPACE = SearchSpace(
    [
        StageSpace("prep", [Float("a", 0.0, 1.0), Float("b", 0.0, 1.0)]),
        StageSpace("train", [Float("c", 0.0, 1.0), Float("d", 0.0, 1.0)]),
        StageSpace("eval", [Float("e", 0.0, 1.0)]),
    ]
)


def objective(u):
    u = np.asarray(u, np.float64)
    return float(-np.sum((u - 0.35) ** 2) + 0.3 * np.sin(5.0 * u[0]))


def stage_costs(u):
    u = np.asarray(u, np.float64)
    return np.array([1.0 + 4.0 * u[0], 0.5 + 2.0 * u[2] + 1.5 * u[0], 0.2 + 0.2 * u[4]])


def filled(cfg, n=10, failed=(), budget=200.0, seed=0):
    state = loop.init(cfg, budget=budget, capacity=16)
    for i, u in enumerate(SPACE.sample(np.random.default_rng(seed), n)):
        c = stage_costs(u)
        if i in failed:
            c[2] = np.nan
        state = loop.tell(state, u, np.nan if i in failed else objective(u), c)
    return state


def test_all_non_finite_scores_fall_back_to_a_flagged_random_point():
    cfg = loop.BOConfig.from_space(SPACE, method="test_nan_scores", n_warmup=4, n_random=64, n_refine=2)
    state = filled(cfg, n=6)
    xs = []
    for k in range(3):
        prop, state2 = loop.ask(jax.random.key(k), state, cfg)
        assert bool(prop.fallback) and not np.isfinite(float(prop.score))
        assert int(prop.memo_depth) == 0 and int(prop.source) == -1
        assert int(state2.n_fallback) == int(state.n_fallback) + 1
        xs.append(np.asarray(prop.x))
    # a random point per key, not row 0 of the batch every time
    assert len({tuple(np.round(x, 5)) for x in xs}) == 3
    assert all(np.all((x >= 0) & (x <= 1)) for x in xs)
    # (ordinary asks are never flagged: see test_objective_scale and the other tests here)


# ------------------------------------------ what the objective GP is fitted on
# The same settings as test_objective_scale's, so the compiled ask is shared through the XLA cache.
CFG = loop.BOConfig.from_space(SPACE, method="eeipu", n_warmup=4, n_random=128, n_per_prefix=16, mc_samples=256)
acquisition_state = jit(loop.acquisition_state, static_argnums=2)


def _obj_targets(acq, state):
    """Standardized targets the objective GP was conditioned on (valid rows)."""
    n = int(state.n)
    return np.asarray(acq.obj.y + acq.obj.mean)[:n]


def test_failed_trials_with_an_offset_float32_cannot_hold_and_before_any_success():
    """Failed trials sit at the worst finished value (see also test_loop) on the
    scale-free targets: with a 1e9 offset the finished trials keep their digits,
    and failures told before any success take the worst value once one exists."""
    state = loop.init(CFG, budget=200.0, capacity=16)
    U = SPACE.sample(np.random.default_rng(5), 8)
    for i, u in enumerate(U):
        state = loop.tell(state, u, np.nan if i < 3 else 1e9 + objective(u), stage_costs(u))
    acq, _, _ = acquisition_state(jax.random.key(0), state, CFG)
    y = np.array([np.nan] * 3 + [objective(u) for u in U[3:]])
    np.testing.assert_allclose(_obj_targets(acq, state), ref.objective_targets(y, np.isnan(y)), atol=1e-5)


def test_before_any_success_the_objective_is_a_standardized_constant():
    state = filled(CFG, n=5, failed=range(5))
    acq, _, y_eff = acquisition_state(jax.random.key(0), state, CFG)
    assert np.all(_obj_targets(acq, state) == 0.0) and np.all(np.asarray(y_eff)[:5] == 0.0)
    prop, _ = loop.ask(jax.random.key(1), state, CFG)
    assert np.isfinite(float(prop.score)) and not bool(prop.fallback)


# ----------------------------------------------------------- cooling modes
@pytest.mark.parametrize("cooling, eta", [("linear", 0.5), ("constant", 1.0), ("none", 0.0)])
def test_cooling_modes_set_eta_and_its_weight_in_the_score(cooling, eta):
    """Halfway through the budget: linear cooling gives eta = 0.5, constant 1,
    none 0; the EEIPU score is log EI + eta * log E[1/C_j] (NumPy reference)."""
    cfg = CFG
    state = loop.set_params(filled(cfg, n=10), cfg, cooling=cooling)
    half = float(state.b0) + 0.5 * (float(state.budget) - float(state.b0))
    state = loop.canonicalize(state._replace(spent=jnp.asarray(half, jnp.float32)))
    acq, fitted, _ = acquisition_state(jax.random.key(3), state, cfg)
    obj_params = jax.tree.map(lambda a: a[0], fitted.gp_params)
    cost_params = jax.tree.map(lambda a: a[1:], fitted.gp_params)
    assert float(acq.eta) == pytest.approx(eta, abs=1e-5)
    n = int(state.n)
    kw = dict(X=np.asarray(state.X[:n]), y=loop.objective_values(state), failed=np.asarray(state.failed[:n]),
              stage_costs=np.asarray(state.stage_costs[:n]), soc=SPACE.stage_of_column,
              obj=ref.hyper(obj_params, cfg.gp),
              costs=[ref.hyper(jax.tree.map(lambda a: a[k], cost_params), cfg.gp) for k in range(3)],
              epsilon=0.1, cost_inputs="prefix", jitter=cfg.gp.jitter)
    x = np.array([0.3, 0.6, 0.2, 0.8, 0.5])
    for j in (0, 1):
        want = ref.acquisition("eeipu", x, j, eta=eta, **kw)
        assert float(ei_family.eeipu(jnp.asarray(x, jnp.float32), j, acq, None)) == pytest.approx(want, abs=5e-3)
    if cooling == "none":  # the cost term drops out: EEIPU is EI, whatever the memo depth
        assert want == pytest.approx(ref.acquisition("ei", x, 1, eta=eta, **kw), abs=1e-12)
    else:  # and it matters otherwise
        assert abs(want - ref.acquisition("ei", x, 1, eta=eta, **kw)) > 0.1


# ------------------------------------------------------ total-cost methods
@pytest.mark.parametrize("method", ["eips", "carbo"])
def test_total_cost_methods_through_ask(method):
    """One GP on ln(total cost); EIPS is EI * E[1/C], CArBO EI * E[1/C]^eta (eta = 0.5
    halfway through the budget), each against the NumPy GP + log-normal closed form."""
    cfg = dataclasses.replace(CFG, method=method)
    assert cfg.n_cost_models == 1
    state = filled(cfg, n=10, failed=(4,))  # a failed trial's total cost is unknown
    half = float(state.b0) + 0.5 * (float(state.budget) - float(state.b0))
    state = loop.canonicalize(state._replace(spent=jnp.asarray(half, jnp.float32)))
    prop, new = loop.ask(jax.random.key(4), state, cfg)
    assert int(prop.memo_depth) == 0 and int(prop.source) == -1
    n = int(state.n)
    want = ref.acquisition(
        method, np.asarray(prop.x), 0, X=np.asarray(state.X[:n]), y=loop.objective_values(state),
        failed=np.asarray(state.failed[:n]), stage_costs=np.asarray(state.stage_costs[:n]),
        soc=SPACE.stage_of_column, obj=ref.hyper(jax.tree.map(lambda a: a[0], new.gp_params), cfg.gp),
        costs=[ref.hyper(jax.tree.map(lambda a: a[1], new.gp_params), cfg.gp)], eta=0.5, epsilon=0.1,
        cost_inputs="prefix", jitter=cfg.gp.jitter)
    assert float(prop.score) == pytest.approx(want, abs=5e-3)
    assert float(prop.eta) == pytest.approx(0.5, abs=1e-5)  # reported; EIPS's score ignores it


# ------------------------------------------------------ stage-only cost inputs
def test_stage_only_cost_inputs_reach_the_cost_gps():
    """Stage 1's cost depends mostly on a stage-0 column: with ``cost_inputs="stage"``
    its GP cannot see that column, so changing it leaves the prediction unchanged;
    with the default prefix inputs the prediction follows it."""
    preds = {}
    for mode in ("stage", "prefix"):
        cfg = dataclasses.replace(CFG, cost_inputs=mode)
        state = filled(cfg, n=12)
        acq, _, _ = acquisition_state(jax.random.key(0), state, cfg)
        np.testing.assert_array_equal(
            np.asarray(acq.costs.input_mask), costlib.stage_input_masks(SPACE.stage_of_column, 3, mode))
        x = jnp.asarray([0.1, 0.5, 0.5, 0.5, 0.5], jnp.float32)
        x2 = x.at[0].set(0.9).at[1].set(0.1)  # stage-0 columns only
        preds[mode] = [costlib.predict_log_cost(acq.costs, acq.cost_mean, acq.cost_std, z) for z in (x, x2)]
    (m1, s1), (m2, s2) = preds["stage"]
    assert float(m1[1]) == float(m2[1]) and float(s1[1]) == float(s2[1])  # stage 1 ignores stage 0's columns
    assert float(m1[0]) != float(m2[0])  # stage 0's own columns matter to stage 0
    (p1, _), (p2, _) = preds["prefix"]
    # true ln c_1 grows by ln((0.5+1+1.35)/(0.5+1+0.15)) = 0.55 from x to x2; the prefix GP sees it
    assert float(p2[1]) - float(p1[1]) > 0.2


# ---------------------------------------------------------- refit schedule
def _params_changed(before, after):
    return any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_with_refit_growth_0_every_ask_refits_and_every_refit_every_th_is_cold():
    """With 0 warm steps a warm fit returns its warm start unchanged; a cold fit
    runs 50 steps from the default point. With ``refit_growth = 0`` every ask
    refits, so the objective GP's parameters may only change on asks
    n_bo = 0, 3, 6 (refit_every = 3)."""
    cfg = dataclasses.replace(CFG, method="ei", refit_every=3, gp=gp.GPConfig(steps=0, cold_steps=50))
    state = loop.set_params(filled(cfg, n=4), cfg, refit_growth=0.0)
    key = jax.random.key(0)
    changed = []
    for i in range(8):
        key, sub = jax.random.split(key)
        before = state.gp_params
        prop, state = loop.ask(sub, state, cfg)
        changed.append(_params_changed(before, state.gp_params))
        x = np.asarray(prop.x)
        state = loop.tell(state, x, objective(x), stage_costs(x))
        assert int(state.n_bo) == i + 1 and int(state.n_refits) == i + 1
    assert changed == [True, False, False, True, False, False, True, False]


@pytest.mark.parametrize("hold_from,refits", [(0, [4, 5, 7, 9, 12, 15, 19]), (8, [4, 5, 6, 7, 9, 12, 15, 19])])
def test_refits_follow_the_growth_schedule_and_cold_ones_every_refit_every_th(hold_from, refits):
    """``refit_growth = 0.25``: a refit when the trials have grown by a quarter
    (at least one) since the last one, and at every ask below
    ``refit_hold_from`` trials. Written out for n = 4.. with hold_from = 0:
    refits at n = 4 (the first: cold), 5, 7, 9 (cold), 12, 15, 19 (cold), ...;
    with hold_from = 8 also at 6 (then 7, 9, ...). With 0 warm steps only the
    cold ones may move the parameters, and an ask twice at the same n refits
    at most once."""
    cfg = dataclasses.replace(CFG, method="ei", refit_every=3, refit_hold_from=hold_from,
                              gp=gp.GPConfig(steps=0, cold_steps=50))
    state = loop.set_params(filled(cfg, n=4), cfg, refit_growth=0.25)
    key = jax.random.key(1)
    expected_refits, n_fit, count = [], 0, 0
    for n in range(4, 21):
        due = n_fit == 0 or n < hold_from or n - n_fit >= max(1, int(np.ceil(0.25 * n_fit)))
        expected_refits.append((n, due, due and count % 3 == 0))
        if due:
            n_fit, count = n, count + 1
    assert [n for n, due, _ in expected_refits if due] == refits
    seen = []
    for n in range(4, 21):
        key, k1, k2 = jax.random.split(key, 3)
        before = state.gp_params
        refits_before = int(state.n_refits)
        prop, state = loop.ask(k1, state, cfg)
        _, again = loop.ask(k2, state, cfg)  # same n: nothing more is due
        assert int(again.n_refits) == int(state.n_refits)
        due = int(state.n_refits) > refits_before
        seen.append((n, due, _params_changed(before, state.gp_params)))
        assert int(state.n_fit) == max(m for m, d, _ in expected_refits[: n - 3] if d)
        assert int(state.n_chol) == n
        x = np.asarray(prop.x)
        state = loop.tell(state, x, objective(x), stage_costs(x))
    assert [(n, due) for n, due, _ in seen] == [(n, due) for n, due, _ in expected_refits]
    # Only cold refits move the parameters (a cold fit could, rarely, keep them).
    assert all(cold or not moved for (_, _, moved), (_, _, cold) in zip(seen, expected_refits))
    assert sum(moved for _, _, moved in seen) >= 2


# ------------------------------------------------------------ local candidates
def test_local_candidates_enter_the_batch_and_win_when_better():
    """With ``n_refine = 0`` the proposal is the best snapped candidate of the
    batch. The random part of the batch is the same with and without local
    candidates (same key), so adding ``n_local`` perturbations of the top trials
    can only raise the winning score, and a strictly higher score means a local
    candidate won (64 random points in 5 dimensions often miss EI's maximum
    near the best trials)."""
    cfg0 = loop.BOConfig.from_space(SPACE, method="ei", n_warmup=4, n_random=64, n_refine=0)
    cfg1 = dataclasses.replace(cfg0, n_local=16)
    state = filled(cfg0, n=8)
    wins = 0
    for k in range(8):
        p0, _ = loop.ask(jax.random.key(k), state, cfg0)
        p1, _ = loop.ask(jax.random.key(k), state, cfg1)
        assert float(p1.score) >= float(p0.score) - 1e-6
        wins += float(p1.score) > float(p0.score) + 1e-3
    assert wins >= 4  # 5 of 8 here, each by 0.02 to 0.25

"""ask/tell: compile once per capacity, budget accounting, memoized proposals, checkpoints."""

import dataclasses
import logging
import os
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import checkpoint, loop
from eeipu_jax.space import Float, Int, SearchSpace, StageSpace
from eeipu_jax.cpu import jit  # the library's compile options (eeipu_jax.cpu)

SPACE = SearchSpace(
    [
        StageSpace("prep", [Float("a", 0.0, 1.0), Int("n", 1, 8)]),
        StageSpace("train", [Float("b", 0.0, 1.0), Float("c", 0.0, 1.0)]),
        StageSpace("eval", [Float("e", 0.0, 1.0)]),
    ]
)
CFG = loop.BOConfig.from_space(SPACE, method="eeipu", n_warmup=5, n_random=128, n_per_prefix=16)


def objective(u):
    return float(-np.sum((np.asarray(u) - 0.35) ** 2))


def stage_costs(u):
    u = np.asarray(u)
    return np.array([1.0 + 8.0 * u[0], 0.5 + 2.0 * u[2], 0.2 + 0.2 * u[4]])


def run(state, key, n):
    for _ in range(n):
        key, sub = jax.random.split(key)
        prop, state = loop.ask(sub, state, CFG)
        x = np.asarray(prop.x)
        state = loop.tell(state, x, objective(x), stage_costs(x), int(prop.memo_depth))
    return state, key


@pytest.fixture(scope="module")
def warm_state():
    state = loop.init(CFG, budget=200.0, capacity=32)
    rng = np.random.default_rng(0)
    for u in SPACE.sample(rng, 5):
        state = loop.tell(state, u, objective(u), stage_costs(u), 0)
    return state


def test_warmup_asks_are_random_and_snapped():
    state = loop.init(CFG, budget=10.0)
    prop, state2 = loop.ask(jax.random.key(0), state, CFG)
    assert int(prop.memo_depth) == 0 and int(prop.source) == -1
    x = np.asarray(prop.x)
    np.testing.assert_allclose(x, SPACE.snap(x.astype(np.float64)), atol=1e-6)
    assert int(state2.n_bo) == 0


def test_warmup_asks_run_without_compiling_the_bo_step():
    """Warm-up asks run a small program of their own: no BO-step program is
    compiled until the first ask after the warm-up, and each warm-up proposal
    and returned state are those of the full step's warm-up branch (``_ask``,
    the program every later ask runs), bit for bit."""
    cfg = dataclasses.replace(CFG, n_random=64)  # a config no other test compiles
    state = loop.init(cfg, budget=200.0, capacity=16)
    before = loop.compiled_asks()
    key, seen = jax.random.key(5), []
    for _ in range(cfg.n_warmup):
        key, k = jax.random.split(key)
        prop, new = loop.ask(k, state, cfg)
        seen.append((k, state, prop, new))
        x = np.asarray(prop.x)
        state = loop.tell(new, x, objective(x), stage_costs(x), int(prop.memo_depth))
    assert loop.compiled_asks() == before  # five warm-up asks, no BO step compiled
    prop, _ = loop.ask(key, state, cfg)
    assert loop.compiled_asks() == before + 1 and int(prop.memo_depth) >= 0 and np.isfinite(float(prop.score))
    for k, s, prop, new in seen:
        ref_prop, ref_new = loop._ask(k, loop.canonicalize(s), cfg, None)
        for a, b in zip(jax.tree.leaves((prop, new)), jax.tree.leaves((ref_prop, ref_new))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert loop.compiled_asks() == before + 1  # the same program as the BO ask's


@pytest.mark.parametrize("enabled", [True, False])
def test_the_bo_step_runs_with_the_garbage_collector_paused_and_restored(warm_state, monkeypatch, enabled):
    """``ask`` traces (and runs) the BO step with Python's cyclic collector off
    (its passes took 0.4-0.6 s of a first ask's tracing) and leaves it as it
    found it, also when the step raises."""
    import gc

    from eeipu_jax.utils import collector_paused

    seen = []

    def fake_ask(*args):
        seen.append(gc.isenabled())
        raise RuntimeError("stop")

    monkeypatch.setattr(loop, "_ask", fake_ask)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        with pytest.raises(RuntimeError, match="stop"):
            loop.ask(jax.random.key(0), warm_state, CFG)
        assert seen == [False] and gc.isenabled() is enabled
        with collector_paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


def test_ten_tell_ask_rounds_compile_ask_once(warm_state, caplog):
    caplog.set_level(logging.WARNING)
    with jax.log_compiles():
        state, _ = run(warm_state, jax.random.key(1), 10)
    compiles = [r for r in caplog.records if "Compiling jit(_ask)" in r.getMessage()]
    assert len(compiles) <= 1, [r.getMessage()[:80] for r in compiles]
    assert int(state.n) == 15 and state.X.shape[0] == 32


def test_budget_accounting_and_cooling(warm_state):
    b0 = float(np.sum([stage_costs(np.asarray(warm_state.X[i])).sum() for i in range(5)]))
    assert float(warm_state.b0) == pytest.approx(b0, rel=1e-5)
    assert float(warm_state.spent) == pytest.approx(b0, rel=1e-5)
    prop, _ = loop.ask(jax.random.key(2), warm_state, CFG)
    assert float(prop.eta) == pytest.approx(1.0)  # first BO step
    # default charge: epsilon per memoized stage + full cost of the others
    x = np.asarray(warm_state.X[0])
    s = loop.tell(warm_state, x, 0.0, stage_costs(x), 2)
    expected = 2 * 0.1 + stage_costs(x)[2]
    assert float(s.charged[5]) == pytest.approx(expected, rel=1e-6)
    assert float(s.spent) == pytest.approx(b0 + expected, rel=1e-5)
    # the cost GPs learn full stage costs, not the charge
    np.testing.assert_allclose(np.asarray(s.stage_costs[5]), stage_costs(x), rtol=1e-6)
    # an explicit charge (measured seconds) wins
    s = loop.tell(warm_state, x, 0.0, stage_costs(x), 2, charged=0.75)
    assert float(s.charged[5]) == pytest.approx(0.75)
    # halfway through the budget eta is 1/2
    s = s._replace(spent=jnp.asarray(b0 + 0.5 * (200.0 - b0)))
    prop, _ = loop.ask(jax.random.key(2), s, CFG)
    assert float(prop.eta) == pytest.approx(0.5, abs=1e-5)


def test_eeipu_run_memoizes_and_improves(warm_state):
    state, _ = run(warm_state, jax.random.key(3), 20)
    n = int(state.n)
    depths = np.asarray(state.memo_depth[:n])
    assert (depths[5:] > 0).sum() >= 3, depths
    assert float(loop.best_observed(state)) > float(np.nanmax(np.asarray(warm_state.y[:5])))
    # proposals keep the copied prefix exactly
    key = jax.random.key(4)
    for _ in range(20):
        key, sub = jax.random.split(key)
        prop, state = loop.ask(sub, state, CFG)
        j, src = int(prop.memo_depth), int(prop.source)
        if j > 0:
            assert 0 <= src < int(state.n)
            cols = np.asarray(SPACE.prefix_mask(j))
            np.testing.assert_array_equal(np.asarray(prop.x)[cols], np.asarray(state.X[src])[cols])
            break
    else:
        pytest.fail("no memoized proposal in 20 asks")


def test_failed_trials_are_kept_and_do_not_break_ask(warm_state):
    x = np.asarray(warm_state.X[1])
    costs = stage_costs(x)
    costs[2] = np.nan  # stage 3 never ran
    s = loop.tell(warm_state, x, float("nan"), costs, 0)
    assert bool(s.failed[5]) and int(s.n) == 6
    assert float(s.charged[5]) == pytest.approx(costs[0] + costs[1], rel=1e-6)
    assert float(loop.best_observed(s)) == float(loop.best_observed(warm_state))
    prop, _ = loop.ask(jax.random.key(5), s, CFG)
    assert np.all(np.isfinite(np.asarray(prop.x))) and np.isfinite(float(prop.score))


def test_failed_trials_are_seen_at_the_worst_finished_value(warm_state):
    """Inspect what the objective GP is conditioned on: failed rows at the worst
    finished objective, then standardized (NumPy float64 reference)."""
    from tests import reference

    s = warm_state
    for i in (1, 3):
        x = np.asarray(warm_state.X[i]) * 0.5 + 0.25
        s = loop.tell(s, x, float("nan"), stage_costs(x), 0)
    acq, _, _ = jit(loop.acquisition_state, static_argnums=2)(jax.random.key(0), s, CFG)
    n = int(s.n)
    got = np.asarray(acq.obj.y + acq.obj.mean)[:n]
    y = loop.objective_values(s)
    failed = np.isnan(y)
    assert failed.tolist() == [False] * 5 + [True] * 2
    np.testing.assert_allclose(got, reference.objective_targets(y, failed), atol=1e-5)
    assert got[5] == got[6] == pytest.approx(got[:5].min(), abs=1e-6)


def test_checkpoint_round_trip_gives_the_same_proposal(warm_state, tmp_path):
    state, key = run(warm_state, jax.random.key(6), 3)
    checkpoint.save_state(tmp_path / "ckpt", state, key)
    restored, rkey = checkpoint.restore_state(tmp_path / "ckpt", loop.init(CFG, 1.0, capacity=32), with_key=True)
    a, _ = loop.ask(key, state, CFG)
    b, _ = loop.ask(rkey, restored, CFG)
    np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
    assert int(a.memo_depth) == int(b.memo_depth) and int(a.source) == int(b.source)


def test_a_checkpoint_of_another_state_layout_is_refused(warm_state, tmp_path):
    """A checkpoint written by another version of the state (here: one field
    missing) is refused with a clear error, never restored half-filled (a study
    then rebuilds its state from trials.jsonl: test_study)."""
    import collections

    Old = collections.namedtuple("BOState", [f for f in loop.BOState._fields if f != "n_observed"])
    checkpoint.save_state(tmp_path / "old", Old(**{f: getattr(warm_state, f) for f in Old._fields}))
    with pytest.raises(ValueError, match="another version of the state"):
        checkpoint.restore_state(tmp_path / "old", loop.init(CFG, 1.0, capacity=32))
    # the same fields, another method state inside (an eeipu state into a pbgi template)
    checkpoint.save_state(tmp_path / "eeipu", warm_state)
    pbgi = dataclasses.replace(CFG, method="pbgi")
    with pytest.raises(ValueError, match="structure"):
        checkpoint.restore_state(tmp_path / "eeipu", loop.init(pbgi, 1.0, capacity=32))


class _Acq(NamedTuple):
    extra: object = None


@pytest.mark.parametrize("last_scale", [2.0, 4.0])
def test_pbgi_decay_rule(last_scale):
    """PBGI-D: lambda is divided by ``decay`` iff the last proposal's index
    fell below the best observed value (which includes that proposal's own
    observation), the index kept on its own ask's scale."""
    from eeipu_jax.methods import pbgi

    cfg = dataclasses.replace(CFG, method="pbgi")
    state = loop.init(cfg, 100.0, loop.default_params(cfg, lambda0=0.1, decay=3.0), capacity=8)
    for i, yv in enumerate([1.0, 3.0, 2.0]):  # anchor 1, current scale 2, best 3
        state = loop.tell(state, np.full(SPACE.dim, 0.1 * i), yv, np.array([1.0, 2.0, 3.0]), 0)
    for index_y, pending, fires in [(2.9, True, True), (3.1, True, False), (2.9, False, False)]:
        # the index in the previous ask's scale-free units: (g - anchor) / last_scale
        g = state.method_state._replace(last_index=jnp.float32((index_y - 1.0) / last_scale),
                                        last_scale=jnp.float32(last_scale), pending=jnp.asarray(pending))
        _, g2 = pbgi.prepare(_Acq(), state._replace(method_state=g), cfg)
        assert float(g2.lam) == pytest.approx(0.1 / 3.0 if fires else 0.1)
        assert int(g2.n_decays) == int(fires) and not bool(g2.pending)
    # the cost scale is the mean observed full-trial cost (6 here)
    acq2, _ = pbgi.prepare(_Acq(), state, cfg)
    assert float(acq2.extra.log_cost_scale) == pytest.approx(np.log(6.0), rel=1e-6)
    assert float(acq2.extra.log_lambda) == pytest.approx(np.log(0.1), rel=1e-6)


def test_pbgi_ask_records_its_index_and_keeps_lambda_in_the_state(warm_state):
    cfg = dataclasses.replace(CFG, method="pbgi")
    with pytest.raises(ValueError, match="another method's state"):  # warm_state was built for eeipu
        loop.ask(jax.random.key(3), warm_state, cfg)
    fresh = loop.init(cfg, 1.0)
    warm_state = warm_state._replace(method_state=fresh.method_state, params=fresh.params)
    prop, state = loop.ask(jax.random.key(3), warm_state, cfg)
    assert np.isfinite(float(prop.score)) and bool(state.method_state.pending)
    # the recorded index is the proposal's score brought from the standardized scale to y's scale-free one
    valid, y_eff = loop.effective_objective(warm_state)
    ye = np.asarray(y_eff)[np.asarray(valid)]
    want = ye.mean() + ye.std(ddof=1) * float(prop.score)
    assert float(state.method_state.last_index) == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_tell_grows_capacity():
    state = loop.init(CFG, budget=10.0, capacity=8)
    for i in range(9):
        u = SPACE.sample(np.random.default_rng(i), 1)[0]
        state = loop.tell(state, u, objective(u), stage_costs(u), 0)
    assert int(state.n) == 9 and state.X.shape[0] == 16
    assert np.all(np.isfinite(np.asarray(state.y[:9])))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="nope"), "unknown method"),
        (dict(n_warmup=1), "n_warmup"),
        (dict(prefix_pool="best"), "prefix_pool"),
        (dict(cooling="fast"), "cooling"),
        (dict(cost_inputs="all"), "cost_inputs"),
        (dict(n_refine=10_000), "n_refine"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(refine_lr=float("nan")), "refine_lr"),
        (dict(eta_start=-1.0), "eta_start"),
        (dict(method="pbgi", decay=0.5), "decay"),
        (dict(method="lambo", beta="high"), "real numbers"),
        (dict(lambda0=0.1), r"unknown param\(s\) \['lambda0'\] for method 'eeipu'"),
        (dict(ucb_beta=0.2), "unknown param"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loop.configure(SPACE, **kwargs)


def test_init_rejects_bad_budget():
    with pytest.raises(ValueError, match="budget"):
        loop.init(CFG, budget=-1.0)
    with pytest.raises(ValueError, match="budget"):
        loop.init(CFG, budget=float("nan"))


def test_kept_factors_give_the_posterior_of_a_fresh_factorization():
    """A run from capacity 8 (grown twice) with refits on schedule: after every ask
    the kept factor of each GP (objective + 3 stage costs; one failed trial whose
    last stage did not run) equals the float64 NumPy Cholesky factor of its used
    rows with the state's hyperparameters, and the posterior ``ask`` conditions on
    equals the textbook one (NumPy, fresh factorization)."""
    from eeipu_jax import gp
    from tests import reference as ref

    cfg = dataclasses.replace(CFG, refit_hold_from=0)  # the growth rule from the start: held asks
    state = loop.init(cfg, budget=1e4, capacity=8)
    rng = np.random.default_rng(1)
    for u in SPACE.sample(rng, 5):
        state = loop.tell(state, u, objective(u), stage_costs(u), 0)
    acq_fn = jit(loop.acquisition_state, static_argnums=2)
    Xs = SPACE.sample(np.random.default_rng(2), 4)
    masks = np.ones((3, 5), bool)
    for k in range(3):
        masks[k] = np.asarray(SPACE.stage_of_column) <= k
    key = jax.random.key(11)
    appended = 0
    for i in range(19):
        key, k_ask = jax.random.split(key)
        refits = int(state.n_refits)
        prop, state = loop.ask(k_ask, state, cfg)
        appended += int(state.n_refits) == refits
        x = np.asarray(prop.x)
        costs = stage_costs(x)
        if i == 3:
            costs[2] = np.nan  # failed in the last stage
        state = loop.tell(state, x, np.nan if i == 3 else objective(x), costs, int(prop.memo_depth))
        if i % 3 != 2:
            continue
        key, k_ask = jax.random.split(key)
        _, state = loop.ask(k_ask, state, cfg)  # brings the factors up to date with the tells
        acq, same, _ = acq_fn(key, state, cfg)
        assert int(same.n_refits) == int(state.n_refits)  # nothing new: held hyperparameters
        n = int(state.n)
        X = np.asarray(state.X[:n], np.float64)
        y = loop.objective_values(state)
        failed = np.isnan(y)
        sc = np.asarray(state.stage_costs[:n], np.float64)
        gps = [(jax.tree.map(lambda a: a[0], state.gp_params), np.ones(n, bool), ref.objective_targets(y, failed), np.ones(5), acq.obj, 0)]
        for k in range(3):
            ok = np.isfinite(sc[:, k])
            t = np.full(n, np.nan)
            t[ok] = ref.standardize(np.log(sc[ok, k]))[0]
            gps.append((jax.tree.map(lambda a: a[k + 1], state.gp_params), ok, t, masks[k].astype(float),
                        jax.tree.map(lambda a: a[k], acq.costs), k + 1))
        for params, used, target, im, post, m in gps:
            ls, amp, noise, mean = ref.hyper(params, CFG.gp)
            keep = im > 0
            Xu = X[used][:, keep]
            K = ref.matern52(Xu, Xu, ls[keep], amp) + (noise + CFG.gp.jitter) * np.eye(len(Xu))
            # float32 against float64: entries of L are O(1); the smallest pivots
            # (near-duplicate rows, ~0.01) carry float32's cancellation either way
            L = np.asarray(state.chol[m])[:n, :n][np.ix_(used, used)]
            np.testing.assert_allclose(L, np.linalg.cholesky(K), rtol=0, atol=5e-4)
            mu_ref, var_ref = ref.posterior(X[used], target[used], Xs, ls, amp, noise, mean,
                                            jitter=CFG.gp.jitter, input_mask=im)
            mu, var = jax.vmap(lambda z: gp.predict(post, z))(jnp.asarray(Xs, jnp.float32))
            np.testing.assert_allclose(mu, mu_ref, rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(var, var_ref, rtol=1e-2, atol=2e-4)
    assert state.X.shape[0] == 32 and appended >= 5  # grown 8 -> 16 -> 32; asks without a refit


_FIRST_BO_ASK = r"""
import sys
import jax, numpy as np
from jax import monitoring
from eeipu_jax import loop
from eeipu_jax.utils import enable_compilation_cache
from tests import test_loop as t
assert enable_compilation_cache(sys.argv[1]) == sys.argv[1]
hits = []
monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("/cache_hits") else None)
state = loop.init(t.CFG, budget=200.0, capacity=16)
for u in t.SPACE.sample(np.random.default_rng(0), t.CFG.n_warmup):
    state = loop.tell(state, u, t.objective(u), t.stage_costs(u), 0)
before = len(hits)
prop, _ = loop.ask(jax.random.key(0), state, t.CFG)
print("RESULT", len(hits) - before, float(prop.score))
"""


def test_a_second_process_loads_the_bo_step_from_the_persistent_cache(tmp_path):
    """What a resumed run, the next seed or another worker process relies on: with
    ``enable_compilation_cache`` the first process writes the compiled BO step, and a
    second one loads it (a cache hit, the same proposal) instead of compiling it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "EEIPU_JAX_XLA_CACHE"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=root)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _FIRST_BO_ASK, str(tmp_path / "xla")], cwd=root, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(next(line for line in out.stdout.splitlines() if line.startswith("RESULT")).split()[1:])
    assert runs[0][0] == "0" and int(runs[1][0]) >= 1, runs
    assert runs[0][1] == runs[1][1]  # the loaded program proposes what the compiled one did
    assert os.listdir(tmp_path / "xla")

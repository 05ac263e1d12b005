"""LaMBO and MS_BO: tree membership, bandit replay, switching depth, prefix posteriors, leaf-bound
proposals, and short runs that must beat random search with the same trials."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import gp, loop, methods, simulate
from eeipu_jax.methods import lambo, msbo
from eeipu_jax.cpu import jit  # the library's compile options (eeipu_jax.cpu)
from tests.test_gp import reference_posterior

SOC = (0, 0, 1, 1, 1, 2, 3, 3)  # K = 4 stages: 3 tree levels, 8 leaves


def test_methods_are_registered():
    assert {"lambo", "ms_bo"} <= set(methods.registered())
    assert methods.get_method("ms_bo").propose is msbo.propose
    cfg = loop.BOConfig(stage_of_column=SOC, bins=(0,) * 8, method="ms_bo")
    assert cfg.n_cost_models == 0 and cfg.n_gps == 4  # no cost GP; one prefix GP per stage, kept in the state


def test_leaf_membership_against_a_loop_over_leaf_boxes():
    split = lambo.split_columns(SOC)
    assert split.tolist() == [0, 2, 5]  # first column of stages 0, 1, 2; the last stage is not split
    bits = lambo.leaf_bits(3)
    X = np.random.default_rng(0).uniform(size=(300, 8)).astype(np.float32)
    X[:5, 2] = 0.5  # the boundary belongs to the upper half
    got = np.asarray(lambo.leaf_of(jnp.asarray(X), split))
    for x, leaf in zip(X, got):
        inside = []
        for l in range(8):  # leaf l: stage s's split column in [0, .5) if bit 0, [.5, 1] if bit 1
            lo = np.where(bits[l] == 1, 0.5, 0.0)
            hi = np.where(bits[l] == 1, 1.0, 0.5)
            c = x[split]
            if np.all((c >= lo) & ((c < hi) | (hi == 1.0))):
                inside.append(l)
        assert inside == [leaf]  # exactly one leaf: the tree partitions the box


def test_bandit_replay_against_a_numpy_exp3_loop():
    rng = np.random.default_rng(1)
    N, n_leaves = 24, 4
    leaves = rng.integers(0, n_leaves, N)
    y = rng.normal(size=N)
    y[7] = np.nan  # a failed trial: loss 1
    use = np.ones(N, bool)
    use[:5] = False  # warm-up rows are not bandit rounds
    use[20:] = False  # padding
    # Reference: plain Python EXP3 with uniform mixing.
    L = np.zeros(n_leaves)
    lo, hi = np.inf, -np.inf
    lr, gamma = lambo.PARAMS["lr"], lambo.PARAMS["gamma"]

    def probs(L):
        w = np.exp(-lr * (L - L.min()))
        return (1 - gamma) * w / w.sum() + gamma / n_leaves

    for i in range(N):
        if not use[i]:
            continue
        if np.isfinite(y[i]):
            lo, hi = min(lo, y[i]), max(hi, y[i])
            loss = 1.0 - ((y[i] - lo) / (hi - lo) if hi > lo else 0.5)
        else:
            loss = 1.0
        p = probs(L)
        L[leaves[i]] += loss / p[leaves[i]]
    ref = probs(L)
    got = np.asarray(lambo.bandit_probabilities(jnp.asarray(leaves), jnp.asarray(y, jnp.float32),
                                                jnp.asarray(use), n_leaves))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert got.sum() == pytest.approx(1.0, abs=1e-6) and got.min() >= gamma / n_leaves - 1e-7


def test_switch_depth_follows_the_slowly_moving_bandit_law():
    keys = jax.random.split(jax.random.key(0), 20000)
    h = np.asarray(jax.vmap(lambda k: lambo.switch_depth(k, 3))(keys))
    freq = np.bincount(h, minlength=3) / len(h)
    np.testing.assert_allclose(freq, [0.5, 0.25, 0.25], atol=0.015)  # first sigma = -1, the last forced
    assert int(lambo.switch_depth(jax.random.key(1), 0)) == 0


def test_prefix_gps_match_numpy_posteriors_on_their_prefixes():
    cfg = loop.BOConfig(stage_of_column=(0, 0, 1, 2), bins=(0,) * 4, method="ms_bo", n_warmup=3)
    state = loop.init(cfg, 100.0, capacity=16)
    rng = np.random.default_rng(2)
    X = rng.uniform(size=(9, 4)).astype(np.float32)
    y = np.sin(3 * X[:, 0]) + X[:, 2] - X[:, 3] ** 2
    for x, v in zip(X, y):
        state = loop.tell(state, x, float(v), np.ones(3, np.float32))
    posts, best, fitted = jit(msbo.fit_prefix_gps, static_argnums=2)(jax.random.key(0), state, cfg)
    params = fitted.gp_params  # the prefix GPs' hyperparameters (the state keeps K GPs for MS_BO)
    masks = msbo.prefix_input_masks(cfg.stage_of_column, 3)
    assert masks.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    ystd = (y - y.mean()) / y.std(ddof=1)
    Xs = rng.uniform(size=(5, 4)).astype(np.float32)
    for k in range(3):
        p = jax.tree.map(lambda a: a[k], params)
        ls, amp, noise = (np.asarray(v, np.float64) for v in gp.constrain(p, cfg.gp))
        cols = masks[k].astype(bool)
        mu_ref, var_ref, _ = reference_posterior(X[:, cols].astype(np.float64), ystd, Xs[:, cols].astype(np.float64),
                                                 ls[cols], amp, noise, float(p.mean))
        post = jax.tree.map(lambda a: a[k], posts)
        mu, var = jax.vmap(lambda x: gp.predict(post, x))(jnp.asarray(Xs))
        np.testing.assert_allclose(np.asarray(mu), mu_ref, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(np.asarray(var), var_ref, rtol=2e-3, atol=2e-3)
        mu_obs, _, _ = reference_posterior(X[:, cols].astype(np.float64), ystd, X[:, cols].astype(np.float64),
                                           ls[cols], amp, noise, float(p.mean))
        assert float(best[k]) == pytest.approx(mu_obs.max(), abs=2e-3)  # incumbent: best posterior mean
        assert float(best[k]) <= ystd.max() + 1e-3


@dataclasses.dataclass(frozen=True)
class Bowl:
    """A smooth 6-d problem in 3 stages of 2 columns (unit stage costs) where a GP
    model should beat random sampling clearly: maximize ``-|u - c|^2``, optimum 0."""

    centre: tuple = (0.7, 0.2, 0.35, 0.8, 0.3, 0.6)
    budget: float = 1e6
    dim: int = 6

    def objective(self, u):
        return -jnp.sum((u - jnp.asarray(self.centre, u.dtype)) ** 2)

    def stage_costs(self, u):
        return jnp.ones(3, u.dtype)

    def total_cost(self, u):
        return jnp.asarray(3.0, u.dtype)

    def to_raw(self, u):
        return u


N_SEEDS, N_WARMUP, N_TRIALS = 8, 10, 30


@pytest.mark.parametrize("method", ["ms_bo", "lambo"])
def test_baselines_beat_random_search_with_the_same_trials(method):
    """8 seeds, 10 random warm-up trials and 20 BO trials each, against random
    search with the same warm-up and 20 uniform trials (seeded per seed). The bar
    is random search, not the warm-up: a method must reach a clearly smaller regret
    on most seeds and on average."""
    problem = Bowl()
    cfg = loop.BOConfig(stage_of_column=(0, 0, 1, 1, 2, 2), bins=(0,) * 6, method=method, n_warmup=N_WARMUP)
    keys = jnp.stack([jax.random.key(s) for s in range(N_SEEDS)])
    runs = simulate.run_jitted(keys, problem, cfg, problem.budget, warmup="random", max_trials=N_TRIALS)
    centre = np.asarray(problem.centre)
    bo, rs = [], []
    for s, r in enumerate(runs):
        assert len(r.y) == N_TRIALS and np.all(r.memo_depth == 0)  # baselines never memoize
        rnd = np.random.default_rng(1000 + s).uniform(size=(N_TRIALS - N_WARMUP, 6))
        X_rs = np.concatenate([r.X[:N_WARMUP], rnd])
        bo.append(-np.max(r.y))
        rs.append(np.min(np.sum((X_rs - centre) ** 2, axis=1)))
    bo, rs = np.array(bo), np.array(rs)
    assert (bo < rs).sum() >= 7, (bo.round(4), rs.round(4))
    assert bo.mean() < 0.5 * rs.mean(), (bo.mean(), rs.mean())


def test_lambo_proposals_lie_in_the_chosen_leaf():
    """Split columns with 3 bins have their middle bin centre at 0.5 (the upper
    half): a candidate drawn in a lower half snaps there unless kept in its leaf.
    Every candidate of every leaf lies in the leaf, and through ``ask`` the
    proposal lies in the leaf the bandit chose (the choice replayed from the
    documented steps: EXP3 probabilities, lazy switching depth, a categorical draw)."""
    from eeipu_jax.space import Int, SearchSpace, StageSpace

    space = SearchSpace([StageSpace(f"s{k}", [Int("a", 0, 2), Int("b", 0, 4)]) for k in range(3)])
    cfg = loop.BOConfig.from_space(space, method="lambo", n_warmup=4, n_random=128)
    split = lambo.split_columns(cfg.stage_of_column)
    assert split.tolist() == [0, 2]
    for arm in range(4):
        cand = lambo.leaf_candidates(jax.random.key(arm), arm, cfg)
        np.testing.assert_array_equal(np.asarray(lambo.leaf_of(cand, split)), arm)
        np.testing.assert_allclose(np.asarray(cand), space.snap(np.asarray(cand, np.float64)), atol=1e-6)

    state = loop.init(cfg, 1e3, capacity=16)
    rng = np.random.default_rng(0)
    for u in space.sample(rng, 9):
        state = loop.tell(state, u, float(-np.sum((u - 0.4) ** 2)), np.ones(3))
    n = int(state.n)
    bits = lambo.leaf_bits(2)
    leaves = np.asarray(lambo.leaf_of(state.X, split))
    y = np.where(np.arange(state.X.shape[0]) < n, np.asarray(state.y), np.nan)
    use = (np.arange(len(y)) < n) & ~np.asarray(state.warmup)
    p = np.asarray(lambo.bandit_probabilities(jnp.asarray(leaves), jnp.asarray(y, jnp.float32),
                                              jnp.asarray(use), 4))
    for k in range(6):
        key = jax.random.key(k)
        prop, _ = loop.ask(key, state, cfg)
        _, k_depth, k_arm, _ = jax.random.split(jax.random.split(key)[1], 4)
        h = int(lambo.switch_depth(k_depth, 2))
        same_top = np.all((bits == bits[leaves[n - 1]]) | (np.arange(2) >= h), axis=1)
        arm = int(jax.random.categorical(k_arm, jnp.where(jnp.asarray(same_top), jnp.log(jnp.asarray(p)), -jnp.inf)))
        assert int(lambo.leaf_of(prop.x, split)) == arm, (k, np.asarray(prop.x), arm)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lambo", "ms_bo"])
def test_real_run_resumed_from_its_checkpoint_proposes_what_an_uninterrupted_run_does(tmp_path, method):
    """The bandit/prefix-GP state is rebuilt from the checkpointed observations: 5 trials, then
    --resume for 4 more, must propose exactly the 9 points a single 9-trial run proposes."""
    from eeipu_jax import Study
    from eeipu_jax.runtime.records import read_trials

    kw = dict(n_warmup=3, bo={"n_random": 64, "n_refine": 0})
    pipe = "tests.pipelines_for_tests:counting_toy"
    Study.create(str(tmp_path / "split"), pipe, method, 1e6, 0, **kw).optimize(5)
    Study.load(str(tmp_path / "split")).optimize(4)
    Study.create(str(tmp_path / "whole"), pipe, method, 1e6, 0, **kw).optimize(9)
    split = read_trials(str(tmp_path / "split" / "trials.jsonl"))
    whole = read_trials(str(tmp_path / "whole" / "trials.jsonl"))
    assert [r["index"] for r in split] == list(range(9))
    np.testing.assert_array_equal(np.array([r["x"] for r in split]), np.array([r["x"] for r in whole]))
    assert all(r["memo_depth"] == 0 for r in split)  # charged in full, never restored from the cache

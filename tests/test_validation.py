"""Bad input fails at the boundary (host side, before jit) with a message naming the
argument; NumPy scalars and 0-d arrays are accepted wherever a number is."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import gp, loop
from eeipu_jax.space import Categorical, Float, Int, SearchSpace, SpaceError, StageSpace

SPACE = SearchSpace(
    [
        StageSpace("prep", [Float("a", 0.0, 1.0), Int("n", 1, 8)]),
        StageSpace("train", [Float("b", 0.0, 1.0)]),
        StageSpace("eval", [Float("e", 0.0, 1.0)]),
    ]
)
CFG = loop.BOConfig.from_space(SPACE, method="eeipu", n_warmup=3)
X = np.array([0.2, 0.4, 0.6, 0.8])
COSTS = np.array([1.0, 2.0, 0.5])
NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def state():
    return loop.tell(loop.init(CFG, budget=100.0), X, 0.5, COSTS)


GOOD = dict(x=X, y=0.3, stage_costs=COSTS, memo_depth=0, charged=None)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(stage_costs=[-1.0, 2.0, 0.5]), r"stage_costs must be finite and >= 0.*-1\.0"),
        (dict(stage_costs=[1.0, INF, 0.5]), r"stage_costs must be finite and >= 0.*inf"),
        (dict(stage_costs=[1.0, 2.0]), r"stage_costs must have shape \(3,\)"),
        (dict(stage_costs=[[1.0, 2.0, 0.5]]), r"stage_costs must have shape \(3,\)"),
        (dict(stage_costs=["a", 1, 1]), r"stage_costs must be 3 numbers"),
        (dict(stage_costs=[NAN, 2.0, 0.5], memo_depth=1), r"memoized stage.*original compute costs"),
        (dict(charged=-50.0), r"charged must be None or a finite number >= 0, got -50"),
        (dict(charged=NAN), r"charged must be None or a finite number >= 0, got nan"),
        (dict(charged=INF), r"charged must be"),
        (dict(x=[0.2, NAN, 0.6, 0.8]), r"x must be finite"),
        (dict(x=[0.2, 1.5, 0.6, 0.8]), r"x must lie in the unit cube.*columns \[1\]"),
        (dict(x=[-0.01, 0.5, 0.6, 0.8]), r"x must lie in the unit cube.*columns \[0\]"),
        (dict(x=X[:3]), r"x must have shape \(4,\)"),
        (dict(memo_depth=-1), r"memo_depth must be an integer in \[0, 2\].*-1"),
        (dict(memo_depth=3), r"memo_depth must be an integer in \[0, 2\].*3"),
        (dict(memo_depth=5), r"memo_depth must be an integer in \[0, 2\].*5"),
        (dict(memo_depth=1.5), r"memo_depth must be an integer"),
        (dict(memo_depth=True), r"memo_depth must be an integer"),
        (dict(memo_depth=np.array([1])), r"memo_depth must be a scalar"),
        (dict(y=None), r"y is None.*nan"),
        (dict(y="0.3"), r"y must be a number"),
        (dict(y=np.array([0.3, 0.4])), r"y must be a scalar"),
        (dict(y=1e39), r"y=1e\+39 is beyond the float32 range"),
        # numbers only: NumPy would read "0.2" as 0.2, True as 1 and drop an imaginary part
        (dict(x=["0.2", "0.4", "0.6", "0.8"]), r"x must be 4 numbers \(real ones, not strings\)"),
        (dict(x=[True, False, True, False]), r"x must be 4 numbers \(real ones, not booleans\)"),
        (dict(x=X + 0j), r"x must be 4 numbers \(real ones, not complex numbers\)"),
        (dict(stage_costs=["1.0", "2.0", "0.5"]), r"stage_costs must be 3 numbers \(real ones, not strings\)"),
        (dict(stage_costs=[1.0, None, 0.5]), r"stage_costs must be 3 numbers \(real ones, not objects\)"),
        # beyond float32: stored as its maximum (a cost) or inf (the budget spent)
        (dict(stage_costs=[1.0, 1e39, 0.5]), r"stage_costs must be .*fit float32.*1e\+39"),
        (dict(charged=1e39), r"charged=1e\+39 is beyond the float32 range.*spent would become inf"),
    ],
)
def test_tell_rejects_bad_trials_naming_the_argument(state, bad, match):
    with pytest.raises(ValueError, match=match):
        loop.tell(state, **{**GOOD, **bad})


@pytest.mark.parametrize("wrong", [None, {}, {"X": np.zeros((32, 4))}])
def test_ask_tell_init_and_set_params_name_a_state_or_config_of_the_wrong_type(state, wrong):
    """A dict or ``None`` for the state or the config raises a ValueError naming the argument
    (an AttributeError from deep inside on an earlier main; init and set_params still gave one),
    checked on the host before anything is traced."""
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"^state must be a BOState \(from eeipu_jax.loop.init\), got"):
        loop.tell(wrong, **GOOD)
    with pytest.raises(ValueError, match=r"^state must be a BOState \(from eeipu_jax.loop.init\), got"):
        loop.ask(key, wrong, CFG)
    with pytest.raises(ValueError, match=r"^config must be a BOConfig, got"):
        loop.ask(key, state, wrong)
    with pytest.raises(ValueError, match=r"^config must be a BOConfig, got"):
        loop.init(wrong, budget=10.0)
    with pytest.raises(ValueError, match=r"^state must be a BOState"):
        loop.set_params(wrong, CFG, epsilon=0.2)
    with pytest.raises(ValueError, match=r"^config must be a BOConfig, got"):
        loop.set_params(state, wrong, epsilon=0.2)


def test_tell_accepts_numpy_and_jax_scalars_and_0d_arrays(state):
    variants = [
        dict(y=np.float32(0.3), memo_depth=np.int64(1), charged=np.float32(2.0)),
        dict(y=np.array(0.3), memo_depth=np.array(1), charged=np.array(2)),
        dict(y=jnp.asarray(0.3), memo_depth=jnp.asarray(1), charged=jnp.asarray(2.0)),
        dict(y=3, memo_depth=1.0, charged=2),
    ]
    for v in variants:
        s = loop.tell(state, jnp.asarray(X, jnp.float32), stage_costs=list(COSTS), **v)
        assert int(s.n) == 2 and int(s.memo_depth[1]) == 1
        assert float(s.charged[1]) == pytest.approx(2.0)
        assert loop.objective_values(s)[1] == pytest.approx(float(np.asarray(v["y"])), rel=1e-7)


def test_tell_clips_rounding_slack_and_charges_what_it_was_told(state):
    s = loop.tell(state, [1.0 + 1e-7, -1e-7, 0.6, 0.8], 0.1, COSTS, memo_depth=2)
    np.testing.assert_array_equal(np.asarray(s.X[1]), np.float32([1.0, 0.0, 0.6, 0.8]))
    # default charge: epsilon for each of the 2 memoized stages + the last stage's cost
    assert float(s.charged[1]) == pytest.approx(2 * 0.1 + 0.5)
    assert float(s.spent) == pytest.approx(COSTS.sum() + 0.7, rel=1e-6)
    # NaN marks a stage that did not run (a failed trial): it costs nothing
    s = loop.tell(state, X, NAN, [1.0, 2.0, NAN])
    assert bool(s.failed[1]) and float(s.charged[1]) == pytest.approx(3.0)


def test_init_accepts_numpy_scalars_and_rejects_bad_numbers():
    for budget in (np.float32(5), np.int64(5), np.array(5.0), jnp.asarray(5.0), 5):
        s = loop.init(CFG, budget=budget, params=loop.default_params(CFG, epsilon=np.float32(0.1)))
        assert float(s.budget) == 5.0 and float(s.params.epsilon) == pytest.approx(0.1)
    for budget, match in [(-1.0, "positive"), (NAN, "positive"), (INF, "positive"), (True, "number"),
                          ("5", "number"), (np.array([5.0]), "scalar")]:
        with pytest.raises(ValueError, match=f"budget.*{match}"):
            loop.init(CFG, budget=budget)
    for eps in (0.0, NAN, -0.1):
        with pytest.raises(ValueError, match="epsilon"):
            loop.init(CFG, budget=1.0, params=loop.Params(epsilon=eps))


def test_space_accepts_numpy_bounds_and_rejects_self_unequal_choices():
    p = Float("a", np.float32(0), np.float32(1))
    assert (p.low, p.high) == (0.0, 1.0) and type(p.low) is float
    assert Float("a", np.array(0.5), np.int64(2)).high == 2.0
    q = Int("n", np.int64(1), np.int32(4))
    assert (q.low, q.high) == (1, 4) and type(q.low) is int and q.n_values == 4
    json.dumps(dataclasses.asdict(p))  # plain Python numbers
    with pytest.raises(SpaceError, match="'a'.*high must be a finite number"):
        Float("a", np.float32(0), np.float32(np.inf))
    with pytest.raises(SpaceError, match=r"'c'.*choice nan is not equal to itself"):
        Categorical("c", ("x", float("nan")))
    with pytest.raises(SpaceError, match=r"'c'.*choice .*nan.* is not equal to itself"):
        Categorical("c", (np.float64("nan"), 1.0))
    with pytest.raises(SpaceError, match=r"'c'.*not hashable"):
        Categorical("c", ("x", ["list"]))
    # values: NumPy and 0-d arrays are numbers; NaN is not an integer
    s = SearchSpace([StageSpace("s", [p, q])])
    np.testing.assert_allclose(s.to_unit({"s": {"a": np.array(0.25), "n": np.int64(2)}}), [0.25, 0.375])
    with pytest.raises(SpaceError, match="'n'.*integer"):
        s.to_unit({"s": {"a": 0.5, "n": float("nan")}})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(refine_lr=NAN), r"Params.refine_lr must be a finite number.*got nan"),
        (dict(refine_lr=INF), r"Params.refine_lr"),
        (dict(refine_lr=0.0), r"Params.refine_lr"),
        (dict(refine_lr="0.1"), r"Params.refine_lr must be a number"),
        (dict(method="lambo", beta=-0.1), r"lambo: beta must be >= 0"),
        (dict(method="lambo", beta=NAN), r"method 'lambo': params must be finite"),
        (dict(n_random=10.5), r"BOConfig.n_random must be an integer"),
        (dict(n_refine=True), r"BOConfig.n_refine must be an integer"),
        (dict(gp=dict(steps=3)), r"BOConfig.gp must be a GPConfig"),
    ],
)
def test_bo_config_float_and_int_fields_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loop.configure(SPACE, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(learning_rate=NAN), r"GPConfig.learning_rate must be a finite number"),
        (dict(learning_rate=-0.1), r"GPConfig.learning_rate must be a finite number > 0"),
        (dict(jitter=NAN), r"GPConfig.jitter"),
        (dict(jitter=-1e-6), r"GPConfig.jitter must be a finite number >= 0"),
        (dict(lengthscale_prior=(NAN, 6.0)), r"GPConfig.lengthscale_prior"),
        (dict(noise_prior=(1.1, 0.0)), r"GPConfig.noise_prior must be None or a Gamma"),
        (dict(amplitude_prior=(2.0,)), r"GPConfig.amplitude_prior must be a pair"),
        (dict(noise_bounds=(1e-4, INF)), r"GPConfig.noise_bounds"),
        (dict(lengthscale_bounds=(0.0, 1.0)), r"GPConfig.lengthscale_bounds must satisfy 0 < low < high"),
        (dict(restarts=2.0), r"GPConfig.restarts must be an integer"),
    ],
)
def test_gp_config_floats_must_be_finite_and_in_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gp.GPConfig(**kwargs)


def test_configs_store_plain_floats_so_they_serialize():
    cfg, params = loop.configure(SPACE, "lambo", refine_lr=np.float32(0.05), beta=np.float64(0.2),
                                 gp=gp.GPConfig(learning_rate=np.float32(0.05), jitter=np.float32(1e-6),
                                                noise_prior=(np.float32(1.1), 0.05)))
    assert type(params.refine_lr) is float and type(cfg.gp.learning_rate) is float
    json.dumps({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "gp"})
    json.dumps(dataclasses.asdict(cfg.gp))
    hash(cfg)


def test_ask_refuses_a_state_built_for_another_space_of_the_same_shape():
    other = SearchSpace([StageSpace("prep", [Float("a", 0.0, 10.0), Int("n", 1, 8)]),
                         StageSpace("train", [Float("b", 0.0, 1.0)]),
                         StageSpace("eval", [Float("e", 0.0, 1.0)])])
    cfg_other = loop.BOConfig.from_space(other, method="eeipu", n_warmup=3)
    assert (cfg_other.dim, cfg_other.n_stages, cfg_other.bins) == (CFG.dim, CFG.n_stages, CFG.bins)
    assert cfg_other.space_id != CFG.space_id > 0
    assert SPACE.fingerprint == SearchSpace(list(SPACE.stages)).fingerprint  # the same space: the same id
    state = loop.init(CFG, budget=10.0)
    assert int(state.space_id) == CFG.space_id
    with pytest.raises(ValueError, match="state was built for another search space"):
        loop.ask(jax.random.key(0), state, cfg_other)
    # a config changed in other settings keeps its space
    loop.ask(jax.random.key(0), state, dataclasses.replace(CFG, n_random=64))
    with pytest.raises(ValueError, match=r"BOConfig: invalid value for \['space_id'\]"):
        dataclasses.replace(CFG, space_id=-1)


def test_the_driver_tells_values_the_optimizer_refuses_as_a_failed_trial():
    """tell keeps refusing a stage cost of 1e39 (float32 would store its maximum) from API callers;
    the trial driver records such a trial as failed, with the reason, instead of stopping."""
    from eeipu_jax.runtime.driver import tell_or_fail

    rec = {"index": 0, "status": "ok", "x": X.tolist(), "y": 0.3, "stage_costs": [1.0, 1e39, 0.5], "memo_depth": 2,
           "charged": 2.0, "error": None}
    state, told = tell_or_fail(loop.init(CFG, budget=100.0), rec)
    assert told["status"] == "failed" and math.isnan(told["y"])
    assert "optimizer refused the trial's values" in told["error"] and "stage_costs" in told["error"]
    assert told["memo_depth"] == 1 and math.isnan(told["stage_costs"][1]) and told["charged"] == 2.0
    assert int(state.n) == 1 and bool(state.failed[0]) and float(state.spent) == pytest.approx(2.0)
    ok, same = tell_or_fail(loop.init(CFG, budget=100.0), {**rec, "stage_costs": COSTS.tolist()})
    assert same["status"] == "ok" and not bool(ok.failed[0])

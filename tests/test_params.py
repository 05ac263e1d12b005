"""Params are traced: changing any float setting between two asks compiles nothing new,
a batch of settings can be vmapped, and a method's own hooks (observe, prepare,
update) run when the protocol says they do."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import acquisition, loop, methods
from eeipu_jax.space import Float, SearchSpace, StageSpace
from eeipu_jax.cpu import jit  # the library's compile options (eeipu_jax.cpu)

SPACE = SearchSpace([StageSpace("a", [Float("x", 0.0, 1.0)]), StageSpace("b", [Float("y", 0.0, 1.0)]),
                     StageSpace("c", [Float("z", 0.0, 1.0)])])
SMALL = dict(n_warmup=4, n_random=32, n_per_prefix=8, mc_samples=32, n_refine=2, refine_steps=3)


def _told(config, params=None, n=6, seed=0):
    state = loop.init(config, 100.0, params, capacity=16)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        u = rng.uniform(size=3)
        state = loop.tell(state, u, float(-np.sum((u - 0.3) ** 2)), 1.0 + u, 0)
    return state


def _ask_compiles(caplog, fn):
    caplog.clear()
    with jax.log_compiles():
        out = fn()
    return out, [r.getMessage() for r in caplog.records if "Compiling jit(_ask)" in r.getMessage()]


# every float of Params, and each built-in method's own params
CHANGES = {
    "eeipu": [dict(epsilon=0.37), dict(refine_lr=0.2), dict(eta_start=0.5, eta_end=0.25), dict(refit_growth=0.0),
              dict(cooling="constant")],
    "pbgi": [dict(lambda0=0.7), dict(decay=5.0), dict(epsilon=0.01)],
    "lambo": [dict(beta=3.0), dict(lr=0.3, gamma=0.5)],
}


@pytest.mark.parametrize("method", sorted(CHANGES))
def test_changing_a_float_setting_between_asks_compiles_nothing_new(method, caplog):
    caplog.set_level(logging.WARNING)
    config = loop.BOConfig.from_space(SPACE, method=method, **SMALL)
    state = _told(config)
    (first, _), compiled = _ask_compiles(caplog, lambda: loop.ask(jax.random.key(0), state, config))
    assert len(compiled) == 1  # the first ask of this config compiles (the log is seen)
    n_programs = loop.compiled_asks()
    for change in CHANGES[method]:
        changed = loop.set_params(state, config, **change)
        (prop, _), compiled = _ask_compiles(caplog, lambda: loop.ask(jax.random.key(0), changed, config))
        assert compiled == [], change
        assert loop.compiled_asks() == n_programs
        assert np.all(np.isfinite(np.asarray(prop.x)))
    # and the change reaches the computation: eta follows the cooling params
    cooled = loop.set_params(state, config, eta_start=0.5, eta_end=0.5)
    prop, _ = loop.ask(jax.random.key(0), cooled, config)
    r = (float(state.budget) - float(state.spent)) / (float(state.budget) - float(state.b0))
    assert float(first.eta) == pytest.approx(r, rel=1e-5) and 0.0 < r < 1.0  # linear cooling by default
    assert float(prop.eta) == pytest.approx(0.5)


def test_set_params_validates_and_keeps_dtypes():
    config = loop.BOConfig.from_space(SPACE, method="pbgi", **SMALL)
    state = _told(config)
    new = loop.set_params(state, config, lambda0=0.5, epsilon=0.2)
    assert float(new.params.method["lambda0"]) == pytest.approx(0.5) and float(new.params.epsilon) == pytest.approx(0.2)
    assert jax.tree.map(lambda a: a.dtype, new.params) == jax.tree.map(lambda a: a.dtype, state.params)
    with pytest.raises(ValueError, match="lambda0 must be > 0"):
        loop.set_params(state, config, lambda0=-1.0)
    with pytest.raises(ValueError, match=r"unknown param\(s\) \['beta'\]"):
        loop.set_params(state, config, beta=1.0)


def test_a_batch_of_params_is_vmapped_like_separate_asks():
    """Asks over a batch of epsilon values and cooling schedules, vmapped as one
    program, equal the asks made one setting at a time."""
    config = loop.BOConfig.from_space(SPACE, method="eeipu", **SMALL)
    state = _told(config, n=8)
    settings = [dict(epsilon=e, eta_end=c) for e, c in [(0.1, 0.0), (0.01, 0.5), (1.0, 0.0)]]
    states = [loop.set_params(state, config, **s) for s in settings]
    batched = jax.tree.map(lambda *a: jnp.stack(a), *states)
    ask = jit(jax.vmap(lambda s: loop.ask_traced(jax.random.key(5), s, config)))
    props, _ = ask(batched)
    for i, s in enumerate(states):
        prop, _ = loop.ask(jax.random.key(5), s, config)
        np.testing.assert_allclose(np.asarray(props.x[i]), np.asarray(prop.x), atol=2e-5)
        assert int(props.memo_depth[i]) == int(prop.memo_depth)
        assert float(props.eta[i]) == pytest.approx(float(prop.eta), abs=1e-6)


# ------------------------------------------------------------ the hooks
def _counting_score(x, memo_depth, acq, params):
    del memo_depth
    return acquisition.log_ei(x, acq) + 0.0 * params["w"] * acq.extra


def _init(config, params):
    del config, params
    return {"told": jnp.zeros((), jnp.int32), "sum_y": jnp.zeros(()), "asks": jnp.zeros((), jnp.int32),
            "prepared": jnp.zeros((), jnp.int32)}


def _observe(ms, state, config, row):
    del config
    y = jnp.where(state.failed[row], 0.0, state.y[row])
    return {**ms, "told": ms["told"] + 1, "sum_y": ms["sum_y"] + y}


def _prepare(acq, state, config):
    del config
    ms = state.method_state
    return acq._replace(extra=ms["asks"].astype(jnp.float32)), {**ms, "prepared": ms["prepared"] + 1}


def _update(ms, proposal, acq, state, config):
    del proposal, acq, state, config
    return {**ms, "asks": ms["asks"] + 1}


methods.register(methods.Method("test_hooks", _counting_score, "none", False, params={"w": 1.0}, init=_init,
                                observe=_observe, prepare=_prepare, update=_update), overwrite=True)


def test_observe_sees_each_told_trial_once_in_order_and_update_each_proposal():
    config = loop.BOConfig.from_space(SPACE, method="test_hooks", **SMALL)
    state = loop.init(config, 100.0, capacity=16)
    key = jax.random.key(0)
    ys = []
    for i in range(9):
        key, sub = jax.random.split(key)
        prop, state = loop.ask(sub, state, config)
        ms = state.method_state
        assert int(ms["told"]) == i  # every trial told so far, seen once
        assert float(ms["sum_y"]) == pytest.approx(sum(ys), abs=1e-5)
        bo_asks = max(0, i - SMALL["n_warmup"] + 1)  # warm-up asks skip the BO step
        assert int(ms["asks"]) == bo_asks and int(ms["prepared"]) == bo_asks
        x = np.asarray(prop.x)
        y = float(-np.sum((x - 0.3) ** 2))
        ys.append(y)
        state = loop.tell(state, x, y, 1.0 + x, 0)
    # two tells between asks (a parallel driver): both are observed at the next ask
    state = loop.tell(state, np.full(3, 0.5), 1.0, np.ones(3), 0)
    _, state = loop.ask(key, state, config)
    assert int(state.method_state["told"]) == 10
    assert float(state.method_state["sum_y"]) == pytest.approx(sum(ys) + 1.0, abs=1e-5)

"""Behaviour pinned across restructurings: short synthetic3 runs of every method
(Python, jitted and asynchronous drivers) against trajectories saved by
tests/data/make_pinned_trajectories.py before the optimizer was split into
config / state / surrogates / loop and methods became plug-ins (the commit is in
the file). A change of structure must not move a trajectory beyond float rounding.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import loop, simulate
from pipelines.synthetic import get_pipeline

PIPE = get_pipeline("synthetic3")
REF = np.load(os.path.join(os.path.dirname(__file__), "data", "pinned_trajectories.npz"))
BASE = dict(n_warmup=5, n_random=128, n_per_prefix=16, mc_samples=256, refine_steps=10)
BUDGET = 150.0
KW = dict(capacity=16, max_trials=14)
# name -> (method, settings), as the reference was made (with the settings' old names)
RUNS = {
    "ei": ("ei", {}), "eips": ("eips", {}), "carbo": ("carbo", {}), "ms_carbo": ("ms_carbo", {}),
    "eeipu": ("eeipu", {}), "pbgi": ("pbgi", {}), "lambo": ("lambo", {}), "ms_bo": ("ms_bo", {}),
    "eeipu_nomemo": ("eeipu_nomemo", {}),
    "eeipu_custom": ("eeipu", dict(refine_lr=0.1, cooling="constant", epsilon=0.2)),
    "lambo_custom": ("lambo", dict(beta=0.8)),
    "pbgi_custom": ("pbgi", dict(lambda0=0.3, decay=3.0)),
}
FAST = ("eeipu", "ms_bo", "lambo_custom", "pbgi_custom")


def _close(got, name, fields):
    for f in fields:
        want = REF[f"{name}/{f}"]
        assert got[f].shape == want.shape, (name, f, got[f].shape, want.shape)
        np.testing.assert_allclose(got[f], want, rtol=1e-5, atol=1e-5, err_msg=f"{name}/{f}")


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in RUNS])
def test_python_driver_keeps_the_pinned_trajectory(name):
    method, settings = RUNS[name]
    config, params = loop.configure(PIPE.space, method, **BASE, **settings)
    r = simulate.run_python(jax.random.key(11), PIPE, config, BUDGET, params=params, **KW)
    _close(r._asdict(), f"py/{name}", ("X", "y", "memo_depth", "charged", "eta"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["eeipu", "pbgi"])
def test_jitted_driver_keeps_the_pinned_trajectory(method):
    config, params = loop.configure(PIPE.space, method, **BASE)
    keys = jnp.stack([jax.random.key(11), jax.random.key(12)])
    for s, r in enumerate(simulate.run_jitted(keys, PIPE, config, BUDGET, params=params, batching="map", **KW)):
        _close(r._asdict(), f"jit/{method}/{s}", ("X", "y", "memo_depth", "charged", "eta"))


@pytest.mark.parametrize("method", [pytest.param(m, marks=() if m == "eeipu" else pytest.mark.slow)
                                    for m in ("eeipu", "eips", "lambo", "ms_bo", "pbgi")])
def test_async_driver_keeps_the_pinned_trajectory(method):
    config, params = loop.configure(PIPE.space, method, **BASE)
    r = simulate.run_async(jax.random.key(13), PIPE, config, BUDGET, workers=2, params=params, **KW)
    _close(r._asdict(), f"async/{method}", ("X", "y", "memo_depth", "proposed_depth", "charged", "worker"))

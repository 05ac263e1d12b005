"""Sweeps: seeds x settings of one method as one compiled program, equal to the
per-seed driver's runs, the same on 4 simulated devices, and the ablation command."""

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax import loop, simulate
from pipelines.synthetic import get_pipeline

# One worker runs this file's tests: its module fixture is built once (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sweep")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPE = get_pipeline("synthetic3")
SMALL = dict(n_warmup=5, n_random=64, n_per_prefix=8, mc_samples=64, refine_steps=5)
CFG = loop.BOConfig.from_space(PIPE.space, method="eeipu", **SMALL)
EPS, SEEDS = (0.05, 0.5), (0, 1)
KW = dict(max_trials=14, capacity=16)
BUDGET = 100.0


def _grid():
    keys = jnp.stack([jax.random.key(s) for _ in EPS for s in SEEDS])
    params = simulate.stack_params([loop.default_params(CFG, epsilon=e) for e in EPS for _ in SEEDS])
    return keys, params


@pytest.fixture(scope="module")
def sweep():
    keys, params = _grid()
    return simulate.run_jitted(keys, PIPE, CFG, BUDGET, params=params, batching="map", **KW)


def test_a_sweep_equals_the_per_seed_driver_and_compiles_one_program_per_capacity(sweep, caplog):
    for i, e in enumerate(EPS):
        for j, s in enumerate(SEEDS):
            r = sweep[i * len(SEEDS) + j]
            one = simulate.run_python(jax.random.key(s), PIPE, CFG, BUDGET, params=loop.default_params(CFG, epsilon=e),
                                      **KW)
            assert len(r.y) == len(one.y)
            np.testing.assert_array_equal(r.memo_depth, one.memo_depth)
            np.testing.assert_allclose(r.X, one.X, atol=2e-3)
            np.testing.assert_allclose(r.charged, one.charged, rtol=1e-4)
            # the setting reached the run: memoized stages are charged this epsilon
            memo = r.memo_depth > 0
            want = [e * j + float(jnp.sum(PIPE.stage_costs(jnp.asarray(x))[j:])) for x, j in
                    zip(r.X[memo], r.memo_depth[memo])]
            np.testing.assert_allclose(r.charged[memo], want, rtol=1e-4)
    # settings are traced: a sweep over them compiles what a single setting's run compiles
    caplog.set_level(logging.WARNING)
    keys, params = _grid()
    with jax.log_compiles():
        simulate.run_jitted(keys[::-1], PIPE, CFG, BUDGET, params=jax.tree.map(lambda a: a[::-1], params),
                            batching="map", **KW)
    assert not [r for r in caplog.records if "Compiling jit(_segment)" in r.getMessage()]


def test_batched_params_are_checked_run_by_run():
    keys, params = _grid()
    bad = params._replace(epsilon=np.asarray([0.1, -1.0, 0.1, 0.1], np.float32))
    with pytest.raises(ValueError, match="epsilon"):
        simulate.run_jitted(keys, PIPE, CFG, BUDGET, params=bad, **KW)
    with pytest.raises(ValueError, match="leading axis of 3"):
        simulate.run_jitted(keys[:3], PIPE, CFG, BUDGET, params=params, **KW)


_ON_ONE_AND_FOUR = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from eeipu_jax.cpu import pin_xla_threads
pin_xla_threads()
from eeipu_jax import loop, simulate
from tests import test_sweep as t
assert len(jax.devices()) == 4
keys, params = t._grid()
concurrent = {"concurrent": True, "one-after-another": False, "default": None}[sys.argv[2]]
out = {}
for n in (1, 4):
    rs = simulate.run_jitted(keys[:3], t.PIPE, t.CFG, t.BUDGET, params=jax.tree.map(lambda a: a[:3], params),
                             batching=sys.argv[1], devices=jax.devices()[:n], concurrent=concurrent, **t.KW)
    out[n] = [r.X.tolist() for r in rs]
print("RESULT " + json.dumps(out))
"""


def _one_and_four(batching, mode, xla_defaults):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT)
    if xla_defaults:
        env["EEIPU_JAX_FAST_COMPILE"] = "0"
    out = subprocess.run([sys.executable, "-c", _ON_ONE_AND_FOUR, batching, mode], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert len(res["4"]) == len(res["1"]) == 3
    assert not np.allclose(np.asarray(res["1"][0]), np.asarray(res["1"][1]))  # the runs are different runs
    return [np.asarray(x) for x in res["1"]], [np.asarray(x) for x in res["4"]]


def test_on_four_cpu_devices_each_device_runs_its_share_after_the_other_with_the_same_numbers():
    """The CPU default: three runs over four simulated devices (padded to four
    shares, the copy dropped), one device after the other, each running the
    one-device program: the same numbers as on one device, with the library's
    compile options."""
    ones, fours = _one_and_four("map", "default", xla_defaults=False)
    for x4, x1 in zip(fours, ones):
        np.testing.assert_array_equal(x4, x1)


@pytest.mark.same_rounding
@pytest.mark.parametrize("batching", ["map", pytest.param("vmap", marks=pytest.mark.slow)])
def test_the_same_sweep_sharded_over_four_simulated_devices_gives_the_same_numbers(batching):
    """The accelerators' default (``concurrent=True``: one program sharded over
    a mesh, ``jax.shard_map``) on four simulated CPU devices against one device.

    Under XLA's default compile options (``EEIPU_JAX_FAST_COMPILE=0``): there a
    run's program rounds the same inside the four-device program as alone.
    With the library's CPU options (eeipu_jax.cpu) the partitioned program
    rounds a few ulps differently, which a BO run amplifies in its last
    proposals (seen: 1.5e-5 on the last of 14 trials under ``map``); what this
    test pins is the sharding (which run goes where, padding, keys), not the
    emitter. These sweeps are small: the devices running at once on a CPU can
    deadlock in jaxlib on larger ones (README, "Accelerators").
    """
    ones, fours = _one_and_four(batching, "concurrent", xla_defaults=True)
    # map: each run is the same program wherever it runs; vmap: batched kernels of another
    # batch size round differently (the bound of the Python vs jitted driver test)
    for x4, x1 in zip(fours, ones):
        np.testing.assert_allclose(x4, x1, atol=1e-5 if batching == "map" else 2e-3)


def test_the_ablation_command_writes_a_table_and_a_figure(tmp_path):
    from experiments import sweep
    from paper_figures import sweep as figure

    out = str(tmp_path / "eps")
    assert sweep.main(["epsilon", "--seeds", "2", "--pipelines", "synthetic3", "--max-trials", "12",
                       "--out", out] + [f"--bo={k}={v}" for k, v in SMALL.items()]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    rows = summary["pipelines"]["synthetic3"]
    assert list(rows) == ["0.01", "0.03", "0.1", "0.3", "1"] and all(r["n"] == 2 for r in rows.values())
    assert len(os.listdir(os.path.join(out, "runs"))) == 10
    assert "| epsilon | BO iterations |" in open(os.path.join(out, "summary.md")).read()
    paths = figure.draw(out)
    assert all(os.path.getsize(p) > 0 for p in paths)
    assert sweep.main(["epsilon", "--bo", "nonsense=1", "--out", out]) == 2

"""Data-parallel training stages: a -tiny Flax stage trains over 4 simulated devices
(the batch split, gradients all-reduced by XLA) and matches the single-device run."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The segmentation pipeline's training stage (U-Net, AdamW one-cycle) on a fixed
# random batch of the tiny size; prints the loss and a checksum of the parameters.
_TRAIN = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from eeipu_jax.cpu import pin_xla_threads
pin_xla_threads()
from pipelines import data_parallel
from pipelines.segmentation import N_CLASSES, SIZES, init_unet, train_unet
sz = SIZES["tiny"]
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(16, 32, 32, 3)).astype(np.float32))
y = jnp.asarray(rng.integers(0, N_CLASSES, size=(16, 32, 32)).astype(np.int32))
params = init_unet(jax.random.key(0), sz, x.shape[1:])
args = (jax.random.key(1), params, x, y, jnp.float32(3e-3), jnp.float32(1e-4))
kw = dict(width=sz.width, depth=sz.depth, batch=8, epochs=2, im2col=sz.im2col)
out, loss = train_unet(*args, **kw)
hlo = train_unet.lower(*args, **kw).compile().as_text()
leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(out)]
mesh = data_parallel.data_mesh()
print("RESULT " + json.dumps({"devices": len(jax.devices()), "mesh": None if mesh is None else int(mesh.devices.size),
                              "all_reduce": "all-reduce" in hlo, "loss": float(loss), "params": [float(np.sum(a)) for a in leaves],
                              "first": leaves[0].ravel()[:8].tolist()}))
"""


def _run(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    out = subprocess.run([sys.executable, "-c", _TRAIN], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def test_a_tiny_training_stage_is_data_parallel_over_four_devices_and_matches_one():
    one, four = _run(1), _run(4)
    assert (one["devices"], one["mesh"]) == (1, None) and (four["devices"], four["mesh"]) == (4, 4)
    assert four["all_reduce"] and not one["all_reduce"]  # the gradients are summed across the devices
    assert four["loss"] == __import__("pytest").approx(one["loss"], rel=1e-4)
    np.testing.assert_allclose(four["params"], one["params"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(four["first"], one["first"], rtol=1e-3, atol=1e-5)

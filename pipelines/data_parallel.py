"""Data parallelism for the pipelines' training stages: the batch split over every local device.

A trial that owns several devices (a Ray worker given ``num_gpus=4``, or
``resources={"TPU": 4}``; a CPU process with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``) trains data-parallel
without any change to the stage: inside the jitted training step each
mini-batch is constrained to a sharding along its batch axis on a one-axis
mesh of the process's devices, the parameters stay replicated, and XLA's SPMD
partitioner runs the forward and backward pass of each shard on its device
and all-reduces the gradients. The result is the single-device computation
up to the order of the gradient's sums (float rounding).

With one device, or a batch that the device count does not divide, the
constraint is left out and the step is exactly the single-device program.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["data_mesh", "shard_batch"]


@functools.lru_cache(maxsize=None)
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.asarray(devices), ("data",))


def data_mesh() -> Mesh | None:
    """A one-axis ``"data"`` mesh of this process's devices, or ``None`` with one device."""
    devices = tuple(jax.local_devices())
    return _mesh(devices) if len(devices) > 1 else None


def shard_batch(tree):
    """Constrain every array of ``tree`` (leading axis: the batch) to be split
    over :func:`data_mesh` (call inside ``jit``, at trace time). Arrays whose
    batch the device count does not divide, and everything on one device,
    are returned unchanged."""
    mesh = data_mesh()
    if mesh is None:
        return tree
    n = mesh.devices.size

    def constrain(a):
        if a.ndim == 0 or a.shape[0] % n:
            return a
        spec = PartitionSpec("data", *([None] * (a.ndim - 1)))
        return jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec))

    return jax.tree.map(constrain, tree)

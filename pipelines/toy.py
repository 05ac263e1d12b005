"""A small three-stage demo pipeline: random features -> training -> evaluation.

Used by the tests, the benchmarks and the README example. It has the shape
that makes memoization pay: the first stage is the expensive one and its cost
grows with a hyperparameter, so reusing its cached output saves real seconds.

* ``features`` (``lengthscale``, ``depth``): random Fourier features of the
  inputs, then ``depth`` rounds of random mixing (``phi <- (phi + tanh(phi M)) / 2``);
  cost grows linearly with ``depth``.
* ``train`` (``lr``, ``steps``, ``l2``): a one-hidden-layer MLP on the features,
  full-batch Adam for ``steps`` steps with an L2 penalty; cost grows with ``steps``.
* ``evaluate`` (``scale``): validation mean squared error of the scaled
  predictions; the objective is ``-mse`` (maximized).

Loop lengths are traced values (``lax.fori_loop`` with a dynamic bound), so each
stage compiles once per process whatever its hyperparameters. The dataset is a
fixed synthetic regression problem: ``data_seed`` is part of the dataset's
definition (and of the pipeline version, hence of every cache key); the run's
seed drives the stages' random features and initializations.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eeipu_jax.space import Float, Int
from eeipu_jax.runtime.pipeline import Pipeline, Stage

__all__ = ["make_toy", "make_toy_small"]


def _dataset(n_samples: int, n_inputs: int, data_seed: int) -> dict:
    rng = np.random.default_rng(data_seed)
    x = rng.normal(size=(n_samples, n_inputs)).astype(np.float32)
    y = np.sin(2.0 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2 % n_inputs] + 0.3 * np.cos(3.0 * x[:, 3 % n_inputs])
    y = y + 0.1 * rng.normal(size=n_samples)
    y = ((y - y.mean()) / y.std()).astype(np.float32)
    n_train = (3 * n_samples) // 4
    return {
        "train": {"x": x[:n_train], "y": y[:n_train]},
        "val": {"x": x[n_train:], "y": y[n_train:]},
    }


def make_toy(
    *,
    n_samples: int = 4096,
    n_inputs: int = 8,
    width: int = 768,
    hidden: int = 32,
    data_seed: int = 0,
    stage_sleep: tuple[float, float, float] = (0.0, 0.0, 0.0),
    name: str = "toy",
) -> Pipeline:
    """Build the demo pipeline.

    Args:
        n_samples: dataset size (75% train, 25% validation).
        n_inputs: input dimension.
        width: number of random features (sets the first stage's cost).
        hidden: hidden units of the MLP.
        data_seed: seed of the fixed synthetic dataset.
        stage_sleep: extra seconds each stage sleeps (to emulate slow stages in
            demos and tests; not part of the outputs, so not of the version).
        name: pipeline name.

    Returns:
        A three-stage :class:`~eeipu_jax.runtime.Pipeline`.
    """
    if len(stage_sleep) != 3 or any(s < 0 for s in stage_sleep):
        raise ValueError(f"stage_sleep must be three non-negative numbers, got {stage_sleep!r}")

    @jax.jit
    def features(x, key, lengthscale, depth):
        k_w, k_b, k_m = jax.random.split(key, 3)
        w = jax.random.normal(k_w, (x.shape[1], width), x.dtype) / lengthscale
        b = jax.random.uniform(k_b, (width,), x.dtype, 0.0, 2.0 * math.pi)
        m = jax.random.normal(k_m, (width, width), x.dtype) / math.sqrt(width)
        phi = jnp.cos(x @ w + b)
        return jax.lax.fori_loop(0, depth, lambda _, p: 0.5 * (p + jnp.tanh(p @ m)), phi)

    def stage_features(data, p, key):
        time.sleep(stage_sleep[0])
        n_train = data["train"]["x"].shape[0]
        x = jnp.concatenate([data["train"]["x"], data["val"]["x"]])
        phi = features(x, key, jnp.float32(p["lengthscale"]), jnp.int32(p["depth"]))
        return {
            "train": {"phi": phi[:n_train], "y": jnp.asarray(data["train"]["y"])},
            "val": {"phi": phi[n_train:], "y": jnp.asarray(data["val"]["y"])},
        }

    def mlp(params, phi):
        h = jax.nn.relu(phi @ params["w1"] + params["b1"])
        return h @ params["w2"] + params["b2"]

    @jax.jit
    def train(phi, y, key, lr, steps, l2):
        k1, k2 = jax.random.split(key)
        params = {
            "w1": jax.random.normal(k1, (width, hidden), phi.dtype) / math.sqrt(width),
            "b1": jnp.zeros((hidden,), phi.dtype),
            "w2": jax.random.normal(k2, (hidden,), phi.dtype) / math.sqrt(hidden),
            "b2": jnp.zeros((), phi.dtype),
        }

        def loss(params):
            mse = jnp.mean((mlp(params, phi) - y) ** 2)
            return mse + l2 * (jnp.sum(params["w1"] ** 2) + jnp.sum(params["w2"] ** 2))

        opt = optax.adam(lr)

        def body(_, carry):
            params, state = carry
            grads = jax.grad(loss)(params)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        params, _ = jax.lax.fori_loop(0, steps, body, (params, opt.init(params)))
        return params, loss(params)

    def stage_train(feats, p, key):
        time.sleep(stage_sleep[1])
        params, train_loss = train(
            feats["train"]["phi"], feats["train"]["y"], key,
            jnp.float32(p["lr"]), jnp.int32(p["steps"]), jnp.float32(p["l2"]),
        )
        return {"params": params, "train_loss": train_loss, "val": feats["val"]}

    @jax.jit
    def evaluate(params, phi, y, scale):
        return jnp.mean((scale * mlp(params, phi) - y) ** 2)

    def stage_evaluate(model, p, key):
        del key  # deterministic
        time.sleep(stage_sleep[2])
        mse = evaluate(model["params"], model["val"]["phi"], model["val"]["y"], jnp.float32(p["scale"]))
        return {"objective": -mse, "mse": mse, "train_loss": model["train_loss"]}

    return Pipeline(
        name=name,
        version=f"1:n{n_samples}:d{n_inputs}:w{width}:h{hidden}:s{data_seed}",
        stages=(
            Stage("features", stage_features, (Float("lengthscale", 0.05, 5.0, log=True), Int("depth", 1, 10))),
            Stage("train", stage_train, (Float("lr", 1e-3, 0.3, log=True), Int("steps", 10, 200), Float("l2", 1e-6, 1e-1, log=True))),
            Stage("evaluate", stage_evaluate, (Float("scale", 0.5, 1.5),)),
        ),
        prepare=lambda: _dataset(n_samples, n_inputs, data_seed),
        description="demo: random features -> MLP training -> validation MSE (a few seconds per trial)",
    )


def make_toy_small(**kwargs) -> Pipeline:
    """The demo pipeline at test size (milliseconds per trial)."""
    kwargs = {"n_samples": 256, "n_inputs": 4, "width": 32, "hidden": 8, "name": "toy-small", **kwargs}
    return make_toy(**kwargs)

"""Write tests/data/pinned_trajectories.npz: short synthetic3 runs of every method
(Python, jitted and asynchronous drivers) made with the code as it stood when the
file was written (its commit is stored in the file). tests/test_pinned.py runs the
same runs and compares: a change of structure must not change a trajectory beyond
float rounding.

Run from the repository root: python tests/data/make_pinned_trajectories.py
"""

import os
import subprocess

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from eeipu_jax.cpu import pin_xla_threads  # noqa: E402

pin_xla_threads()

from eeipu_jax import loop, simulate  # noqa: E402
from pipelines.synthetic import get_pipeline  # noqa: E402

PIPE = get_pipeline("synthetic3")
BASE = dict(n_warmup=5, n_random=128, n_per_prefix=16, mc_samples=256, refine_steps=10)
BUDGET = 150.0
KW = dict(capacity=16, max_trials=14)
METHODS = ("ei", "eips", "carbo", "ms_carbo", "eeipu", "pbgi", "lambo", "ms_bo", "eeipu_nomemo")
# runs with float settings away from their defaults (name -> (method, BOConfig fields))
CUSTOM = {
    "eeipu_custom": ("eeipu", dict(refine_lr=0.1, cooling="constant")),
    "lambo_custom": ("lambo", dict(ucb_beta=0.8)),
    "pbgi_custom": ("pbgi", dict(pbgi_lambda0=0.3, pbgi_decay=3.0)),
}
ASYNC = ("eeipu", "eips", "lambo", "ms_bo", "pbgi")
JITTED = ("eeipu", "pbgi")


def python_runs():
    out = {}
    runs = {m: (m, {}) for m in METHODS} | CUSTOM
    for name, (method, extra) in runs.items():
        cfg = loop.BOConfig.from_space(PIPE.space, method=method, **BASE, **extra)
        eps = 0.2 if name == "eeipu_custom" else 0.1
        r = simulate.run_python(jax.random.key(11), PIPE, cfg, BUDGET, epsilon=eps, **KW)
        out[f"py/{name}"] = r
        print(name, len(r.y), float(np.nanmax(r.y)), flush=True)
    return out


def main():
    arrays = {}
    for k, r in python_runs().items():
        for f in ("X", "y", "memo_depth", "charged", "eta"):
            arrays[f"{k}/{f}"] = np.asarray(getattr(r, f))
    for m in JITTED:
        cfg = loop.BOConfig.from_space(PIPE.space, method=m, **BASE)
        keys = jnp.stack([jax.random.key(11), jax.random.key(12)])
        rs = simulate.run_jitted(keys, PIPE, cfg, BUDGET, batching="map", **KW)
        for s, r in enumerate(rs):
            for f in ("X", "y", "memo_depth", "charged", "eta"):
                arrays[f"jit/{m}/{s}/{f}"] = np.asarray(getattr(r, f))
        print("jitted", m, flush=True)
    for m in ASYNC:
        cfg = loop.BOConfig.from_space(PIPE.space, method=m, **BASE)
        r = simulate.run_async(jax.random.key(13), PIPE, cfg, BUDGET, workers=2, **KW)
        for f in ("X", "y", "memo_depth", "proposed_depth", "charged", "worker"):
            arrays[f"async/{m}/{f}"] = np.asarray(getattr(r, f))
        print("async", m, len(r.y), flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    arrays["commit"] = np.asarray(commit)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pinned_trajectories.npz")
    np.savez_compressed(path, **arrays)
    print("wrote", path)


if __name__ == "__main__":
    main()

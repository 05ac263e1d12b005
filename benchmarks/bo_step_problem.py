"""The BO-step benchmark problem shared by ask_overhead.py, vs_botorch.py and profile_ask.py.

d = 10 unit-interval hyperparameters split into K = 3 stages (4 + 3 + 3
columns), a smooth objective ``-sum (x - 0.3)^2 + 0.1 sin(7 x_0)`` and stage
costs ``c_k = 1 + 3 * mean(x of stage k)``. A state is filled with ``n``
uniform observations (the first ``n_warmup`` marked warm-up) at the capacity
``ask`` would have for ``n`` trials, so every script times the same step on
the same data.

Also the few lines of machine description each script prints and stores,
with the load average: these benchmarks run on shared machines, and a
figure taken under load is indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

from eeipu_jax import loop
from eeipu_jax.cpu import pin_xla_threads
from eeipu_jax.space import Float, SearchSpace, StageSpace

__all__ = ["make_space", "objective", "stage_costs", "observations", "filled_state", "machine", "machine_line",
           "refit_due", "time_ask_kinds", "arg_parser", "write_results"]

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The benchmarks are scripts: they take the scripts' CPU set-up (XLA's pool on one
# core; EEIPU_JAX_NO_PIN=1 turns it off), before any of them creates the JAX backend.
CPU_SETUP = pin_xla_threads()


def make_space(d: int = 10, k: int = 3) -> SearchSpace:
    """``d`` columns in ``[0, 1]`` split as evenly as possible into ``k`` stages."""
    per = np.array_split(np.arange(d), k)
    return SearchSpace([StageSpace(f"s{i}", [Float(f"x{j}", 0.0, 1.0) for j in cols]) for i, cols in enumerate(per)])


def objective(X):
    """Smooth objective to maximize (optimum near x = 0.3)."""
    return -np.sum((X - 0.3) ** 2, axis=-1) + 0.1 * np.sin(7 * X[..., 0])


def stage_costs(X, soc):
    """``(n, K)`` stage costs ``1 + 3 * mean(stage columns)``."""
    soc = np.asarray(soc)
    return np.stack([1.0 + 3.0 * X[..., soc == k].mean(-1) for k in range(soc.max() + 1)], -1)


def observations(space: SearchSpace, n: int, seed: int = 0):
    """``(X (n, d), y (n,), costs (n, K))`` for ``n`` uniform points (float64)."""
    X = np.random.default_rng([seed, n]).uniform(size=(n, space.dim))
    return X, objective(X), stage_costs(X, space.stage_of_column)


def filled_state(cfg: loop.BOConfig, space: SearchSpace, n: int, seed: int = 0) -> loop.BOState:
    """A state holding :func:`observations` (fresh runs, memo depth 0), budget 1e9,
    at capacity ``capacity_for(n + 1)`` (room for the proposal's ``tell``)."""
    X, y, c = observations(space, n, seed)
    state = loop.init(cfg, budget=1e9, capacity=loop.capacity_for(n + 1))
    for xi, yi, ci in zip(X, y, c):
        state = loop.tell(state, xi, float(yi), ci, 0)
    return state


def refit_due(state: loop.BOState, cold: bool) -> loop.BOState:
    """``state`` with a hyperparameter refit due at the next ask (cold or warm),
    whatever the schedule says: the last refit is placed at one trial and the
    refit count at a multiple of ``refit_every`` (cold) or just past one (warm).
    A benchmark device: it times the asks that refit without waiting for the
    schedule to reach them."""
    import jax.numpy as jnp

    return state._replace(n_fit=jnp.asarray(1, jnp.int32), n_refits=jnp.asarray(0 if cold else 1, jnp.int32))


def time_ask_kinds(cfg: loop.BOConfig, state: loop.BOState, repeats: int, seed: int = 1):
    """Time ``loop.ask`` on ``state`` (a :func:`filled_state`: no refit yet).

    Returns:
        ``(first_s, cold_s, warm_s, held_s, proposal)``: the first call
        (compilation + a cold refit), and the median of ``repeats`` asks of
        each kind: a cold refit (fresh starts), a warm refit (warm-started
        fits), and an ask that holds the hyperparameters and appends the one
        trial told since the previous ask to the kept factors (the usual
        ask between refits), with the last such proposal.
    """

    def timed(key, s):
        t0 = time.perf_counter()
        prop, s1 = loop.ask(key, s, cfg)
        jax.block_until_ready((prop, s1))
        return time.perf_counter() - t0, prop, s1

    first, prop, s1 = timed(jax.random.key(0), state)
    cold = [timed(jax.random.key(100 + r), state)[0] for r in range(repeats)]
    # One more trial told: the next ask appends it to the factors.
    space_x = np.asarray(prop.x, np.float64)
    soc = np.asarray(cfg.stage_of_column)
    s2 = loop.tell(s1, space_x, float(objective(space_x)), stage_costs(space_x, soc), 0)
    warm = [timed(jax.random.key(200 + r), refit_due(s2, cold=False))[0] for r in range(repeats)]
    held = []
    for r in range(repeats):
        t, prop, s3 = timed(jax.random.key(300 + r), s2)
        assert int(s3.n_refits) == int(s2.n_refits), "a held ask refitted"
        held.append(t)
    return first, float(np.median(cold)), float(np.median(warm)), float(np.median(held)), prop


def machine() -> dict:
    """What the figures were taken on (processor, cores, load, versions)."""
    return dict(
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        load_average=[round(v, 2) for v in os.getloadavg()],
        jax=jax.__version__,
        xla_cpu=CPU_SETUP["xla_cpu"],
    )


def machine_line(info: dict) -> str:
    """One printable line from :func:`machine`."""
    pin = (f"XLA CPU pool pinned to one thread on CPU {info['xla_cpu']}" if info["xla_cpu"] is not None
           else "XLA CPU pool NOT pinned")
    return (f"{info['processor']}, {info['cpu_count']} cores, load average {info['load_average']} "
            f"(shared machine: figures are indicative), jax {info['jax']}, {pin}")


def arg_parser(doc: str, name: str, sizes: list[int], repeats: int, repeats_help: str) -> argparse.ArgumentParser:
    """The options every BO-step benchmark takes: ``--sizes``, ``--repeats`` and ``--out``
    (default benchmarks/results/``name``)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=sizes)
    ap.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    ap.add_argument("--out", default=os.path.join(RESULTS, name),
                    help="output path without extension (.json and .md are written)")
    return ap


def write_results(out: str, data: dict, title: str, body: list[str]) -> None:
    """Write ``out``.json (``data``) and ``out``.md (``title``, the exact command, ``body``)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(data, f, indent=2)
    script = os.path.relpath(os.path.abspath(sys.argv[0]), os.path.dirname(os.path.dirname(RESULTS)))
    cmd = " ".join(["python", script, *sys.argv[1:]])
    with open(out + ".md", "w") as f:
        f.write(f"# {title}\n\nCommand: `{cmd}`\n\n" + "\n".join(body) + "\n")
    print(f"wrote {out}.json and .md")

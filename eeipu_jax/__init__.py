"""eeipu_jax: memoization-aware, cost-aware Bayesian optimization of multi-stage pipelines.

The algorithm (pure, jittable, no I/O):
    space: per-stage search spaces and the unit cube.
    gp: exact tinygp GPs on fixed-capacity masked data, fitted with optax.
    costs: stage-cost GPs, Monte Carlo expected inverse cost, cost cooling.
    acquisition: EI / EIPS / CArBO / MS_CArBO / EEIPU (+ registry).
    lambo, msbo: the LaMBO and MS_BO baselines (registered on import).
    candidates: random and memoized-prefix candidate batches, refinement.
    loop: BOState and the pure init / ask / tell.
    design: warm-up designs.
    simulate: Python and jitted (vmapped) drivers for simulated pipelines.
    checkpoint: orbax save/restore of the state.

The engine (:mod:`eeipu_jax.runtime`): Stage / Pipeline, the orbax stage
cache, the runner and the crash-safe :class:`~eeipu_jax.runtime.Study`
(``eeipu_jax.Study``, loaded on first use).

Process set-up is explicit: importing the package changes no environment
variable, CPU affinity or thread pool. Scripts call
:func:`eeipu_jax.cpu.pin_xla_threads` before their first JAX computation.
"""

from eeipu_jax import lambo as _lambo  # noqa: F401  (registers "lambo")
from eeipu_jax import msbo as _msbo  # noqa: F401  (registers "ms_bo")

__version__ = "0.1.0"

_LAZY = {"Study": "eeipu_jax.runtime.study", "Trial": "eeipu_jax.runtime.records"}


def __getattr__(name):
    # The engine is imported when first used, so `import eeipu_jax` stays the algorithm's cost.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'eeipu_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))

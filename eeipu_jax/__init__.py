"""eeipu_jax: memoization-aware, cost-aware Bayesian optimization of multi-stage pipelines.

The algorithm (pure, jittable, no I/O), in the order the layers build on each other:
    space: per-stage search spaces and the unit cube.
    gp: exact tinygp GPs on fixed-capacity masked data, fitted with optax.
    costs: stage-cost inputs, Monte Carlo expected inverse cost, cost cooling.
    acquisition: EI, log EI, the Gittins index, UCB (the math of one candidate).
    candidates: random and memoized-prefix candidate batches, refinement.
    design: warm-up designs.
    methods: the method protocol and registry (plug-ins).
    config: BOConfig (static structure) and Params (the numbers, a pytree).
    state: BOState, init / tell, pending rows.
    surrogates: the fitting schedule, kriging-believer fantasies, committed cost.
    loop: the generic BO step (ask), and the one import a driver needs.
    methods.ei_family, methods.pbgi, methods.lambo, methods.msbo: the
        built-in methods (registered on import), through the same protocol.
    simulate: Python, jitted and asynchronous drivers for simulated pipelines.
    checkpoint: orbax save/restore of the state.

The engine (:mod:`eeipu_jax.runtime`): Stage / Pipeline, the orbax stage
cache, the runner and the crash-safe :class:`~eeipu_jax.runtime.Study`
(``eeipu_jax.Study``, loaded on first use).

Process set-up is explicit: importing the package changes no environment
variable, CPU affinity or thread pool. Scripts call
:func:`eeipu_jax.cpu.pin_xla_threads` before their first JAX computation.
"""

# The built-in methods register themselves on import, through the public protocol.
from eeipu_jax.methods import ei_family as _ei_family  # noqa: F401
from eeipu_jax.methods import lambo as _lambo  # noqa: F401
from eeipu_jax.methods import msbo as _msbo  # noqa: F401
from eeipu_jax.methods import pbgi as _pbgi  # noqa: F401

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

"""eeipu_jax: memoization-aware, cost-aware Bayesian optimization of multi-stage pipelines.

Modules:
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
"""

from eeipu_jax._runtime import pin_xla_cpu_threads as _pin

XLA_CPU = _pin()  # the CPU XLA's threads run on (None: not pinned); see eeipu_jax._runtime

from eeipu_jax import lambo as _lambo  # noqa: E402,F401  (registers "lambo")
from eeipu_jax import msbo as _msbo  # noqa: E402,F401  (registers "ms_bo")

__version__ = "0.1.0"

"""EI and the methods that multiply it by a power of the expected inverse cost.

========== ======================================================= ==============
method     acquisition (paper form)                                 cost model
========== ======================================================= ==============
ei         EI(x)                                                    none
eips       EI(x) * E[1/C(x)]                (Snoek et al. 2012)     one GP, total
carbo      EI(x) * E[1/C(x)]^eta            (Lee et al. 2020)       one GP, total
ms_carbo   EI(x) * E[1/sum_k C_k(x)]^eta    (no memoization)        K stage GPs
eeipu      EI(x) * E[1/C_j(x)]^eta          (arXiv 2411.03731)      K stage GPs
========== ======================================================= ==============

Scores are logarithms (``ln EI + eta ln E[1/C]``), so products never
underflow. ``eta`` is the cost-cooling exponent of the ask
(:func:`eeipu_jax.loop.cooling`); ``C_j`` prices the first ``j`` stages at
``epsilon`` (EEIPU's memoization). CArBO and MS_CArBO share one score and
differ only in their cost model (one GP on the summed cost vs one per
stage); MS_CArBO is the authors' ablation of EEIPU without memoization.
None of these methods has params or state of its own.
"""

from __future__ import annotations

from eeipu_jax import acquisition as acq
from eeipu_jax.methods import Method, register

__all__ = ["ei", "eips", "cost_cooled_ei", "eeipu"]


def ei(x, memo_depth, state: acq.AcqState, params):
    """Expected improvement (cost-unaware)."""
    del memo_depth, params
    return acq.log_ei(x, state)


def eips(x, memo_depth, state: acq.AcqState, params):
    """EI per unit cost, ``EI * E[1/C]``, no cooling (Snoek et al. 2012)."""
    del memo_depth, params
    return acq.log_ei(x, state) + acq.log_inverse_cost(x, 0, state)


def cost_cooled_ei(x, memo_depth, state: acq.AcqState, params):
    """``EI * E[1/C]^eta``, every stage priced in full: CArBO (Lee et al. 2020)
    with one total-cost GP, MS_CArBO with one GP per stage."""
    del memo_depth, params
    return acq.log_ei(x, state) + state.eta * acq.log_inverse_cost(x, 0, state)


def eeipu(x, memo_depth, state: acq.AcqState, params):
    """EEIPU: ``EI * E[1/C_j]^eta`` with the first ``j`` stages priced at
    epsilon (arXiv 2411.03731)."""
    del params
    return acq.log_ei(x, state) + state.eta * acq.log_inverse_cost(x, memo_depth, state)


register(Method("ei", ei, "none", False, description="expected improvement"))
register(Method("eips", eips, "total", False, description="EI per unit cost (one total-cost GP)"))
register(Method("carbo", cost_cooled_ei, "total", False, description="cost-cooled EI per cost (one total-cost GP)"))
register(Method("ms_carbo", cost_cooled_ei, "stages", False,
                description="stage-wise cost GPs + cooling, no memoization"))
register(Method("eeipu", eeipu, "stages", True, description="memoization-aware EI per unit cost with cooling"))

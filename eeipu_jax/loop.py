"""The BO loop as pure functions: ``init`` / ``ask`` / ``tell`` over a ``BOState`` pytree.

``ask(key, state, config) -> (Proposal, state)`` brings the surrogates the method
needs up to date (objective GP, stage- or total-cost GPs; refitted on a
schedule, see "Surrogate schedule" below), scores one fixed-shape batch of
candidates (random + memoized prefixes), refines the best few and returns the
winner with its memo depth. ``tell(state, x, y, stage_costs, memo_depth)``
records a finished (or failed) trial and charges the budget. Both are
side-effect free and jitted with the :class:`BOConfig` static, and the state
has a fixed capacity, so a run compiles ``ask`` once per capacity, not once per
iteration. The state is a NamedTuple of arrays: orbax saves and restores it.

Warm-up: while fewer than ``n_warmup`` trials have been told, ``ask`` returns
uniform random points (the Python driver of a synthetic benchmark may instead
tell a cost-aware design from :mod:`eeipu_jax.design`). The budget spent when
the warm-up completes is ``b0`` of the cost-cooling schedule.

**Validation.** :func:`tell` checks every argument on the host before anything
is traced (shapes, finiteness, ranges; NumPy scalars and 0-d arrays are
accepted) and raises a ``ValueError`` naming the argument and its value; the
jitted ``_tell`` trusts its inputs (the synthetic driver calls it inside jit).

**Objective scale.** Proposals do not depend on the objective's units: any
increasing affine change ``a * y + b`` of the objective gives the same
proposals up to float32 rounding. Three pieces make this so:

* :func:`tell` splits each objective, in float64 on the host, into a float32
  pair ``y`` (the value rounded to float32, what the state reports) and
  ``y_lo`` (what the rounding lost), so ``1e9 + f`` keeps ``f``. Objectives
  beyond the float32 range (``|y| > 3.4e38``) are refused with a
  ``ValueError``: rescale them before telling.
* The GP targets are made scale-free (:func:`eeipu_jax.gp.scale_free`):
  differences to an anchor (the first finished trial), formed from the
  hi/lo pairs as halves so they never overflow, divided by their largest
  magnitude. The same formula runs inside jit for the synthetic driver,
  whose objectives are float32 from the start (``y_lo = 0``).
* The scale-free values are then standardized (:func:`eeipu_jax.gp.standardize`,
  which has no absolute thresholds), and acquisitions work on that scale.

``state.y`` holds the objective rounded to float32; :func:`best_observed` and
:func:`objective_values` return it exactly (``y + y_lo`` in float64).

**Failed trials** (objective NaN, or +-inf, which :func:`tell` also records as
a failure) are kept: the objective GP sees them at the worst objective among
the finished trials (a common convention: the region is not worth revisiting,
and the GP stays well conditioned). Before any trial has finished, every
failed trial sits at the same constant, so the standardized objective is 0
everywhere (the GP is flat and EI is driven by its variance). Their stage
costs are used for the stages that ran (``NaN`` marks a stage that did not
run).

**Surrogate schedule.** While fewer than ``refit_hold_from`` (256) trials
have been told, the GPs' hyperparameters are refitted at every ask (warm:
``GPConfig.steps`` Adam steps from the current values; cold, every
``refit_every``-th refit: ``GPConfig.cold_steps`` from fresh starts,
competing with the current values). From then on a refit happens only when
the trials told have grown by ``refit_growth`` (10%, at least one trial)
since the last one, so refits become rarer as a study grows and their
average cost per trial stays bounded: with hundreds of trials, a tenth more
data moves the hyperparameters little, while on the short runs of the
paper's benchmarks holding them cost quality (docs/bo_step_profile.md). A
refit sees at most ``fit_rows`` rows (the best quarter by objective and a
uniform random sample of the rest), so its cost is bounded too, whatever the
number of trials. The posterior always conditions on every row. Between
refits the hyperparameters are held and the Cholesky factor of each GP's
covariance is kept in the state (``BOState.chol``): an ``ask`` appends the
rows told since the previous one (O(N^2) each,
:func:`eeipu_jax.gp.append_rows`) instead of factorizing anew (O(N^3)). A
factor depends only on the inputs, the row masks and the hyperparameters,
never on the targets; targets enter at each ask through one triangular
solve (so a trial whose inputs are known before its result, such as a
pending trial of a parallel worker, could enter the factors when it is
proposed, and only its target would change when it is told).
``refit_growth = 0`` or ``refit_hold_from`` beyond the study's size refits at
every ask. The numbers behind these choices are in docs/bo_step_profile.md.

**Pending trials.** A parallel driver asks while other trials are still
running: ``ask(key, state, config, pending)`` takes them as a
:class:`Pending` of fixed capacity ``P`` (inputs as proposed, memo depth,
mask; :func:`pending_from` packs and checks them), so ``ask`` compiles once
per (state capacity, ``P``) whatever the number of live rows, and
``pending=None`` runs the single-worker program unchanged. Three things
change, none of which touches the returned state (it never holds pending
rows; each trial is told when it finishes, in any order):

* *Objective fantasy: kriging believer* (Ginsbourger, Le Riche and Carraro
  2010). Each pending row enters the objective GP with the GP's own
  posterior mean at its ``x`` as target. The mean is then unchanged
  everywhere, the variance near a running trial falls to what telling it
  will leave (the noise level), and the believed values join the incumbent,
  so EI at a running point is ~0 and the next proposal moves elsewhere.
  Chosen over the constant liar because it needs no lie level to tune (a
  pessimistic or optimistic constant shifts the mean the whole batch sees),
  and over Monte Carlo fantasies (Snoek et al. 2012) because it costs one
  posterior, not one per sample, inside a jitted step whose cost should not
  grow with ``P``. The rows enter a copy of the kept factor by
  :func:`eeipu_jax.gp.append_rows` (O(N^2 P), no new factorization; the
  factor depends on inputs and hyperparameters only, so it is the factor the
  tell will build); the hyperparameters are never refitted for pending rows
  (the refit schedule counts told trials). The cost GPs see told trials only.
* *Committed budget.* The linear cost cooling uses ``spent`` plus the
  expected cost of the pending trials' stages after their memo depth
  (:func:`committed_cost`: the log-normal mean of each stage-cost GP,
  the total-cost GP's mean, or the mean observed stage cost for methods with
  no cost GP), so ``eta`` falls as soon as budget is committed.
* *Prefixes in flight.* For memoizing methods the running trials' prefixes
  join the memo pool (:func:`eeipu_jax.candidates.prefix_pool` over the told
  rows followed by the pending slots), ranked with the told trials by their
  believed objective, ``top_q`` per depth as before: a running trial in a
  good region displaces a worse told prefix, the candidate batch keeps its
  shape and cost. Pending rows are BO-phase proposals, so they are eligible
  under ``prefix_pool="post_warmup"`` too. A proposal that reuses one has
  ``Proposal.source == N + p``; the driver must keep that running trial's
  stage outputs and wait for them before restoring.

LaMBO uses the fantasy in its leaf's GP-UCB (its bandit counts told trials),
MS_BO fantasizes its prefix GPs; neither memoizes. During the warm-up,
pending rows are ignored (proposals are uniform). PBGI's lambda decay check
compares the previous proposal's index with the best *told* value, which
may not yet include that proposal's result.

**Integer and categorical columns.** Candidates are snapped to representable
points *before* they are scored (the free coordinates only: a memoized prefix
is copied bit for bit from its source trial), refined points are snapped and
scored again, and the winner is chosen on these snapped scores, so the score
of a proposal is the score of the point that will run.

**Fallback.** If every candidate's score is non-finite, ``ask`` does not take
an arbitrary row: it proposes a uniform random point (snapped, memo depth 0,
no source), sets ``Proposal.fallback`` and counts it in
``BOState.n_fallback``; drivers should log it (:func:`eeipu_jax.simulate.run_python`
does).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from eeipu_jax import _checks
from eeipu_jax import acquisition as acqlib
from eeipu_jax import candidates as candlib
from eeipu_jax import costs as costlib
from eeipu_jax import gp as gplib
from eeipu_jax.space import SearchSpace

__all__ = [
    "BOConfig",
    "BOState",
    "GittinsState",
    "Proposal",
    "Pending",
    "no_pending",
    "pending_from",
    "init",
    "ask",
    "tell",
    "grow",
    "ensure_capacity",
    "best_observed",
    "objective_values",
    "scaled_objective",
    "effective_objective",
    "n_observations",
    "capacity_for",
    "prefix_pool",
]


@dataclasses.dataclass(frozen=True)
class BOConfig:
    """Static settings of a BO run (hashable; changing one recompiles).

    Attributes:
        stage_of_column: stage index of each unit-cube column (from the space).
        bins: per column, 0 for a continuous column or the number of equal bins
            (ints, categoricals) that proposals are snapped to.
        method: registered method name (see :mod:`eeipu_jax.acquisition`).
        n_warmup: number of initial (non-BO) trials.
        n_random: quasi-random candidates per ask.
        n_per_prefix: candidates per memoized prefix (memoizing methods).
        n_local: Gaussian perturbations of each top-``top_q`` observation added
            to the batch (and, for memoizing methods, half of each prefix's
            free points become perturbations of the source's own values).
        top_q: number of top observations whose prefixes are candidates.
        prefix_pool: ``"all"`` observations or only ``"post_warmup"`` ones (as
            the authors ran it) may provide prefixes.
        prefix_select: ``"top_trials"`` (every prefix of the ``top_q`` best
            trials, the authors' pool) or ``"top_prefixes"`` (at each depth,
            the ``top_q`` best distinct prefixes of that depth); see
            :func:`eeipu_jax.candidates.prefix_pool`. The same pool is what a
            ``top_q`` stage cache keeps (:func:`prefix_pool`).
        n_refine: best candidates refined by gradient steps (0 disables); for
            memoizing methods, the best ``n_refine`` of each memo depth.
        refine_steps: Adam steps per refinement.
        refine_lr: refinement learning rate (unit-cube units).
        mc_samples: quasi-random samples for the expected inverse cost.
        cost_inputs: ``"prefix"`` (stage k's cost GP sees stages 0..k) or
            ``"stage"`` (only stage k's columns).
        cooling: ``"linear"`` (eta = remaining / (B - b0)), ``"constant"``
            (eta = 1) or ``"none"`` (eta = 0: the cost term drops out).
        refit_growth: from ``refit_hold_from`` trials on, the GP
            hyperparameters are refitted when the number of trials has grown
            by this fraction since the last refit (at least one new trial; 0:
            at every ask). In between they are held and each new trial is
            appended to the kept Cholesky factors in O(N^2) (see "Surrogate
            schedule" in the module doc).
        refit_hold_from: below this many told trials the hyperparameters are
            refitted at every ask (0: the growth rule from the start).
        refit_every: every this many refits is cold (fresh starts, competing
            with the current hyperparameters); the others are warm-started.
            The first refit is cold.
        fit_rows: the hyperparameters are fitted on at most this many rows
            (the best quarter by objective plus a uniform random sample of the
            rest, drawn anew at each refit); the posterior always conditions
            on every row. 0: fit on all rows.
        ucb_beta: beta of the UCB acquisition (methods that use it).
        pbgi_lambda0: initial ``lambda`` of Gittins-index methods (``pbgi``),
            on the scale-free scale (standardized objective, costs divided by
            the mean observed full-trial cost); 0.1 as in Xie et al.'s PBGI-D.
        pbgi_decay: ``lambda`` is divided by this each time the index of the
            proposal falls below the best observed value (PBGI-D; 2 in the
            paper).
        gp: GP fitting settings.
    """

    stage_of_column: tuple[int, ...]
    bins: tuple[int, ...]
    method: str = "eeipu"
    n_warmup: int = 10
    n_random: int = 512
    n_per_prefix: int = 32
    n_local: int = 0
    top_q: int = 5
    prefix_pool: str = "all"
    prefix_select: str = "top_trials"
    n_refine: int = 4
    refine_steps: int = 30
    refine_lr: float = 0.05
    mc_samples: int = 1024
    cost_inputs: str = "prefix"
    cooling: str = "linear"
    refit_growth: float = 0.1
    refit_hold_from: int = 256
    refit_every: int = 10
    fit_rows: int = 128
    ucb_beta: float = 0.2
    pbgi_lambda0: float = 0.1
    pbgi_decay: float = 2.0
    gp: gplib.GPConfig = gplib.GPConfig()

    def __post_init__(self):
        object.__setattr__(self, "stage_of_column", tuple(int(s) for s in self.stage_of_column))
        object.__setattr__(self, "bins", tuple(int(b) for b in self.bins))
        for name in ("n_warmup", "n_random", "n_per_prefix", "n_local", "top_q", "n_refine",
                     "refine_steps", "mc_samples", "refit_every", "refit_hold_from", "fit_rows"):
            object.__setattr__(self, name, _checks.integer(getattr(self, name), f"BOConfig.{name}"))
        # Floats are stored as Python floats: the config stays hashable and
        # JSON-serializable, and a NaN never reaches a results file.
        refine_lr = _checks.finite_number(self.refine_lr, "BOConfig.refine_lr", greater_than=0.0)
        object.__setattr__(self, "refine_lr", refine_lr)
        object.__setattr__(self, "ucb_beta", _checks.finite_number(self.ucb_beta, "BOConfig.ucb_beta", at_least=0.0))
        growth = _checks.finite_number(self.refit_growth, "BOConfig.refit_growth", at_least=0.0)
        object.__setattr__(self, "refit_growth", growth)
        object.__setattr__(
            self, "pbgi_lambda0", _checks.finite_number(self.pbgi_lambda0, "BOConfig.pbgi_lambda0", greater_than=0.0)
        )
        object.__setattr__(
            self, "pbgi_decay", _checks.finite_number(self.pbgi_decay, "BOConfig.pbgi_decay", at_least=1.0)
        )
        if not isinstance(self.gp, gplib.GPConfig):
            raise ValueError(f"BOConfig.gp must be a GPConfig, got {self.gp!r}")
        soc = self.stage_of_column
        if not soc:
            raise ValueError("BOConfig.stage_of_column is empty")
        if soc[0] != 0 or any(b - a not in (0, 1) for a, b in zip(soc, soc[1:])):
            raise ValueError(
                f"BOConfig.stage_of_column must be sorted stage indices 0..K-1 with every stage "
                f"present, got {soc}"
            )
        if len(self.bins) != len(soc):
            raise ValueError(f"BOConfig.bins has {len(self.bins)} entries for {len(soc)} columns")
        if any(b < 0 or b == 1 for b in self.bins):
            raise ValueError(f"BOConfig.bins entries must be 0 (continuous) or >= 2, got {self.bins}")
        acqlib.get_method(self.method)  # raises on unknown names
        checks = {
            "n_warmup": self.n_warmup >= 2,
            "n_random": self.n_random >= 1,
            "n_per_prefix": self.n_per_prefix >= 0,
            "n_local": self.n_local >= 0,
            "top_q": self.top_q >= 1,
            "n_refine": 0 <= self.n_refine <= self.n_random,
            "refine_steps": self.refine_steps >= 0,
            "mc_samples": self.mc_samples >= 1,
            "refit_every": self.refit_every >= 1,
            "refit_hold_from": self.refit_hold_from >= 0,
            "fit_rows": self.fit_rows == 0 or self.fit_rows >= 8,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"BOConfig: invalid value for {bad}: {[getattr(self, k) for k in bad]}")
        if self.prefix_pool not in ("all", "post_warmup"):
            raise ValueError(f"BOConfig.prefix_pool must be 'all' or 'post_warmup', got {self.prefix_pool!r}")
        if self.prefix_select not in candlib.PREFIX_SELECT:
            raise ValueError(
                f"BOConfig.prefix_select must be one of {list(candlib.PREFIX_SELECT)}, got {self.prefix_select!r}"
            )
        if self.cooling not in ("linear", "constant", "none"):
            raise ValueError(f"BOConfig.cooling must be 'linear', 'constant' or 'none', got {self.cooling!r}")
        costlib.stage_input_masks(soc, self.n_stages, self.cost_inputs)  # validates cost_inputs

    @classmethod
    def from_space(cls, space: SearchSpace, **kwargs) -> "BOConfig":
        """Config for a :class:`~eeipu_jax.space.SearchSpace` (other fields as kwargs)."""
        from eeipu_jax.space import Categorical, Int as IntParam

        bins = tuple(p.n_values if isinstance(p, (IntParam, Categorical)) else 0 for p in space.params)
        return cls(stage_of_column=space.stage_of_column, bins=bins, **kwargs)

    @property
    def dim(self) -> int:
        return len(self.stage_of_column)

    @property
    def n_stages(self) -> int:
        return self.stage_of_column[-1] + 1

    @property
    def method_def(self) -> acqlib.Method:
        return acqlib.get_method(self.method)

    @property
    def n_cost_models(self) -> int:
        return self.n_stages if self.method_def.cost_model in ("stages", "prefix_objective") else 1

    @property
    def n_gps(self) -> int:
        """GPs the method conditions at each ask, whose factors the state keeps:
        the objective GP plus the cost GPs (``"total"``: 1, ``"stages"``: K),
        or MS_BO's K prefix GPs (``"prefix_objective"``)."""
        kind = self.method_def.cost_model
        return {"none": 1, "total": 2, "stages": 1 + self.n_stages, "prefix_objective": self.n_stages}[kind]

    def snap(self, u):
        """Snap unit-cube rows to representable points (JAX-traceable)."""
        b = jnp.asarray(self.bins, u.dtype)
        nb = jnp.maximum(b, 1.0)
        binned = (jnp.clip(jnp.floor(jnp.clip(u, 0.0, 1.0) * nb), 0.0, nb - 1.0) + 0.5) / nb
        return jnp.where(b > 0, binned, jnp.clip(u, 0.0, 1.0))


class GittinsState(NamedTuple):
    """State of a Gittins-index acquisition (``pbgi``): its ``lambda`` and the
    last proposal's index, for the decay rule of PBGI-D (Xie et al. 2024,
    arXiv 2406.20062): ``lambda`` is divided by ``BOConfig.pbgi_decay`` each
    time the index of the chosen point falls below the best observed value,
    the best including that point's own observation.

    The check for proposal ``t`` is made at ask ``t + 1``, once its
    observation is in. Because the objective is rescaled as data grow
    (:func:`eeipu_jax.gp.scale_free`), the index is kept on the scale of ask
    ``t`` (``last_index``, relative to the first finished trial and divided
    by ``last_scale``) and the best observed value is brought to that scale.
    """

    lam: Float[Array, ""]  # current lambda (scale-free)
    last_index: Float[Array, ""]  # the last proposal's index, scale-free units of its ask
    last_scale: Float[Array, ""]  # the scale of those units (scale_free's ``scale``)
    pending: Bool[Array, ""]  # a Gittins proposal awaits its decay check
    n_decays: Int[Array, ""]  # how many times lambda was divided


class BOState(NamedTuple):
    """All data of a run, at a fixed capacity ``N`` (a pytree of arrays).

    Rows ``0 .. n-1`` hold the trials told so far, in order.
    """

    X: Float[Array, "N d"]  # unit-cube inputs
    y: Float[Array, " N"]  # objective rounded to float32 (NaN for failed trials)
    y_lo: Float[Array, " N"]  # what the rounding lost: y + y_lo is the objective told
    stage_costs: Float[Array, "N K"]  # full (non-memoized) stage costs; NaN = unknown
    memo_depth: Int[Array, " N"]
    charged: Float[Array, " N"]  # what each trial cost the budget
    failed: Bool[Array, " N"]
    warmup: Bool[Array, " N"]
    n: Int[Array, ""]
    n_warmup: Int[Array, ""]
    n_bo: Int[Array, ""]  # BO asks so far (sets the refit schedule)
    n_fallback: Int[Array, ""]  # BO asks whose every candidate scored non-finite
    spent: Float[Array, ""]
    budget: Float[Array, ""]
    b0: Float[Array, ""]
    epsilon: Float[Array, ""]
    obj_params: gplib.GPParams
    cost_params: gplib.GPParams  # stacked over cost models
    # The surrogates' factors (see "Surrogate schedule" in the module doc).
    chol: Float[Array, "M N N"]  # lower Cholesky factor of each GP's masked covariance
    n_chol: Int[Array, ""]  # rows [0, n_chol) are in the factors (0: none: factor anew)
    n_fit: Int[Array, ""]  # trials told when the hyperparameters were last refitted (0: never)
    n_refits: Int[Array, ""]  # hyperparameter refits so far (sets which are cold)
    gittins: GittinsState  # Gittins-index methods only (``pbgi``); inert otherwise


class Proposal(NamedTuple):
    """What ``ask`` proposes.

    ``source`` indexes the rows the memoized prefix comes from: the state's
    rows ``0 .. N-1`` (``N = state.X.shape[0]``, a told trial), then, when
    ``ask`` was given a :class:`Pending` of ``P`` slots, the pending slots as
    ``N .. N+P-1``: ``source == N + p`` means the prefix is the one running
    trial ``p`` is computing, and ``x``'s first ``memo_depth`` stages' columns
    equal ``pending.x[p]``'s bit for bit (the driver waits for that trial's
    stage output, then restores it). ``-1``: no prefix reused.
    """

    x: Float[Array, " d"]  # unit cube, snapped
    memo_depth: Int[Array, ""]  # leading stages to restore from the cache
    source: Int[Array, ""]  # row whose prefix is reused: state row < N, pending slot N + p; -1: none
    score: Float[Array, ""]  # acquisition value (log scale for EI-based methods)
    eta: Float[Array, ""]  # cost-cooling exponent used
    fallback: Bool[Array, ""]  # every candidate scored non-finite: x is a uniform random point


class Pending(NamedTuple):
    """Trials proposed and still running (a parallel driver's workers), as
    fixed-capacity masked rows: ``ask(..., pending=...)`` compiles once per
    ``(state capacity, P)``, whatever the number of live rows. Build one with
    :func:`pending_from` (validated) or :func:`no_pending`. See "Pending
    trials" in the module doc.
    """

    x: Float[Array, "P d"]  # unit-cube inputs of the running trials, as proposed (snapped)
    memo_depth: Int[Array, " P"]  # stages that running trial restores from the cache (0: none)
    mask: Bool[Array, " P"]  # live rows (False: an empty slot)


def no_pending(capacity: int, d: int) -> Pending:
    """A :class:`Pending` of ``capacity`` slots, all empty (host side)."""
    return pending_from(np.zeros((0, d)), np.zeros((0,), np.int64), capacity, d)


def pending_from(xs, memo_depths, capacity: int, d: int) -> Pending:
    """Pack the running trials into a :class:`Pending` of ``capacity`` slots
    (host side, before jit; slots ``0 .. n-1`` live, in the order given).

    Args:
        xs: ``(n, d)`` unit-cube points of the running trials, as proposed;
            finite, in ``[0, 1]`` (up to 1e-5 of rounding, then clipped).
        memo_depths: ``(n,)`` integers ``>= 0``: the stages each restores
            from the cache (:func:`ask` checks them against the config's
            number of stages).
        capacity: number of slots ``P >= 1`` (keep it fixed for a study,
            e.g. the number of workers, so ``ask`` does not recompile).
        d: dimension of the unit cube.

    Raises:
        ValueError: on a bad shape, value or ``n > capacity``.
    """
    capacity = _checks.integer(capacity, "capacity")
    d = _checks.integer(d, "d")
    if capacity < 1 or d < 1:
        raise ValueError(f"pending capacity and d must be >= 1, got capacity={capacity}, d={d}")
    try:
        x = np.asarray(xs, np.float64)
        depth = np.asarray(memo_depths)
    except (TypeError, ValueError):
        raise ValueError(f"pending xs must be an (n, {d}) array of numbers, got {xs!r}") from None
    if x.size == 0:
        x = x.reshape(0, d)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"pending xs must have shape (n, {d}), got {x.shape}")
    n = x.shape[0]
    if n > capacity:
        raise ValueError(f"{n} pending trials exceed the pending capacity {capacity}")
    if depth.shape != (n,):
        raise ValueError(f"pending memo_depths must have shape ({n},) (one per x), got {depth.shape}")
    if depth.dtype == bool or (n and not np.issubdtype(depth.dtype, np.number)):
        raise ValueError(f"pending memo_depths must be integers >= 0, got {memo_depths!r}")
    depth_f = depth.astype(np.float64)
    if n and not (np.all(np.isfinite(depth_f)) and np.all(depth_f == np.round(depth_f)) and np.all(depth_f >= 0)):
        raise ValueError(f"pending memo_depths must be integers >= 0, got {depth.tolist()}")
    pend = Pending(
        x=np.zeros((capacity, d), np.float32),
        memo_depth=np.zeros((capacity,), np.int32),
        mask=np.zeros((capacity,), bool),
    )
    pend.x[:n] = _check_pending_x(x)
    pend.memo_depth[:n] = depth_f.astype(np.int32)
    pend.mask[:n] = True
    return Pending(*(jnp.asarray(a) for a in pend))


def _check_pending_x(x: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"pending x must be finite, got {x.tolist()}")
    if np.any((x < -_X_TOLERANCE) | (x > 1.0 + _X_TOLERANCE)):
        raise ValueError(f"pending x must lie in the unit cube [0, 1]^{x.shape[-1]}, got {x.tolist()}")
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _check_pending(pending, config: BOConfig) -> Pending:
    """Host-side check of a :class:`Pending` given to :func:`ask` (shapes,
    values on the live rows, memo depths against the stages)."""
    if not isinstance(pending, Pending):
        raise ValueError(f"pending must be a Pending (see pending_from), got {type(pending).__name__}")
    x = np.asarray(pending.x, np.float64)
    depth = np.asarray(pending.memo_depth)
    mask = np.asarray(pending.mask)
    d, K = config.dim, config.n_stages
    if x.ndim != 2 or x.shape[1] != d or x.shape[0] < 1:
        raise ValueError(f"pending.x must have shape (P, {d}) with P >= 1, got {x.shape}")
    P = x.shape[0]
    if depth.shape != (P,) or not np.issubdtype(depth.dtype, np.integer):
        raise ValueError(f"pending.memo_depth must be ({P},) integers, got {depth.shape} {depth.dtype}")
    if mask.shape != (P,) or mask.dtype != bool:
        raise ValueError(f"pending.mask must be ({P},) booleans, got {mask.shape} {mask.dtype}")
    live = x[mask]
    _check_pending_x(live)
    bad = (depth[mask] < 0) | (depth[mask] > K - 1)
    if bad.any():
        raise ValueError(
            f"pending.memo_depth of live rows must lie in [0, {K - 1}] (the last stage is never restored), "
            f"got {depth[mask].tolist()}"
        )
    return Pending(
        x=jnp.asarray(np.where(mask[:, None], np.clip(x, 0.0, 1.0), 0.0), jnp.float32),
        memo_depth=jnp.asarray(np.where(mask, depth, 0), jnp.int32),
        mask=jnp.asarray(mask),
    )


def capacity_for(n: int, minimum: int = 16) -> int:
    """Bucketed capacity: the smallest power of two >= max(n, minimum)."""
    return 1 << max(0, math.ceil(math.log2(max(n, minimum, 1))))


def init(config: BOConfig, budget: float, *, capacity: int = 32, epsilon: float = 0.1) -> BOState:
    """An empty state for ``config`` with room for ``capacity`` trials.

    Args:
        config: static settings.
        budget: total budget (seconds or cost units); a positive finite number
            (Python or NumPy scalar, or a 0-d array).
        capacity: preallocated rows (grown on demand by :func:`tell`).
        epsilon: price of restoring one memoized stage (as seen by the acquisition).
    """
    budget = _checks.number(budget, "budget")
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"budget must be a positive finite number, got {budget!r}")
    epsilon = _checks.number(epsilon, "epsilon")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")
    capacity = _checks.integer(capacity, "capacity")
    if capacity < config.n_warmup + 1:
        capacity = capacity_for(config.n_warmup + 1)
    N, d, K = capacity, config.dim, config.n_stages
    p = gplib.default_params(d, config.gp)
    f = jnp.float32
    return BOState(
        X=jnp.zeros((N, d), f),
        y=jnp.full((N,), jnp.nan, f),
        y_lo=jnp.zeros((N,), f),
        stage_costs=jnp.full((N, K), jnp.nan, f),
        memo_depth=jnp.zeros((N,), jnp.int32),
        charged=jnp.zeros((N,), f),
        failed=jnp.zeros((N,), bool),
        warmup=jnp.zeros((N,), bool),
        n=jnp.asarray(0, jnp.int32),
        n_warmup=jnp.asarray(config.n_warmup, jnp.int32),
        n_bo=jnp.asarray(0, jnp.int32),
        n_fallback=jnp.asarray(0, jnp.int32),
        spent=jnp.asarray(0.0, f),
        budget=jnp.asarray(budget, f),
        b0=jnp.asarray(0.0, f),
        epsilon=jnp.asarray(epsilon, f),
        obj_params=p,
        cost_params=jax.tree.map(lambda a: jnp.stack([a] * config.n_cost_models), p),
        chol=jnp.broadcast_to(jnp.eye(N, dtype=f), (config.n_gps, N, N)),
        n_chol=jnp.asarray(0, jnp.int32),
        n_fit=jnp.asarray(0, jnp.int32),
        n_refits=jnp.asarray(0, jnp.int32),
        gittins=GittinsState(
            lam=jnp.asarray(config.pbgi_lambda0, f),
            last_index=jnp.asarray(0.0, f),
            last_scale=jnp.asarray(1.0, f),
            pending=jnp.asarray(False),
            n_decays=jnp.asarray(0, jnp.int32),
        ),
    )


def grow(state: BOState, capacity: int) -> BOState:
    """A copy of ``state`` with room for ``capacity`` rows (not jitted)."""
    N = state.X.shape[0]
    if capacity < N:
        raise ValueError(f"cannot shrink capacity from {N} to {capacity}")
    pad = capacity - N

    def p(a, fill):
        return jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], fill, a.dtype)])

    return state._replace(
        X=p(state.X, 0.0),
        y=p(state.y, jnp.nan),
        y_lo=p(state.y_lo, 0.0),
        stage_costs=p(state.stage_costs, jnp.nan),
        memo_depth=p(state.memo_depth, 0),
        charged=p(state.charged, 0.0),
        failed=p(state.failed, False),
        warmup=p(state.warmup, False),
        chol=_grow_factors(state.chol, capacity),
    )


def _grow_factors(chol, capacity: int):
    """Factors padded to ``capacity`` rows: the new rows are padded data, whose
    factor rows are identity rows, so a grown factor stays exact."""
    M, N, _ = chol.shape
    eye = jnp.broadcast_to(jnp.eye(capacity, dtype=chol.dtype), (M, capacity, capacity))
    return eye.at[:, :N, :N].set(chol)


def ensure_capacity(state: BOState, extra: int = 1) -> BOState:
    """Grow to the next bucket if fewer than ``extra`` free rows remain."""
    n, N = int(state.n), state.X.shape[0]
    if n + extra <= N:
        return state
    return grow(state, capacity_for(n + extra))


def n_observations(state: BOState) -> int:
    return int(state.n)


def objective_values(state: BOState) -> np.ndarray:
    """The objectives told so far, in order, exactly as told (float64;
    NaN for failed trials). Host-side (not jittable)."""
    n = int(state.n)
    return np.asarray(state.y[:n], np.float64) + np.asarray(state.y_lo[:n], np.float64)


def best_observed(state: BOState) -> float:
    """Best finite objective told so far, as told (``-inf`` if none). Host-side."""
    y = objective_values(state)
    ok = ~np.asarray(state.failed[: int(state.n)])
    return float(np.max(y[ok])) if ok.any() else -math.inf


# ---------------------------------------------------------------- tell
_F32_MAX = float(np.finfo(np.float32).max)
_X_TOLERANCE = 1e-5  # unit-cube rounding slack accepted (then clipped) in ``tell``


def _vector(value, name: str, n: int) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {n} numbers, got {value!r}") from None
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got shape {a.shape}: {value!r}")
    return a


def _check_trial(state: BOState, x, y, stage_costs, memo_depth, charged):
    """Validate one trial on the host; returns ``(x, y_hi, y_lo, costs, depth, charged)``."""
    N, d = state.X.shape
    K = state.stage_costs.shape[1]
    x = _vector(x, "x", d)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x must be finite, got {x.tolist()}")
    out = (x < -_X_TOLERANCE) | (x > 1.0 + _X_TOLERANCE)
    if out.any():
        raise ValueError(
            f"x must lie in the unit cube [0, 1]^{d} (the optimizer's coordinates; map raw values with "
            f"SearchSpace.to_unit), got {x.tolist()} (columns {np.flatnonzero(out).tolist()} outside)"
        )
    x = np.clip(x, 0.0, 1.0)

    if y is None:
        raise ValueError("y is None: tell a failed trial with y=float('nan')")
    y = _checks.number(y, "y")
    if math.isfinite(y) and abs(y) > _F32_MAX:
        raise ValueError(
            f"y={y!r} is beyond the float32 range (|y| <= {_F32_MAX:.4g}) the optimizer stores; "
            "tell a rescaled objective (e.g. y / 1e10: proposals do not depend on the scale)"
        )

    depth = memo_depth
    if isinstance(depth, (bool, np.bool_)):
        raise ValueError(f"memo_depth must be an integer in [0, {K - 1}], got {memo_depth!r}")
    depth = _checks.number(depth, "memo_depth")
    if not (depth == int(depth) and 0 <= depth <= K - 1):
        raise ValueError(
            f"memo_depth must be an integer in [0, {K - 1}] (stages restored from the cache; the last "
            f"stage never is), got {memo_depth!r}"
        )
    depth = int(depth)

    costs = _vector(stage_costs, "stage_costs", K)
    bad = np.isinf(costs) | (costs < 0)
    if bad.any():
        raise ValueError(
            f"stage_costs must be finite and >= 0 (NaN for a stage that did not run), got {costs.tolist()}"
        )
    if np.isnan(costs[:depth]).any():
        raise ValueError(
            f"stage_costs of the {depth} memoized stage(s) must be their original compute costs (finite), "
            f"got {costs.tolist()}"
        )

    if charged is not None:
        charged = _checks.number(charged, "charged")
        if not (math.isfinite(charged) and charged >= 0):
            raise ValueError(f"charged must be None or a finite number >= 0, got {charged!r}")

    if math.isfinite(y):
        hi = np.float32(y)
        lo = np.float32(y - float(hi))  # exact in float64, then rounded: hi + lo == y to ~1e-14 relative
    else:  # NaN or +-inf: a failed trial
        hi, lo = np.float32(np.nan), np.float32(0.0)
    return x.astype(np.float32), hi, lo, costs.astype(np.float32), depth, charged


@jax.jit
def _tell(state: BOState, x, y, stage_costs, memo_depth, charged, has_charged, y_lo=0.0) -> BOState:
    """Record a trial (jitted; no validation: :func:`tell` validates on the host)."""
    i = state.n
    K = state.stage_costs.shape[1]
    y = jnp.asarray(y, state.y.dtype)
    costs = jnp.asarray(stage_costs, state.stage_costs.dtype).reshape(K)
    memo_depth = jnp.asarray(memo_depth, jnp.int32)
    failed = ~jnp.isfinite(y)
    # Default charge: epsilon per restored stage + the full cost of the others
    # (stages that never ran, NaN, cost nothing).
    k = jnp.arange(K)
    default = jnp.sum(jnp.where(k < memo_depth, state.epsilon, jnp.nan_to_num(costs, nan=0.0)))
    charge = jnp.where(has_charged, jnp.asarray(charged, state.charged.dtype), default)
    spent = state.spent + charge
    is_warm = i < state.n_warmup
    return state._replace(
        X=state.X.at[i].set(jnp.asarray(x, state.X.dtype)),
        y=state.y.at[i].set(jnp.where(failed, jnp.nan, y)),
        y_lo=state.y_lo.at[i].set(jnp.where(failed, 0.0, jnp.asarray(y_lo, state.y_lo.dtype))),
        stage_costs=state.stage_costs.at[i].set(costs),
        memo_depth=state.memo_depth.at[i].set(memo_depth),
        charged=state.charged.at[i].set(charge),
        failed=state.failed.at[i].set(failed),
        warmup=state.warmup.at[i].set(is_warm),
        n=i + 1,
        spent=spent,
        b0=jnp.where(i + 1 == state.n_warmup, spent, state.b0),
    )


def tell(state: BOState, x, y, stage_costs, memo_depth=0, charged=None) -> BOState:
    """Record one finished (or failed) trial.

    Every argument is validated here, on the host, before anything is traced;
    a bad value raises ``ValueError`` naming the argument. Numbers may be
    Python or NumPy scalars or 0-d arrays.

    Args:
        state: current state; grown to the next capacity bucket if full.
        x: ``(d,)`` unit-cube point that ran (as proposed: snapped), finite
            and in ``[0, 1]`` (up to 1e-5 of rounding, then clipped).
        y: objective. NaN marks a failed trial; ``+inf`` and ``-inf`` are
            recorded as failed trials too (the optimizer cannot rank them).
            Finite values must fit float32 (``|y| <= 3.4e38``): the state
            keeps them as a float32 hi/lo pair, so large offsets lose nothing.
        stage_costs: ``(K,)`` full cost of each stage, each finite ``>= 0`` or
            NaN for a stage that did not run. For memoized stages, the cost of
            computing them originally (finite). These are what the cost GPs
            learn.
        memo_depth: number of leading stages restored from the cache, an
            integer in ``[0, K - 1]``.
        charged: what the trial cost the budget (finite, ``>= 0``); by default
            ``epsilon * memo_depth + sum of the other stages' costs``. Real runs
            pass measured seconds (restore time + compute time).

    Returns:
        The new state.
    """
    x, hi, lo, costs, depth, charged = _check_trial(state, x, y, stage_costs, memo_depth, charged)
    state = ensure_capacity(state)
    has = charged is not None
    return _tell(state, x, hi, costs, depth, np.float32(0.0 if charged is None else charged), has, lo)


# ---------------------------------------------------------------- ask
def _warmup_proposal(key, state: BOState, config: BOConfig) -> Proposal:
    x = config.snap(jax.random.uniform(key, (config.dim,), state.X.dtype))
    return Proposal(
        x=x,
        memo_depth=jnp.asarray(0, jnp.int32),
        source=jnp.asarray(-1, jnp.int32),
        score=jnp.asarray(jnp.nan, state.X.dtype),
        eta=jnp.asarray(1.0, state.X.dtype),
        fallback=jnp.asarray(False),
    )


def _cost_data(state: BOState, config: BOConfig, valid):
    """Targets, row masks and input masks of the method's cost model(s)."""
    kind = config.method_def.cost_model
    if kind == "stages":
        log_c, ok = costlib.log_costs(state.stage_costs, jnp.ones_like(state.stage_costs, bool))
        input_masks = costlib.stage_input_masks(config.stage_of_column, config.n_stages, config.cost_inputs)
    else:  # "total"
        total = jnp.sum(state.stage_costs, axis=1, keepdims=True)  # NaN if any stage unknown
        log_c, ok = costlib.log_costs(total, jnp.ones_like(total, bool))
        input_masks = np.ones((1, config.dim), np.float32)
    return log_c, ok & valid[:, None], jnp.asarray(input_masks, state.X.dtype)


def scaled_objective(state: BOState):
    """The finished trials' objectives on a scale-free float32 scale
    (:func:`eeipu_jax.gp.scale_free`: relative to the first finished trial,
    divided by the largest difference, so in ``[-1, 1]``); NaN for failed
    trials and padded rows. An increasing affine change of the objective
    leaves these values unchanged (up to float32 rounding)."""
    N = state.X.shape[0]
    ok = (jnp.arange(N) < state.n) & ~state.failed
    u, _, _ = gplib.scale_free(state.y, ok, state.y_lo)
    return jnp.where(ok, u, jnp.nan)


def effective_objective(state: BOState):
    """``(valid, y_eff)``: which rows hold trials, and the objective the GP is
    fitted on, on the scale-free scale of :func:`scaled_objective`.

    Failed trials are set to the worst finished objective; before any trial
    has finished they (like every row) are 0, a constant that standardizes
    to 0. Padded rows are 0.
    """
    valid = jnp.arange(state.X.shape[0]) < state.n
    u = scaled_objective(state)  # NaN in failed and padded rows
    worst = jnp.min(jnp.where(valid & ~state.failed, u, jnp.inf))
    worst = jnp.where(jnp.isfinite(worst), worst, 0.0)
    return valid, jnp.where(valid, jnp.where(state.failed, worst, u), 0.0)


def _pool_eligible(state: BOState, config: BOConfig):
    """Rows that may provide memoized prefixes: finished trials (BO-phase
    ones only with ``prefix_pool="post_warmup"``)."""
    ok = (jnp.arange(state.X.shape[0]) < state.n) & ~state.failed
    if config.prefix_pool == "post_warmup":
        ok = ok & ~state.warmup
    return ok


def _prefix_pool(state: BOState, config: BOConfig, y_eff) -> candlib.PrefixPool:
    masks = jnp.asarray(candlib.prefix_masks_array(config.stage_of_column, config.n_stages))
    return candlib.prefix_pool(
        state.X, y_eff, _pool_eligible(state, config), config.top_q, masks, config.prefix_select
    )


def prefix_pool(state: BOState, config: BOConfig) -> candlib.PrefixPool:
    """The memoized prefixes the next ``ask`` may propose, and the prefixes a
    ``top_q`` stage cache must keep: one definition for both.

    :func:`ask` proposes memoized candidates only from this pool, the
    simulated cache (:func:`eeipu_jax.simulate.is_cached`) holds exactly
    these prefixes, and the real runtime keeps exactly the stage outputs of
    these prefixes (the study's ``pool_keys``), so a memoized proposal is
    never a cache miss. Trials are ranked by the objective the GP sees
    (:func:`effective_objective`, an increasing function of the objective
    told).

    Pure and jittable; call it on the host after :func:`tell` to know what to
    keep.

    Returns:
        A :class:`eeipu_jax.candidates.PrefixPool`: for each depth
        ``j = 1 .. K-1`` (row ``j - 1``), up to ``top_q`` observation rows
        whose depth-``j`` prefix is on offer, with a validity mask.
    """
    _, y_eff = effective_objective(state)
    return _prefix_pool(state, config, y_eff)


def _refit_due(state: BOState, config: BOConfig):
    """Whether this ask refits the hyperparameters: never fitted yet, a new
    trial told while fewer than ``refit_hold_from`` are, or the trials have grown by
    ``refit_growth`` (at least one) since the last refit (every ask when
    ``refit_growth`` is 0)."""
    if config.refit_growth == 0:
        return jnp.asarray(True)
    need = jnp.maximum(jnp.ceil(config.refit_growth * state.n_fit.astype(jnp.float32)), 1.0)
    new = state.n - state.n_fit
    grown = new.astype(jnp.float32) >= need
    return (state.n_fit == 0) | ((state.n < config.refit_hold_from) & (new > 0)) | grown


def surrogates(key, state: BOState, config: BOConfig, init, targets, masks, input_masks, priority):
    """Fit (on schedule) and condition the method's stacked GPs.

    On a refit ask (:func:`_refit_due`) the hyperparameters are fitted, warm
    or cold (``refit_every``), on at most ``fit_rows`` rows
    (:func:`eeipu_jax.gp.fit_rows`), and the factors of all rows are
    computed anew. Otherwise the hyperparameters are held and the rows told
    since the last ask are appended to the kept factors
    (:func:`eeipu_jax.gp.append_rows`, O(N^2) a row); the factors are
    computed anew only when the state holds none (``n_chol == 0``, e.g. a
    checkpoint written before they were kept), when rows were removed, or
    when more than a third of the capacity is new (a new factorization is
    then cheaper). Either way the posterior conditions on every row.

    Args:
        key: PRNG key (restarts and the fitting subset).
        state: the current state (``X``, ``n`` and the kept factors).
        config: static settings.
        init: current hyperparameters, stacked over the M GPs.
        targets, masks: ``(N, M)`` raw targets and the rows each GP uses.
        input_masks: ``(M, d)`` columns each GP sees.
        priority: ``(N,)`` ranking of rows for the fitting subset (the
            objective: the best rows are always in it).

    Returns:
        ``(params, posts, mean, std, state)``: hyperparameters, posteriors
        (standardized targets) and standardization stacked over M, and
        ``state`` with the factors and refit counters updated (the caller
        stores ``params``).
    """
    gcfg = config.gp
    X = state.X
    N = X.shape[0]
    valid = jnp.arange(N) < state.n
    due = _refit_due(state, config)
    cold = (state.n_refits % config.refit_every) == 0
    k_fit, k_rows = jax.random.split(key)
    size = N if config.fit_rows == 0 else min(N, config.fit_rows)

    def factors(params):
        return jax.vmap(lambda p, m, im: gplib.factor(p, X, m, gcfg, im))(params, masks.T, input_masks)

    def refit():
        rows = None if size == N else gplib.fit_rows(k_rows, valid, priority, size)
        params, _, _ = gplib.fit_stacked(k_fit, init, X, targets, masks, input_masks, gcfg, cold, rows)
        return params, factors(params)

    def extend():
        def append(L, p, m, im):
            return gplib.append_rows(L, p, X, m, gcfg, im, state.n_chol, state.n)

        return jax.lax.cond(
            (state.n_chol == 0) | (state.n_chol > state.n) | (3 * (state.n - state.n_chol) > N),
            lambda: factors(init),
            lambda: jax.vmap(append)(state.chol, init, masks.T, input_masks),
        )

    params, chol = jax.lax.cond(due, refit, lambda: (init, extend()))
    _, mean, std = jax.vmap(gplib.standardize)(targets.T, masks.T)
    posts = gplib.posterior_stacked(params, X, targets, masks, input_masks, mean, std, gcfg, chol=chol)
    state = state._replace(
        chol=chol,
        n_chol=state.n,
        n_fit=jnp.where(due, state.n, state.n_fit),
        n_refits=state.n_refits + due.astype(jnp.int32),
    )
    return params, posts, mean, std, state


def fantasize(params, posts, chol, X, targets, masks, input_masks, mean, std, gcfg: gplib.GPConfig,
              pending: Pending):
    """Kriging-believer fantasy of M stacked GPs: condition them on the told
    rows plus the live pending rows, each pending target being the GP's own
    posterior mean at its ``x`` (Ginsbourger et al. 2010, "Kriging is
    well-suited to parallelize optimization").

    The pending rows enter a copy of the kept factors
    (:func:`eeipu_jax.gp.append_rows` after padding to ``N + P`` rows:
    O(M N^2 P), no new factorization) with the same hyperparameters and the
    same target standardization as the told rows, so the posterior mean is
    unchanged everywhere (each fantasized target equals the mean it is
    conditioned against) and only the variance near the pending points
    falls.

    Args:
        params, posts, chol: hyperparameters, posteriors and factors of the
            M GPs on the told rows (stacked; from :func:`surrogates`).
        X, targets, masks, input_masks, mean, std: as for
            :func:`eeipu_jax.gp.posterior_stacked` (told rows).
        gcfg: GP settings.
        pending: the running trials.

    Returns:
        ``(posts, kb)``: posteriors on ``N + P`` rows (rows ``N + p`` are the
        pending slots; empty slots are masked out) and the fantasized raw
        targets ``(P, M)`` (on the scale of ``targets``).
    """
    N = X.shape[0]
    P, M = pending.x.shape[0], targets.shape[1]
    m, _ = jax.vmap(lambda post: jax.vmap(lambda x: gplib.predict(post, x))(pending.x))(posts)  # (M, P)
    kb = (mean[:, None] + std[:, None] * m).T  # back to the targets' scale
    Xa = jnp.concatenate([X, pending.x.astype(X.dtype)])
    ta = jnp.concatenate([targets, kb])
    ma = jnp.concatenate([masks, jnp.broadcast_to(pending.mask[:, None], (P, M))])
    La = _grow_factors(chol, N + P)
    La = jax.vmap(lambda L, p, mk, im: gplib.append_rows(L, p, Xa, mk, gcfg, im, N, N + P))(
        La, params, ma.T, input_masks
    )
    return gplib.posterior_stacked(params, Xa, ta, ma, input_masks, mean, std, gcfg, chol=La), kb


def _mean_stage_costs(state: BOState):
    """``(K,)`` mean observed cost of each stage over the told trials where
    it ran (0 where none did)."""
    valid = (jnp.arange(state.X.shape[0]) < state.n)[:, None]
    ok = valid & jnp.isfinite(state.stage_costs)
    total = jnp.sum(jnp.where(ok, state.stage_costs, 0.0), axis=0)
    return total / jnp.maximum(jnp.sum(ok, axis=0), 1)


def committed_cost(state: BOState, config: BOConfig, pending: Pending, costs=None, cost_mean=None, cost_std=None):
    """Expected cost still to be paid by the running trials: for each live
    pending row, the expected cost of its stages after ``memo_depth`` (its
    restored stages are already paid, up to ``epsilon``).

    * Stage cost GPs (``cost_model="stages"``: EEIPU, MS_CArBO, PBGI): the
      log-normal mean ``exp(mu_k + sigma_k^2 / 2)`` of each stage ``k >=
      memo_depth`` at the pending ``x``, the same cost model the
      acquisition prices candidates with.
    * One total-cost GP (EIPS, CArBO): its log-normal mean at ``x``, times
      the share of the observed mean stage costs that falls after
      ``memo_depth`` (1 for a fresh run).
    * No cost GP (EI, LaMBO, MS_BO): the mean observed cost of each stage
      after ``memo_depth``, summed.

    Args:
        state, config: the told trials and settings.
        pending: the running trials.
        costs, cost_mean, cost_std: the cost GPs' posteriors and
            standardization (:class:`eeipu_jax.acquisition.AcqState`'s), for
            methods that have them.

    Returns:
        A scalar in the budget's units.
    """
    kind = config.method_def.cost_model
    K = config.n_stages
    after = jnp.arange(K)[None, :] >= pending.memo_depth[:, None]  # (P, K)
    mean_k = _mean_stage_costs(state)
    if kind in ("stages", "total") and costs is not None:
        mu, sigma = jax.vmap(lambda x: costlib.predict_log_cost(costs, cost_mean, cost_std, x))(pending.x)
        expected = jnp.exp(mu + 0.5 * sigma * sigma)  # (P, K) or (P, 1)
        if kind == "stages":
            c = jnp.sum(jnp.where(after, expected, 0.0), axis=1)
        else:
            share = jnp.sum(jnp.where(after, mean_k[None, :], 0.0), axis=1) / jnp.maximum(jnp.sum(mean_k), 1e-30)
            c = expected[:, 0] * jnp.where(pending.memo_depth == 0, 1.0, share)
    else:
        c = jnp.sum(jnp.where(after, mean_k[None, :], 0.0), axis=1)
    return jnp.sum(jnp.where(pending.mask, c, 0.0))


def acquisition_state(key, state: BOState, config: BOConfig, pending: Pending | None = None):
    """Fit (on schedule) and condition all surrogates of ``config.method`` and
    build its :class:`AcqState`.

    With ``pending`` (see "Pending trials" in the module doc) the objective
    GP is the kriging-believer fantasy (:func:`fantasize`), the incumbent
    ``best`` includes the fantasized values, and ``eta`` is computed from
    ``spent`` plus :func:`committed_cost`; the cost GPs and the
    hyperparameters are those of the told trials only.

    Returns:
        ``(acq_state, state, y_eff)``: ``state`` carries the hyperparameters
        in use (``obj_params``, ``cost_params``: the warm start of the next
        refit) and the updated factors (told rows only); ``y_eff`` is the
        objective the GP is conditioned on (:func:`effective_objective`:
        scale-free, failed trials at the worst finished value), followed,
        with ``pending``, by the ``P`` fantasized values of the pending slots.
    """
    method = config.method_def
    valid, y_eff = effective_objective(state)
    k_fit, k_mc = jax.random.split(key)

    # The objective GP and the cost GPs are fitted in one vmapped call (one
    # copy of the fitting program to compile, one batched loop to run).
    best = jnp.max(jnp.where(valid, y_eff, -jnp.inf))
    targets, masks, input_masks = y_eff[:, None], valid[:, None], jnp.ones((1, config.dim), state.X.dtype)
    init = jax.tree.map(lambda a: a[None], state.obj_params)
    has_costs = method.cost_model in ("total", "stages")
    if has_costs:
        log_c, cmasks, cinput = _cost_data(state, config, valid)
        targets = jnp.concatenate([targets, log_c], axis=1)
        masks = jnp.concatenate([masks, cmasks], axis=1)
        input_masks = jnp.concatenate([input_masks, cinput], axis=0)
        init = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), init, state.cost_params)
    params, posts, mean, std, state = surrogates(k_fit, state, config, init, targets, masks, input_masks, y_eff)
    # Acquisitions work on the standardized objective scale.
    obj_params = jax.tree.map(lambda a: a[0], params)
    obj_post = jax.tree.map(lambda a: a[0], posts)
    if pending is not None:
        one = lambda a: a[:1]  # noqa: E731  (the objective GP, as a stack of one)
        fposts, kb = fantasize(jax.tree.map(one, params), jax.tree.map(one, posts), state.chol[:1], state.X,
                               targets[:, :1], masks[:, :1], input_masks[:1], mean[:1], std[:1], config.gp,
                               pending)
        obj_post = jax.tree.map(lambda a: a[0], fposts)
        # The believed values count as observed (Ginsbourger et al.): the
        # incumbent includes them, so EI at a pending point is ~0 even
        # where its mean beats the best told trial.
        best = jnp.maximum(best, jnp.max(jnp.where(pending.mask, kb[:, 0], -jnp.inf)))
        y_eff = jnp.concatenate([y_eff, kb[:, 0]])
    best = (best - mean[0]) / std[0]
    cost_params = state.cost_params
    costs = cost_mean = cost_std = z = None
    if has_costs:
        cost_params = jax.tree.map(lambda a: a[1:], params)
        costs = jax.tree.map(lambda a: a[1:], posts)
        cost_mean, cost_std = mean[1:], std[1:]
        z = costlib.normal_base_samples(k_mc, config.mc_samples, config.n_cost_models, state.X.dtype)

    if config.cooling == "linear":
        spent = state.spent
        if pending is not None:  # the running trials' expected cost is committed budget
            spent = spent + committed_cost(state, config, pending, costs, cost_mean, cost_std)
        eta = costlib.cooling_eta(state.budget, spent, state.b0)
    elif config.cooling == "constant":
        eta = jnp.asarray(1.0, state.X.dtype)
    else:
        eta = jnp.asarray(0.0, state.X.dtype)
    acq = acqlib.AcqState(
        obj=obj_post,
        best=best,
        costs=costs,
        cost_mean=cost_mean,
        cost_std=cost_std,
        z=z,
        log_epsilon=jnp.log(state.epsilon),
        eta=eta,
        extra=jnp.asarray(config.ucb_beta, state.X.dtype),
    )
    return acq, state._replace(obj_params=obj_params, cost_params=cost_params), y_eff


def _finished_scale_free(state: BOState):
    """``(best, scale)``: the best finished objective on the scale-free scale
    of :func:`scaled_objective` and that scale (``y ~ anchor + scale * u``)."""
    ok = (jnp.arange(state.X.shape[0]) < state.n) & ~state.failed
    u, _, scale = gplib.scale_free(state.y, ok, state.y_lo)
    return jnp.max(jnp.where(ok, u, -jnp.inf)), scale


def _gittins_params(acq: acqlib.AcqState, state: BOState, config: BOConfig):
    """PBGI-D's decay check for the previous proposal, then the ``lambda``
    and cost scale of this ask (``AcqState.extra``)."""
    g = state.gittins
    best_u, scale = _finished_scale_free(state)
    # The previous proposal's index against the best observed value (which
    # now includes its observation), both on the previous ask's scale.
    fired = g.pending & (best_u * (scale / g.last_scale) > g.last_index)
    lam = jnp.where(fired, g.lam / config.pbgi_decay, g.lam)
    g = g._replace(lam=lam, pending=jnp.asarray(False), n_decays=g.n_decays + fired.astype(jnp.int32))
    # lambda is scale-free: costs are divided by the mean observed cost of a
    # full trial (stage costs are full compute costs, memoized or not).
    valid = jnp.arange(state.X.shape[0]) < state.n
    total = jnp.sum(state.stage_costs, axis=1)
    ok = valid & jnp.isfinite(total) & (total > 0)
    mean_cost = jnp.sum(jnp.where(ok, total, 0.0)) / jnp.maximum(jnp.sum(ok), 1)
    mean_cost = jnp.where(jnp.any(ok), mean_cost, 1.0)
    extra = acqlib.GittinsParams(log_lambda=jnp.log(lam), log_cost_scale=jnp.log(mean_cost))
    return acq._replace(extra=extra), g


def _gittins_record(g: GittinsState, index, state: BOState, y_eff):
    """Keep the chosen index (standardized scale of this ask) on the
    scale-free scale, for the next ask's decay check."""
    valid = jnp.arange(state.X.shape[0]) < state.n
    _, mean, std = gplib.standardize(y_eff, valid)
    _, scale = _finished_scale_free(state)
    ok = jnp.isfinite(index)
    return g._replace(
        last_index=jnp.where(ok, mean + std * index, g.last_index),
        last_scale=jnp.where(ok, scale, g.last_scale),
        pending=ok,
    )


def _bo_proposal(key, state: BOState, config: BOConfig, pending: Pending | None = None):
    method = config.method_def
    if method.propose is not None:
        if pending is None:
            return method.propose(key, state, config)
        return method.propose(key, state, config, pending=pending)
    k_fit, k_cand = jax.random.split(key)
    acq, new_state, y_eff = acquisition_state(k_fit, state, config, pending)
    gittins = state.gittins
    if method.gittins:
        acq, gittins = _gittins_params(acq, state, config)

    N = state.X.shape[0]
    pool_ok = _pool_eligible(state, config)
    masks = jnp.asarray(candlib.prefix_masks_array(config.stage_of_column, config.n_stages))
    X = state.X
    if pending is None:
        pool = _prefix_pool(state, config, y_eff) if method.memoize else None
    else:
        # The running trials' prefixes join the pool, ranked with the told
        # trials by their fantasized objective; batch sources index
        # [state rows] + [pending slots] (see Proposal).
        X = jnp.concatenate([state.X, pending.x.astype(state.X.dtype)])
        pool_ok = jnp.concatenate([pool_ok, pending.mask])
        pool = (candlib.prefix_pool(X, y_eff, pool_ok, config.top_q, masks, config.prefix_select)
                if method.memoize else None)
    batch = candlib.candidate_batch(
        k_cand,
        X,
        y_eff,
        pool_ok,
        n_random=config.n_random,
        n_per_prefix=config.n_per_prefix,
        q=config.top_q,
        prefix_masks=masks,
        memoize=method.memoize,
        n_local=config.n_local,
        pool=pool,
    )

    def score(x, j):
        return method.score(x, j, acq)

    def snap_free(x, j):
        # Snap the free coordinates only: a memoized prefix is copied from its
        # source trial and must stay bit-identical for the cache to hit.
        return jnp.where(masks[j], x, config.snap(x))

    # Snap first, then score: the winner is chosen on the scores of the points
    # that will run (an integer/categorical winner chosen between bin centres
    # could snap onto an observed point).
    bx = jax.vmap(snap_free)(batch.x, batch.depth)
    vals = jax.vmap(score)(bx, batch.depth)
    vals = jnp.where(batch.valid & jnp.isfinite(vals), vals, -jnp.inf)

    if config.n_refine > 0:
        # Refine the best few candidates of *each* memo depth (the authors
        # maximize the acquisition separately for the fresh run and for every
        # prefix). A global top-k would refine only deep prefixes: their free
        # subspace is small, so random points already sit near its optimum,
        # while the best of 512 random points in the full cube is far from the
        # optimum of a fresh run, and memoization would win by default.
        groups = config.n_stages if method.memoize else 1
        top, top_ok = candlib.top_per_depth(vals, batch.depth, groups, config.n_refine)
        x0, d0, v0 = bx[top], batch.depth[top], vals[top]
        free = ~masks[d0]
        # Gradient steps on the continuous relaxation, then snapped and scored
        # again; a refined point replaces its start only if its snapped score
        # is higher.
        xr, _ = jax.vmap(
            lambda x, j, f: candlib.refine(lambda z: score(z, j), x, f, config.refine_steps, config.refine_lr)
        )(x0, d0, free)
        xs = jax.vmap(snap_free)(xr, d0)
        vs = jax.vmap(score)(xs, d0)
        moved = jnp.isfinite(vs) & (vs > v0)
        xc = jnp.where(moved[:, None], xs, x0)
        vc = jnp.where(top_ok, jnp.where(moved, vs, v0), -jnp.inf)
        r = jnp.argmax(vc)
        x, j, src, v = xc[r], d0[r], batch.source[top[r]], vc[r]
    else:
        r = jnp.argmax(vals)
        x, j, src, v = bx[r], batch.depth[r], batch.source[r], vals[r]
    prop = Proposal(x=x, memo_depth=j, source=src, score=v, eta=acq.eta, fallback=jnp.asarray(False))
    if method.gittins:
        gittins = _gittins_record(gittins, v, state, y_eff[:N])
    return prop, new_state._replace(n_bo=state.n_bo + 1, gittins=gittins)


def canonicalize(state: BOState) -> BOState:
    """Give every leaf its canonical dtype (drops JAX's weak types), so a state
    edited by hand (``state._replace(spent=1.0)``) does not recompile ``ask``."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.asarray(a).dtype), state)


def ask(key, state: BOState, config: BOConfig, pending: Pending | None = None):
    """Propose the next trial.

    Args:
        key: PRNG key (split by the caller; never reused).
        state: current state.
        config: static settings.
        pending: the trials proposed earlier and still running (a parallel
            driver), as a :class:`Pending` of fixed capacity ``P``
            (:func:`pending_from`); checked here on the host. ``None``: the
            single-worker step, unchanged. With ``pending``, the objective is
            fantasized at the pending points (kriging believer), their
            expected cost counts as spent for the cost cooling, and their
            prefixes may be proposed as memoized ones (``Proposal.source ==
            N + p``); see "Pending trials" in the module doc. ``ask``
            compiles once per (state capacity, ``P``), whatever the number of
            live rows. During the warm-up, pending rows are ignored.

    Returns:
        ``(proposal, state)``: the new state carries the freshly fitted GP
        hyperparameters (warm start of the next ask) and the BO-step counter;
        it never contains the pending rows (tell each trial when it finishes,
        in any order, with :func:`tell`).
    """
    if pending is None:
        return _ask(key, canonicalize(state), config)
    return _ask_pending(key, canonicalize(state), config, _check_pending(pending, config))


def _bo_step(k_random, k_bo, state: BOState, config: BOConfig, pending: Pending | None = None):
    """A BO proposal, or the documented fallback when no candidate scored finite."""
    prop, new_state = _bo_proposal(k_bo, state, config, pending)
    # Every candidate non-finite (argmax would silently return row 0): propose
    # a uniform random point instead, flag it and count it. ``k_random`` is
    # the warm-up branch's key, unused on this branch.
    bad = ~jnp.isfinite(prop.score)
    rnd = _warmup_proposal(k_random, state, config)._replace(score=prop.score, eta=prop.eta, fallback=bad)
    prop = jax.tree.map(lambda a, b: jnp.where(bad, a, b), rnd, prop)
    return prop, new_state._replace(n_fallback=new_state.n_fallback + bad.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("config",))
def _ask(key, state: BOState, config: BOConfig):
    k_warm, k_bo = jax.random.split(key)
    in_warmup = state.n < state.n_warmup
    return jax.lax.cond(
        in_warmup,
        lambda: (_warmup_proposal(k_warm, state, config), state),
        lambda: _bo_step(k_warm, k_bo, state, config),
    )


@functools.partial(jax.jit, static_argnames=("config",))
def _ask_pending(key, state: BOState, config: BOConfig, pending: Pending):
    k_warm, k_bo = jax.random.split(key)
    in_warmup = state.n < state.n_warmup
    return jax.lax.cond(
        in_warmup,
        lambda: (_warmup_proposal(k_warm, state, config), state),
        lambda: _bo_step(k_warm, k_bo, state, config, pending),
    )

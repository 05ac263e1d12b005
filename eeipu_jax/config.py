"""Settings of a BO run, split the way ``jit`` sees them: :class:`BOConfig` and :class:`Params`.

* :class:`BOConfig` is the **static structure**: what fixes shapes and
  programs (the search space's columns and bins, the method's name, batch
  sizes, capacities, step counts, the prefix-pool rule) and the surrogate
  model (:class:`~eeipu_jax.gp.GPConfig`: kernel bounds, hyperpriors, fitting
  steps). It is hashable and a static argument of the jitted ``ask``:
  changing a field compiles anew. The GP model's floats stay static on
  purpose: they define the model rather than the search, and XLA folds
  the constants derived from them (log bounds, prior normalizers), which
  traced values would round differently.
* :class:`Params` are the **numbers**: every float of the BO step and of
  the method a researcher may sweep (the memoized-stage price ``epsilon``,
  the cooling schedule, the refinement step size, the refit rule, the
  method's own params such as PBGI's ``lambda0``). It is a pytree of arrays carried in the BO state
  (``state.params``): traced inside ``jit``, so changing one between two asks
  compiles nothing new, and a batch of them can be ``vmap``-ed (a sweep of
  settings runs as one program).

:func:`configure` takes every setting by name and routes it to the right
half; :func:`default_params` gives a method's defaults.

**Cooling.** EEIPU and CArBO raise the expected inverse cost to the power
``eta``. Here ``eta = eta_end + (eta_start - eta_end) * r`` with
``r = (B - spent) / (B - b0)`` clipped to ``[0, 1]`` (``b0``: the warm-up's
cost), so ``eta`` moves linearly from ``eta_start`` at the first BO step to
``eta_end`` when the budget is spent. The paper's schedule is
``(eta_start, eta_end) = (1, 0)`` (``cooling="linear"``); ``"constant"`` is
``(1, 1)`` and ``"none"`` is ``(0, 0)`` (the cost term drops out).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eeipu_jax import checks
from eeipu_jax import candidates as candlib
from eeipu_jax import costs as costlib
from eeipu_jax import gp as gplib
from eeipu_jax.methods import Method, check_method_params, get_method
from eeipu_jax.space import SearchSpace

__all__ = ["BOConfig", "Params", "default_params", "replace_params", "configure", "COOLING", "PARAM_FIELDS",
           "CONFIG_FIELDS", "as_arrays", "check_params", "check_config",
           "setting_defaults"]

#: Named cooling schedules: ``(eta_start, eta_end)``.
COOLING = {"linear": (1.0, 0.0), "constant": (1.0, 1.0), "none": (0.0, 0.0)}


@dataclasses.dataclass(frozen=True)
class BOConfig:
    """Static settings of a BO run (hashable; changing one compiles anew).

    Attributes:
        stage_of_column: stage index of each unit-cube column (from the space).
        bins: per column, 0 for a continuous column or the number of equal bins
            (ints, categoricals) that proposals are snapped to.
        method: registered method name (see :mod:`eeipu_jax.methods`).
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
            ``top_q`` stage cache keeps (:func:`eeipu_jax.loop.prefix_pool`).
        n_refine: best candidates refined by gradient steps (0 disables); for
            memoizing methods, the best ``n_refine`` of each memo depth.
        refine_steps: Adam steps per refinement.
        mc_samples: quasi-random samples for the expected inverse cost
            (256: its log is within 0.005 of the exact value at the median
            and 0.03 at the 95th percentile for 10 log-normal stages,
            tests/test_acquisition.py; 1024 made a 10-stage ask 1.25-1.8x
            slower for no measured gain on development seeds, README "Speed
            of the whole comparison").
        cost_inputs: ``"prefix"`` (stage k's cost GP sees stages 0..k) or
            ``"stage"`` (only stage k's columns).
        refit_hold_from: below this many told trials the GP hyperparameters
            are refitted at every ask (0: the growth rule of
            ``Params.refit_growth`` from the start).
        refit_every: every this many refits is cold (fresh starts, competing
            with the current hyperparameters); the others are warm-started.
            The first refit is cold.
        fit_rows: the hyperparameters are fitted on at most this many rows
            (the best quarter by objective plus a uniform random sample of the
            rest, drawn anew at each refit); the posterior always conditions
            on every row. 0: fit on all rows.
        gp: the surrogate model: kernel bounds, hyperpriors and fitting
            steps of every GP (:class:`eeipu_jax.gp.GPConfig`).
        space_id: the search space's fingerprint
            (:attr:`eeipu_jax.space.SearchSpace.fingerprint`, set by
            :meth:`from_space`; 0: a config built without a space). The state
            keeps it (:func:`eeipu_jax.loop.init`) and ``ask`` refuses a state
            built for another space, even one of the same shape.
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
    mc_samples: int = 256
    cost_inputs: str = "prefix"
    refit_hold_from: int = 256
    refit_every: int = 10
    fit_rows: int = 128
    gp: gplib.GPConfig = gplib.GPConfig()
    # Left out of equality and hashing: configs of two spaces of the same shape
    # share their compiled programs (the fingerprint is checked on the host).
    space_id: int = dataclasses.field(default=0, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "stage_of_column", tuple(int(s) for s in self.stage_of_column))
        object.__setattr__(self, "bins", tuple(int(b) for b in self.bins))
        for name in ("n_warmup", "n_random", "n_per_prefix", "n_local", "top_q", "n_refine",
                     "refine_steps", "mc_samples", "refit_every", "refit_hold_from", "fit_rows", "space_id"):
            object.__setattr__(self, name, checks.integer(getattr(self, name), f"BOConfig.{name}"))
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
        if not isinstance(self.gp, gplib.GPConfig):
            raise ValueError(f"BOConfig.gp must be a GPConfig, got {self.gp!r}")
        if not isinstance(self.method, str):
            raise ValueError(f"BOConfig.method must be a registered method name, got {self.method!r}")
        object.__setattr__(self, "method", get_method(self.method).name)  # raises on unknown names
        conditions = {
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
            "space_id": 0 <= self.space_id < 2**31,  # kept in the state as an int32
        }
        bad = [k for k, ok in conditions.items() if not ok]
        if bad:
            raise ValueError(f"BOConfig: invalid value for {bad}: {[getattr(self, k) for k in bad]}")
        if self.prefix_pool not in ("all", "post_warmup"):
            raise ValueError(f"BOConfig.prefix_pool must be 'all' or 'post_warmup', got {self.prefix_pool!r}")
        if self.prefix_select not in candlib.PREFIX_SELECT:
            raise ValueError(
                f"BOConfig.prefix_select must be one of {list(candlib.PREFIX_SELECT)}, got {self.prefix_select!r}"
            )
        costlib.stage_input_masks(soc, self.n_stages, self.cost_inputs)  # validates cost_inputs

    @classmethod
    def from_space(cls, space: SearchSpace, **kwargs) -> "BOConfig":
        """Config for a :class:`~eeipu_jax.space.SearchSpace` (other fields as kwargs)."""
        return cls(stage_of_column=space.stage_of_column, bins=space.bins, space_id=space.fingerprint, **kwargs)

    @property
    def dim(self) -> int:
        return len(self.stage_of_column)

    @property
    def n_stages(self) -> int:
        return self.stage_of_column[-1] + 1

    @property
    def method_def(self) -> Method:
        return get_method(self.method)

    @property
    def n_cost_models(self) -> int:
        """Cost GPs the generic step fits for the method (0, 1 or ``n_stages``)."""
        return self.method_def.n_cost_models(self.n_stages)

    @property
    def n_gps(self) -> int:
        """GPs whose hyperparameters and Cholesky factors the state keeps
        (:meth:`eeipu_jax.methods.Method.n_surrogates`)."""
        return self.method_def.n_surrogates(self)

    @property
    def prefix_masks(self) -> np.ndarray:
        """``(K, d)`` booleans: row ``j`` marks the columns of stages ``0 .. j-1``
        (the columns a depth-``j`` memoized candidate copies from its source)."""
        return _prefix_masks(self.stage_of_column)

    def snap(self, u):
        """Snap unit-cube rows to representable points (JAX-traceable)."""
        b = jnp.asarray(self.bins, u.dtype)
        nb = jnp.maximum(b, 1.0)
        binned = (jnp.clip(jnp.floor(jnp.clip(u, 0.0, 1.0) * nb), 0.0, nb - 1.0) + 0.5) / nb
        return jnp.where(b > 0, binned, jnp.clip(u, 0.0, 1.0))


@functools.lru_cache(maxsize=None)
def _prefix_masks(stage_of_column: tuple[int, ...]) -> np.ndarray:
    masks = candlib.prefix_masks_array(stage_of_column, stage_of_column[-1] + 1)
    masks.setflags(write=False)
    return masks


class Params(NamedTuple):
    """The numbers of a BO run (a pytree; see the module docstring).

    Attributes:
        epsilon: price of restoring one memoized stage: what the acquisition
            prices it at, and what :func:`eeipu_jax.loop.tell` charges for it
            when no charge is given (0.1, the paper's).
        refine_lr: refinement learning rate (unit-cube units).
        eta_start: cooling exponent at the first BO step.
        eta_end: cooling exponent when the budget is spent.
        refit_growth: from ``BOConfig.refit_hold_from`` trials on, the GP
            hyperparameters are refitted when the number of trials has grown
            by this fraction since the last refit (at least one new trial;
            0: at every ask).
        method: the method's own params (its ``Method.params`` by default).
    """

    epsilon: Any = 0.1
    refine_lr: Any = 0.05
    eta_start: Any = 1.0
    eta_end: Any = 0.0
    refit_growth: Any = 0.1
    method: Any = None


#: The float fields of :class:`Params` a setting may name (``method`` is set
#: as a whole, or the method's own params by their names).
PARAM_FIELDS = ("epsilon", "refine_lr", "eta_start", "eta_end", "refit_growth")
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(BOConfig)
                      if f.name not in ("stage_of_column", "bins", "space_id"))  # those come from the space


def check_config(config: Any) -> BOConfig:
    """``config``, checked on the host to be a :class:`BOConfig` (``ValueError`` naming it)."""
    return checks.instance(config, BOConfig, "config")


def check_params(p: Params, method: Method) -> Params:
    """``p`` validated on the host for ``method``, its floats as Python floats.

    Raises:
        ValueError: naming the field and its value.
    """
    if not isinstance(p, Params):
        raise ValueError(f"params must be an eeipu_jax.config.Params, got {type(p).__name__}")
    floats = {}
    for name in PARAM_FIELDS:
        floats[name] = checks.finite_number(getattr(p, name), f"Params.{name}")
    if not floats["epsilon"] > 0:
        raise ValueError(f"Params.epsilon must be > 0, got {p.epsilon!r}")
    if not floats["refine_lr"] > 0:
        raise ValueError(f"Params.refine_lr must be > 0, got {p.refine_lr!r}")
    if floats["refit_growth"] < 0:
        raise ValueError(f"Params.refit_growth must be >= 0, got {p.refit_growth!r}")
    for name in ("eta_start", "eta_end"):
        if floats[name] < 0:
            raise ValueError(f"Params.{name} must be >= 0, got {getattr(p, name)!r}")
    check_method_params(method, p.method)
    return p._replace(**floats)


def default_params(config: BOConfig | str, **overrides) -> Params:
    """The default :class:`Params` of ``config``'s method, with ``overrides``.

    Args:
        config: a :class:`BOConfig` or a method name.
        **overrides: :class:`Params` fields, ``cooling`` (a name of
            :data:`COOLING`), or the method's own params by name.

    Raises:
        ValueError: an unknown name or a bad value.
    """
    method = get_method(config if isinstance(config, str) else config.method)
    return replace_params(Params(method=method.params), method, **overrides)


def replace_params(params: Params, method: Method | str, **changes) -> Params:
    """``params`` with ``changes`` (validated on the host).

    Args:
        params: the current params.
        method: the method (or its name) they belong to.
        **changes: :class:`Params` fields, ``cooling`` (a name of
            :data:`COOLING`, setting ``eta_start`` and ``eta_end``), or the
            method's own params by name.

    Raises:
        ValueError: an unknown name or a bad value.
    """
    if isinstance(method, str):
        method = get_method(method)
    changes = dict(changes)
    if "cooling" in changes:
        name = changes.pop("cooling")
        if name not in COOLING:
            raise ValueError(f"cooling must be one of {sorted(COOLING)}, got {name!r}")
        changes.setdefault("eta_start", COOLING[name][0])
        changes.setdefault("eta_end", COOLING[name][1])
    own = isinstance(params.method, Mapping) and params.method
    method_changes = {k: changes.pop(k) for k in list(changes) if own and k in params.method and k not in Params._fields}
    unknown = sorted(set(changes) - set(Params._fields))
    if unknown:
        names = sorted(PARAM_FIELDS + ("method", "cooling") + tuple(params.method or ()))
        raise ValueError(f"unknown param(s) {unknown} for method {method.name!r}; params: {names}")
    if method_changes:
        changes["method"] = {**params.method, **method_changes}
    return check_params(params._replace(**changes), method)


def configure(space: SearchSpace, method: str = "eeipu", **settings) -> tuple[BOConfig, Params]:
    """``(config, params)`` for ``space`` and ``method``, each setting routed by name.

    Args:
        space: the search space.
        method: a registered method name (``_nomemo`` suffix allowed).
        **settings: :class:`BOConfig` fields, :class:`Params` fields,
            ``cooling`` (``"linear"``, ``"constant"``, ``"none"``) or the
            method's own params by name (e.g. ``lambda0`` for ``pbgi``).

    Raises:
        ValueError: an unknown name or a bad value, naming it.
    """
    static = {k: settings.pop(k) for k in list(settings) if k in CONFIG_FIELDS}
    config = BOConfig.from_space(space, method=method, **static)
    return config, default_params(config, **settings)


def setting_defaults(method: Method | str) -> dict[str, Any]:
    """Every setting :func:`configure` takes by name for ``method``, with its
    default value (its type is the setting's type): the :class:`BOConfig`
    fields but the space's and the method's, the float :class:`Params`
    fields, ``cooling`` and the method's own params."""
    if isinstance(method, str):
        method = get_method(method)
    out = {f.name: f.default for f in dataclasses.fields(BOConfig)
           if f.name in CONFIG_FIELDS and f.name not in ("method", "gp")}
    out.update({name: Params._field_defaults[name] for name in PARAM_FIELDS})
    out["cooling"] = "linear"
    if isinstance(method.params, Mapping):
        out.update({k: float(v) for k, v in method.params.items()})
    return out


def as_arrays(params: Params, dtype=jnp.float32) -> Params:
    """``params`` with every leaf a 0-d array of ``dtype`` (how the state keeps them)."""
    return jax.tree.map(lambda v: jnp.asarray(v, dtype), params)


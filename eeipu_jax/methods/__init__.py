"""Optimization methods as plug-ins: the :class:`Method` protocol and its registry.

A method is a frozen record of pure functions and defaults. The built-ins
(:mod:`eeipu_jax.methods.ei_family`, :mod:`~eeipu_jax.methods.pbgi`,
:mod:`~eeipu_jax.methods.lambo`, :mod:`~eeipu_jax.methods.msbo`) use exactly
the protocol a user's method uses, and registering one touches no core file
(``docs/extending.md`` walks through a user's method with its own state).

What a method declares:

* ``score(x, memo_depth, acq, params) -> scalar``: the acquisition of ONE
  candidate (the generic BO step vmaps it over a batch and refines the best
  by gradient steps, so it must be differentiable in ``x``). ``acq`` is the
  :class:`eeipu_jax.acquisition.AcqState` of this ask (fitted surrogates,
  incumbent, cost Monte Carlo samples, ``eta``, and ``extra``: whatever the
  method's ``prepare`` put there); ``params`` the method's own params.
* ``cost_model``: the cost surrogates the generic step fits: ``"none"``,
  ``"total"`` (one GP on ln of the summed stage costs) or ``"stages"`` (one
  GP per stage on ln c_k).
* ``memoize``: whether it proposes memoized-prefix candidates (and the
  drivers restore cached stages for it).
* ``params``: its own float settings (a pytree, e.g. ``{"beta": 0.2}``),
  carried in :class:`eeipu_jax.config.Params` as ``params.method``: traced
  inside ``jit``, so changing one between asks compiles nothing new, and
  they can be ``vmap``-ed. ``check(params)`` may validate them on the host.
* ``init(config, params) -> method_state``: its own state, a pytree of
  fixed shapes (independent of the number of trials), carried in the BO
  state as ``state.method_state`` (checkpointed and resumed with it).
* ``prepare(acq, state, config) -> (acq, method_state)``: runs once per ask
  after the surrogates are fitted and before any candidate is scored (e.g.
  compute a parameter from the method state and put it in ``acq.extra``).
* ``update(method_state, proposal, acq, state, config) -> method_state``:
  after each proposal (``state`` is the state the ask started from).
* ``observe(method_state, state, config, row) -> method_state``: once for
  each told trial (row ``row`` of ``state``), in the order told, before the
  next proposal. ``tell`` does not know the method (it takes no config), so
  the generic step calls it at the start of the next ``ask`` for every row
  told since the previous one.
* ``propose(key, state, config, pending) -> (Proposal, state)``: replaces
  the generic step (fit, score one candidate batch, refine) for a method
  that searches differently (LaMBO's bandit over a tree, MS_BO's stage by
  stage choice); it runs inside the jitted ``ask`` and may use every public
  function of :mod:`eeipu_jax.loop` and :mod:`eeipu_jax.surrogates`.
* ``surrogates(config) -> int``: how many GPs the state keeps
  hyperparameters and Cholesky factors for; by default the objective GP plus
  the cost GPs of ``cost_model``. A ``propose`` method that fits GPs of its
  own (MS_BO's K prefix GPs) declares their number here.

Every hook is optional except ``score`` (or ``propose``). Hooks read the
method's params as ``state.params.method`` and its state as
``state.method_state``; all of them are traced inside the jitted ``ask``, so
they must be pure and keep fixed shapes.

Any registered name with the suffix ``_nomemo`` resolves to the same method
with memoization off (:func:`get_method`): ``eeipu_nomemo`` is the paper's
Q = 0 ablation, scored exactly like EEIPU at memo depth 0 and never
proposing a cached prefix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["Method", "register", "get_method", "registered", "check_method_params", "NOMEMO_SUFFIX",
           "COST_MODELS"]

#: What the generic BO step fits for a method's cost model: nothing, one GP on
#: the summed cost, or one GP per stage.
COST_MODELS = ("none", "total", "stages")

#: A method name with this suffix is the registered method with memoization off.
NOMEMO_SUFFIX = "_nomemo"


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered optimization method (see the module docstring for each hook).

    Attributes:
        name: registry key (lower case).
        score: ``score(x, memo_depth, acq, params) -> scalar``.
        cost_model: ``"none"``, ``"total"`` or ``"stages"``.
        memoize: proposes memoized-prefix candidates.
        params: default params of the method (a pytree of floats; ``None``:
            none).
        description: one line for ``--help`` and tables.
        init: ``init(config, params) -> method_state`` (``None``: no state).
        prepare: ``prepare(acq, state, config) -> (acq, method_state)``.
        update: ``update(method_state, proposal, acq, state, config) -> method_state``.
        observe: ``observe(method_state, state, config, row) -> method_state``.
        propose: ``propose(key, state, config, pending) -> (proposal, state)``.
        surrogates: ``surrogates(config) -> int``.
        check: ``check(params)`` raising ``ValueError`` on bad params (host side).
    """

    name: str
    score: Callable | None = None
    cost_model: str = "none"
    memoize: bool = False
    params: Any = None
    description: str = ""
    init: Callable | None = None
    prepare: Callable | None = None
    update: Callable | None = None
    observe: Callable | None = None
    propose: Callable | None = None
    surrogates: Callable | None = None
    check: Callable | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a method needs a non-empty string name, got {self.name!r}")
        if self.cost_model not in COST_MODELS:
            raise ValueError(f"Method {self.name!r}: cost_model must be one of {COST_MODELS}, got {self.cost_model!r}")
        if self.score is None and self.propose is None:
            raise ValueError(f"Method {self.name!r}: give a score (or a propose replacing the generic step)")
        for hook in ("score", "init", "prepare", "update", "observe", "propose", "surrogates", "check"):
            value = getattr(self, hook)
            if value is not None and not callable(value):
                raise ValueError(f"Method {self.name!r}: {hook} must be callable or None, got {value!r}")
        check_method_params(self, self.params)

    def n_cost_models(self, n_stages: int) -> int:
        """Cost GPs the generic step fits: 0, 1 (total) or ``n_stages``."""
        return {"none": 0, "total": 1, "stages": n_stages}[self.cost_model]

    def n_surrogates(self, config) -> int:
        """GPs whose hyperparameters and factors the state keeps."""
        if self.surrogates is not None:
            n = self.surrogates(config)
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"Method {self.name!r}: surrogates(config) must be a positive int, got {n!r}")
            return int(n)
        return 1 + self.n_cost_models(config.n_stages)


def check_method_params(method: Method, params) -> Any:
    """``params`` if it is a valid params pytree for ``method`` (host side).

    Every leaf must be a finite real number (Python, NumPy or a 0-d array);
    the structure must be the method's default structure; then the method's
    own ``check`` runs.

    Raises:
        ValueError: naming the method and what is wrong.
    """
    leaves, tree = jax.tree.flatten(params)
    for leaf in leaves:
        if isinstance(leaf, (bool, np.bool_)) or np.ndim(leaf) != 0 or np.asarray(leaf).dtype.kind not in "iuf":
            raise ValueError(f"method {method.name!r}: params must be a pytree of real numbers, got {params!r}")
        if not math.isfinite(float(leaf)):
            raise ValueError(f"method {method.name!r}: params must be finite, got {params!r}")
    expected = jax.tree.structure(method.params)
    if tree != expected:
        raise ValueError(
            f"method {method.name!r}: params must have the structure of its defaults {method.params!r}, got {params!r}"
        )
    if method.check is not None:
        method.check(params)
    return params


_REGISTRY: dict[str, Method] = {}


def register(method: Method, *, overwrite: bool = False) -> Method:
    """Add ``method`` to the registry under ``method.name`` (lower case).

    Registering the same definition again (a module imported anew, e.g.
    reloaded in a notebook: the same name, and a ``score``/``propose`` of the
    same module and qualified name) replaces the entry.

    Args:
        method: the method.
        overwrite: replace a method already registered under that name.

    Returns:
        ``method`` (so ``register`` can wrap a definition).

    Raises:
        ValueError: the name is taken by another definition (and ``overwrite``
            is false) or ends in the reserved ``_nomemo`` suffix.
    """
    if not isinstance(method, Method):
        raise ValueError(f"register takes a Method, got {type(method).__name__}")
    key = method.name.lower()
    if key.endswith(NOMEMO_SUFFIX):
        raise ValueError(f"method names ending in {NOMEMO_SUFFIX!r} are reserved (memoization off), got {key!r}")
    if key in _REGISTRY and not overwrite and _origin(_REGISTRY[key]) != _origin(method):
        raise ValueError(f"method {method.name!r} is already registered (by {_origin(_REGISTRY[key])[0]})")
    _REGISTRY[key] = dataclasses.replace(method, name=key)
    return _REGISTRY[key]


def _origin(method: Method) -> tuple[str, str]:
    """Where a method's search is defined: ``(module, qualified name)``."""
    fn = method.propose if method.propose is not None else method.score
    return getattr(fn, "__module__", "?"), getattr(fn, "__qualname__", repr(fn))


def registered() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """Look a method up by (case-insensitive) name, with a clear error.

    ``<name>_nomemo`` is the registered ``<name>`` with ``memoize=False``
    (same acquisition, cost model and search; only the memoized-prefix
    candidates are left out), named ``<name>_nomemo``.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: no such method.
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string, got {name!r}")
    key = name.lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    base = key.removesuffix(NOMEMO_SUFFIX)
    if base != key and base in _REGISTRY:
        m = _REGISTRY[base]
        return dataclasses.replace(m, name=key, memoize=False,
                                   description=f"{m.description}, memoization off" if m.memoize else m.description)
    raise ValueError(
        f"unknown method {name!r}; registered: {registered()} "
        f"(add {NOMEMO_SUFFIX!r} to any of them to turn memoization off)"
    )

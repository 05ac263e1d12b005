"""Search spaces of multi-stage pipelines and their mapping to the unit cube.

A pipeline's hyperparameters are grouped by stage: stage ``k`` owns an ordered
list of parameters and the full candidate is the concatenation of all stages'
parameters, stage by stage. The optimizer works in the unit cube ``[0, 1]^d``
(one column per parameter); this module owns the mapping between that cube and
the raw values a pipeline consumes, and the bookkeeping of which column
belongs to which stage (needed for memoized prefixes: a prefix of depth ``j``
is the set of columns of stages ``0 .. j-1``).

Column encodings:

* ``Float(low, high)``: ``raw = low + u * (high - low)``.
* ``Float(low, high, log=True)``: ``raw = exp(log low + u * (log high - log low))``.
* ``Int(low, high)`` (inclusive bounds): ``high - low + 1`` equal-width bins of
  the unit interval, one per integer, so every integer (both bounds included)
  gets the same share of the cube. ``snap`` moves ``u`` to the bin centre.
* ``Categorical(choices)``: ``len(choices)`` equal bins of one column. One
  column per parameter (rather than one-hot) keeps the dimension of the space
  equal to the number of parameters; the price is an arbitrary order of the
  choices, which the GP's lengthscale on that column absorbs.

Everything numeric here has a NumPy path (for the drivers: dicts of raw values)
and a JAX path (``from_unit_array`` / ``snap``) that is traceable, so synthetic
pipelines can be evaluated inside ``jit``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import jax.numpy as jnp
import numpy as np

from eeipu_jax import checks

__all__ = [
    "Float",
    "Int",
    "Categorical",
    "Param",
    "StageSpace",
    "SearchSpace",
    "SpaceError",
]


class SpaceError(ValueError):
    """Raised for an invalid search-space definition or an invalid value."""


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise SpaceError(f"{what} name must be a non-empty string, got {name!r}")
    if "__" in name:
        raise SpaceError(
            f"{what} name {name!r} must not contain '__' (reserved for '<stage>__<param>' keys)"
        )


@dataclasses.dataclass(frozen=True)
class Float:
    """A real-valued parameter in ``[low, high]``, optionally on a log scale."""

    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        _check_name(self.name, "parameter")
        # Stored as Python floats, so the space hashes, prints and serializes plainly.
        for field in ("low", "high"):
            value = checks.finite_number(getattr(self, field), f"parameter {self.name!r}: {field}", SpaceError)
            object.__setattr__(self, field, value)
        if not self.low < self.high:
            raise SpaceError(
                f"parameter {self.name!r}: low ({self.low}) must be smaller than high ({self.high})"
            )
        if self.log and self.low <= 0:
            raise SpaceError(f"parameter {self.name!r}: log scale needs low > 0, got low={self.low}")

    # NumPy/JAX shared formulas (xp is numpy or jax.numpy).
    def _from_unit(self, u, xp):
        u = xp.clip(u, 0.0, 1.0)
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            return xp.clip(xp.exp(lo + u * (hi - lo)), self.low, self.high)
        return self.low + u * (self.high - self.low)

    def _to_unit(self, raw, xp):
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            return (xp.log(raw) - lo) / (hi - lo)
        return (raw - self.low) / (self.high - self.low)

    def _snap(self, u, xp):
        return xp.clip(u, 0.0, 1.0)

    def validate(self, value: Any) -> float:
        v = checks.number(value, f"parameter {self.name!r}: value", SpaceError)
        if not (self.low <= v <= self.high):
            raise SpaceError(f"parameter {self.name!r}: {v} is outside [{self.low}, {self.high}]")
        return v

    def decode(self, column_value: float) -> float:
        return float(column_value)


@dataclasses.dataclass(frozen=True)
class Int:
    """An integer parameter in ``[low, high]`` (both bounds inclusive)."""

    name: str
    low: int
    high: int

    def __post_init__(self):
        _check_name(self.name, "parameter")
        for field in ("low", "high"):
            value = checks.integer(getattr(self, field), f"parameter {self.name!r}: {field}", SpaceError)
            object.__setattr__(self, field, value)
        if not self.low < self.high:
            raise SpaceError(
                f"parameter {self.name!r}: low ({self.low}) must be smaller than high ({self.high})"
            )

    @property
    def n_values(self) -> int:
        return int(self.high - self.low + 1)

    def _from_unit(self, u, xp):
        idx = xp.clip(xp.floor(xp.clip(u, 0.0, 1.0) * self.n_values), 0, self.n_values - 1)
        return self.low + idx

    def _to_unit(self, raw, xp):
        return (raw - self.low + 0.5) / self.n_values

    def _snap(self, u, xp):
        return self._to_unit(self._from_unit(u, xp), xp)

    def validate(self, value: Any) -> int:
        v = checks.number(value, f"parameter {self.name!r}: value (an integer)", SpaceError)
        if not math.isfinite(v) or v != round(v):
            raise SpaceError(f"parameter {self.name!r}: expected an integer, got {value!r}")
        v = int(round(v))
        if not (self.low <= v <= self.high):
            raise SpaceError(f"parameter {self.name!r}: {v} is outside [{self.low}, {self.high}]")
        return v

    def decode(self, column_value: float) -> int:
        return int(round(float(column_value)))


@dataclasses.dataclass(frozen=True)
class Categorical:
    """A parameter taking one of a fixed tuple of (hashable) choices."""

    name: str
    choices: tuple

    def __post_init__(self):
        _check_name(self.name, "parameter")
        if isinstance(self.choices, (str, bytes)) or not isinstance(self.choices, Sequence):
            raise SpaceError(f"parameter {self.name!r}: choices must be a sequence, got {self.choices!r}")
        object.__setattr__(self, "choices", tuple(self.choices))
        if len(self.choices) < 2:
            raise SpaceError(f"parameter {self.name!r}: needs at least 2 choices, got {len(self.choices)}")
        for c in self.choices:
            # A choice must equal itself (NaN does not): values are looked up
            # with ``==`` when a configuration is mapped to the cube.
            try:
                same = c == c
                same = bool(same)
            except Exception:
                same = False
            if not same:
                raise SpaceError(
                    f"parameter {self.name!r}: choice {c!r} is not equal to itself (e.g. NaN) and could "
                    "never be looked up; use a hashable scalar such as a string or None"
                )
            try:
                hash(c)
            except TypeError:
                raise SpaceError(f"parameter {self.name!r}: choice {c!r} is not hashable") from None
        if len(set(self.choices)) != len(self.choices):
            raise SpaceError(f"parameter {self.name!r}: duplicate choices in {self.choices!r}")

    @property
    def n_values(self) -> int:
        return len(self.choices)

    def _from_unit(self, u, xp):
        # The raw column value of a categorical is its index (a float in JAX).
        return xp.clip(xp.floor(xp.clip(u, 0.0, 1.0) * self.n_values), 0, self.n_values - 1)

    def _to_unit(self, raw, xp):
        return (raw + 0.5) / self.n_values

    def _snap(self, u, xp):
        return self._to_unit(self._from_unit(u, xp), xp)

    def validate(self, value: Any) -> int:
        try:
            return self.choices.index(value)
        except ValueError:
            raise SpaceError(
                f"parameter {self.name!r}: {value!r} is not one of {list(self.choices)!r}"
            ) from None

    def decode(self, column_value: float) -> Any:
        return self.choices[int(round(float(column_value)))]


Param = Union[Float, Int, Categorical]


@dataclasses.dataclass(frozen=True)
class StageSpace:
    """The hyperparameters of one pipeline stage."""

    name: str
    params: tuple

    def __post_init__(self):
        _check_name(self.name, "stage")
        object.__setattr__(self, "params", tuple(self.params))
        if not self.params:
            raise SpaceError(f"stage {self.name!r} has no parameters")
        seen = set()
        for p in self.params:
            if not isinstance(p, (Float, Int, Categorical)):
                raise SpaceError(f"stage {self.name!r}: {p!r} is not a Float, Int or Categorical")
            if p.name in seen:
                raise SpaceError(f"stage {self.name!r}: duplicate parameter name {p.name!r}")
            seen.add(p.name)


class SearchSpace:
    """Per-stage hyperparameters of a K-stage pipeline, mapped to ``[0, 1]^d``.

    Args:
        stages: the stages in pipeline order, each a :class:`StageSpace` (or a
            ``(name, [params])`` pair).

    Raw configurations are dicts ``{stage_name: {param_name: value}}``; flat
    dicts keyed ``"<stage>__<param>"`` are accepted too.

    Example:
        >>> space = SearchSpace([
        ...     StageSpace("prep", [Int("batch_size", 8, 64)]),
        ...     StageSpace("train", [Float("lr", 1e-4, 1e-1, log=True)]),
        ... ])
        >>> space.dim, space.n_stages
        (2, 2)
    """

    def __init__(self, stages: Sequence[StageSpace | tuple]):
        stages = [s if isinstance(s, StageSpace) else StageSpace(*s) for s in stages]
        if not stages:
            raise SpaceError("a search space needs at least one stage")
        names = [s.name for s in stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpaceError(f"duplicate stage name(s): {dup}")
        self.stages: tuple[StageSpace, ...] = tuple(stages)
        self.params: tuple[Param, ...] = tuple(p for s in stages for p in s.params)
        self.stage_of_column: tuple[int, ...] = tuple(
            k for k, s in enumerate(stages) for _ in s.params
        )
        self.keys: tuple[str, ...] = tuple(f"{s.name}__{p.name}" for s in stages for p in s.params)
        offsets = np.cumsum([0] + [len(s.params) for s in stages])
        self.stage_slices: tuple[slice, ...] = tuple(
            slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])
        )

    # ------------------------------------------------------------------ shape
    @property
    def dim(self) -> int:
        return len(self.params)

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @property
    def bins(self) -> tuple[int, ...]:
        """Per column: 0 for a continuous column, else the number of equal bins
        (integers, categoricals) that proposals are snapped to."""
        return tuple(p.n_values if isinstance(p, (Int, Categorical)) else 0 for p in self.params)

    def prefix_mask(self, depth: int) -> np.ndarray:
        """Boolean ``(d,)`` mask of the columns of stages ``0 .. depth-1``."""
        if not 0 <= depth <= self.n_stages:
            raise SpaceError(f"prefix depth must be in [0, {self.n_stages}], got {depth}")
        return np.asarray(self.stage_of_column) < depth

    def prefix_masks(self) -> np.ndarray:
        """``(K + 1, d)`` masks: row ``j`` is :meth:`prefix_mask` ``(j)``."""
        return np.stack([self.prefix_mask(j) for j in range(self.n_stages + 1)])

    def __repr__(self) -> str:
        body = ", ".join(f"{s.name}[{', '.join(p.name for p in s.params)}]" for s in self.stages)
        return f"SearchSpace({body})"

    @property
    def fingerprint(self) -> int:
        """A positive int32 identifying this space: stage and parameter names, kinds, bounds, log
        flags and choices (hashed with SHA-256, so it is the same in every process).

        :meth:`eeipu_jax.config.BOConfig.from_space` records it (``BOConfig.space_id``) and the
        state keeps it, so ``ask`` refuses a state built for another space of the same shape.
        """
        def choice(c: Any) -> str:
            # repr of plain values; an object's repr may hold its address, so only its type is used
            plain = c is None or isinstance(c, (bool, int, float, str, bytes))
            return repr(c) if plain else f"<{type(c).__module__}.{type(c).__qualname__}>"

        def param(p: Param) -> str:
            if isinstance(p, Categorical):
                return f"Categorical({p.name!r}, [{', '.join(map(choice, p.choices))}])"
            return repr(p)  # a frozen dataclass of names and plain numbers

        text = "|".join(f"{s.name!r}:" + ";".join(map(param, s.params)) for s in self.stages)
        return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") % (2**31 - 1) + 1

    # ------------------------------------------------------- unit <-> column
    def from_unit_array(self, u):
        """Unit-cube rows -> raw numeric columns (JAX-traceable).

        Ints come back as whole floats, categoricals as their index. Works on
        ``(..., d)`` arrays of NumPy or JAX type.
        """
        xp = np if isinstance(u, np.ndarray) else jnp
        cols = [p._from_unit(u[..., i], xp) for i, p in enumerate(self.params)]
        return xp.stack(cols, axis=-1)

    def to_unit_array(self, raw):
        """Raw numeric columns -> unit cube (inverse of :meth:`from_unit_array`)."""
        xp = np if isinstance(raw, np.ndarray) else jnp
        cols = [p._to_unit(raw[..., i], xp) for i, p in enumerate(self.params)]
        return xp.stack(cols, axis=-1)

    def snap(self, u):
        """Move unit-cube rows to the representable point (bin centres of
        ints/categoricals, clipping of floats). JAX-traceable."""
        xp = np if isinstance(u, np.ndarray) else jnp
        cols = [p._snap(u[..., i], xp) for i, p in enumerate(self.params)]
        return xp.stack(cols, axis=-1)

    # ------------------------------------------------------- dicts <-> unit
    def _flatten(self, config: Mapping) -> dict[str, Any]:
        if not isinstance(config, Mapping):
            raise SpaceError(f"a configuration must be a mapping, got {type(config).__name__}")
        flat: dict[str, Any] = {}
        stage_names = set(self.stage_names)
        for key, value in config.items():
            if isinstance(value, Mapping):
                if key not in stage_names:
                    raise SpaceError(f"unknown stage {key!r}; stages are {list(self.stage_names)}")
                for pk, pv in value.items():
                    flat[f"{key}__{pk}"] = pv
            else:
                flat[key] = value
        unknown = sorted(set(flat) - set(self.keys))
        if unknown:
            raise SpaceError(f"unknown parameter(s) {unknown}; known are {list(self.keys)}")
        missing = [k for k in self.keys if k not in flat]
        if missing:
            raise SpaceError(f"missing parameter(s) {missing}")
        return flat

    def to_unit(self, config: Mapping) -> np.ndarray:
        """A raw configuration (nested or flat dict) -> a ``(d,)`` unit-cube row."""
        flat = self._flatten(config)
        cols = np.array(
            [p.validate(flat[k]) for k, p in zip(self.keys, self.params)], dtype=np.float64
        )
        return np.clip(self.to_unit_array(cols), 0.0, 1.0)

    def from_unit(self, u) -> dict[str, dict[str, Any]]:
        """A ``(d,)`` unit-cube row -> nested raw configuration ``{stage: {param: value}}``."""
        u = np.asarray(u, dtype=np.float64)
        if u.shape != (self.dim,):
            raise SpaceError(f"expected a unit-cube row of shape ({self.dim},), got {u.shape}")
        if not np.all(np.isfinite(u)):
            raise SpaceError(f"unit-cube row has non-finite values: {u}")
        cols = self.from_unit_array(u)
        out: dict[str, dict[str, Any]] = {s.name: {} for s in self.stages}
        for k, p, c in zip(self.stage_of_column, self.params, cols):
            out[self.stages[k].name][p.name] = p.decode(c)
        return out

    def stage_config(self, config: Mapping, stage: int) -> dict[str, Any]:
        """The raw parameters of one stage from a nested configuration."""
        return dict(config[self.stages[stage].name])

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` uniform unit-cube rows, snapped (NumPy; for drivers)."""
        return self.snap(rng.uniform(size=(n, self.dim)))

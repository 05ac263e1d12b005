"""Host-side checks of user-supplied numbers, shared by the modules that take them
(space bounds, GP and BO settings, ``tell``'s arguments).

Every check accepts Python numbers, NumPy scalars and 0-d (NumPy or JAX)
arrays, returns a plain Python ``float``/``int`` (so configs stay hashable and
serialize to JSON), and raises ``error`` (``ValueError`` by default) with a
message that names the argument and shows the value. Nothing here is traced.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["number", "finite_number", "integer", "instance"]


def number(value: Any, name: str, error: type[Exception] = ValueError) -> float:
    """A real scalar as a Python float (may be NaN or infinite).

    Bools, strings, ``None`` and arrays that are not 0-d numbers are refused.
    """
    if isinstance(value, (bool, np.bool_)):
        raise error(f"{name} must be a number, got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        a = np.asarray(value)
        if a.ndim == 0 and a.dtype.kind in "iuf":
            return float(a)
        raise error(f"{name} must be a scalar number, got an array of shape {a.shape} and dtype {a.dtype}")
    raise error(f"{name} must be a number, got {value!r}")


def finite_number(value: Any, name: str, error: type[Exception] = ValueError, *,
                  greater_than: float | None = None, at_least: float | None = None) -> float:
    """A finite real scalar as a Python float, optionally ``> greater_than``
    or ``>= at_least``."""
    v = number(value, name, error)
    if not math.isfinite(v):
        raise error(f"{name} must be a finite number, got {value!r}")
    if greater_than is not None and not v > greater_than:
        raise error(f"{name} must be a finite number > {greater_than:g}, got {value!r}")
    if at_least is not None and not v >= at_least:
        raise error(f"{name} must be a finite number >= {at_least:g}, got {value!r}")
    return v


def integer(value: Any, name: str, error: type[Exception] = ValueError) -> int:
    """An integer scalar (Python/NumPy integer or 0-d integer array) as a Python int."""
    if isinstance(value, (bool, np.bool_)):
        raise error(f"{name} must be an integer, got {value!r}")
    if hasattr(value, "shape") and hasattr(value, "dtype") and np.ndim(value) == 0:
        a = np.asarray(value)
        if a.dtype.kind in "iu":
            return int(a)
    if not isinstance(value, (int, np.integer)):
        raise error(f"{name} must be an integer, got {value!r}")
    return int(value)


def instance(value: Any, cls: type, name: str, made_by: str = "", error: type[Exception] = ValueError) -> Any:
    """``value`` if it is a ``cls``: a dict or ``None`` passed by mistake fails here, naming the
    argument (``made_by``: where one comes from), not as an ``AttributeError`` deep inside."""
    if not isinstance(value, cls):
        where = f" ({made_by})" if made_by else ""
        raise error(f"{name} must be a {cls.__name__}{where}, got {type(value).__name__}")
    return value

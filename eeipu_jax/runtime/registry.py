"""Pipelines by name: the registry that studies and command lines look up.

This module owns the mechanism only; it registers nothing itself (the
repository's concrete pipelines are registered by ``pipelines/registry.py``,
a user's by their own code). A registry entry maps a name to a zero-argument
factory returning a :class:`~eeipu_jax.runtime.Pipeline`, either the callable
itself or its import path ``"module:attribute"`` (imported only when the
pipeline is requested, so registering a pipeline with heavy dependencies
costs nothing elsewhere). Registering a pipeline is one line::

    register_pipeline("rff", "mypackage.rff:make_pipeline")

:func:`get_pipeline` also accepts any ``"module:attribute"`` path directly (a
``Pipeline`` or a zero-argument factory), so a pipeline defined in a user's
own module runs without being registered; :func:`import_object` resolves such
paths (the stage cache also uses it to rebuild NamedTuples).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable

from eeipu_jax.runtime.pipeline import Pipeline

__all__ = ["PIPELINES", "register_pipeline", "get_pipeline", "available_pipelines", "import_object", "target_of"]

PIPELINES: dict[str, Callable[[], Pipeline] | str] = {}


def register_pipeline(name: str, factory: Callable[[], Pipeline] | str, *, overwrite: bool = False) -> None:
    """Register a pipeline factory (or its ``"module:attribute"`` path) under ``name``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"pipeline name must be a non-empty string without ':', got {name!r}")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise TypeError(f"pipeline {name!r}: factory must be callable or 'module:attribute', got {factory!r}")
    if name in PIPELINES and not overwrite:
        raise ValueError(f"pipeline {name!r} is already registered")
    PIPELINES[name] = factory


def available_pipelines() -> list[str]:
    """The registered names, sorted."""
    return sorted(PIPELINES)


def target_of(name: str) -> str | None:
    """The ``"module:attribute"`` path that ``name`` resolves through, if it has one.

    A registered name maps to its registered path (``None`` if it was
    registered as a callable); a ``"module:attribute"`` path is its own
    target. A study records it, so a run can be reopened in a process where
    the name was never registered.
    """
    if name in PIPELINES:
        target = PIPELINES[name]
        return target if isinstance(target, str) else None
    return name if isinstance(name, str) and ":" in name else None


def import_object(path: str):
    """The object at ``"module:attribute"`` (dots in ``attribute`` walk nested names).

    Raises:
        ValueError: the module or attribute does not exist, or importing the
            module raised (its error is named in the message and chained).
    """
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"expected 'module:attribute', got {path!r}")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"cannot import module {module!r} (from {path!r}): {e}") from e
    except (Exception, SystemExit) as e:  # the module's own code failed (or exited): say so, no traceback
        raise ValueError(f"importing module {module!r} (from {path!r}) raised {type(e).__name__}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module!r} has no attribute {attr!r} (from {path!r})") from None
    return obj


def _is_factory(obj) -> bool:
    """A Python function (or bound method, ``functools.partial``, decorated function) callable
    without arguments: what a ``"module:attribute"`` path may name besides a Pipeline. Builtins
    (``sys:exit``, ``os:abort``), classes and other callables are not called."""
    target = obj.func if isinstance(obj, functools.partial) else inspect.unwrap(obj)
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        return False
    try:
        inspect.signature(obj).bind()
    except (TypeError, ValueError):
        return False
    return True


def get_pipeline(name: str) -> Pipeline:
    """The pipeline registered as ``name``, or found at ``"module:attribute"``.

    A path must name a :class:`~eeipu_jax.runtime.Pipeline` or a Python
    function that takes no argument and returns one (its result is checked);
    other objects, builtins such as ``sys:exit`` included, are refused
    without being called. A registered callable is called as registered.

    Raises:
        ValueError: unknown name, unimportable path, a factory that raised
            or exited (its error is named in the message and chained), or an
            object that is not a pipeline (the message lists the registered
            names).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"pipeline must be a non-empty name, got {name!r}")
    if name in PIPELINES:
        target = PIPELINES[name]
    elif ":" in name:
        target = name
    else:
        raise ValueError(f"unknown pipeline {name!r}; registered: {available_pipelines()} (or pass 'module:attribute')")
    obj = import_object(target) if isinstance(target, str) else target
    if not isinstance(obj, Pipeline):
        if not (_is_factory(obj) if isinstance(target, str) else callable(obj)):
            what = f"the {type(obj).__name__} {obj!r}"[:120] if callable(obj) else f"a {type(obj).__name__}"
            raise ValueError(f"pipeline {name!r} resolved to {what}, not a Pipeline or a function without "
                             "arguments returning one")
        try:
            obj = obj()
        except (Exception, SystemExit) as e:  # a failing factory (e.g. a space it refuses) is a bad --pipeline
            raise ValueError(f"pipeline {name!r}: building it raised {type(e).__name__}: {e}") from e
        if not isinstance(obj, Pipeline):
            raise ValueError(f"pipeline {name!r}: its factory returned {str(obj)[:80]!r} "
                             f"({type(obj).__name__}), not a Pipeline")
    return obj

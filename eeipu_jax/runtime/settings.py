"""Host-side checks of a study's settings, before anything is written or computed.

A wrong setting raises :class:`ConfigError` with a message that names the
setting and what was expected; command lines print it on one line and exit
with status 2. This module owns the checks shared by the study
(:mod:`eeipu_jax.runtime.study`), its command line and the experiment
scripts: number types, writable directories, and ``BOConfig`` fields given by
name (``--bo NAME=VALUE`` or a config's ``bo`` dict).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ConfigError", "StorageError", "INT32_MAX", "is_int", "is_real", "check_writable_dir", "coerce_bo_option"]

#: Integer settings enter jitted code as int32.
INT32_MAX = 2**31 - 1


class ConfigError(ValueError):
    """A wrong setting (config file, ``--set`` override or option), found before any compute."""


class StorageError(OSError):
    """A run directory or its files could not be written: a full disk, a quota, a failing file system.

    Raised with one line that names the file and the cause (``errno`` is the
    cause's, when known). Whatever was finished before it stays on disk (the
    trials recorded, the stage cache); a study continues from there once the
    cause is fixed (``Study.load(...).optimize()``, ``eeipu tune --resume``).
    """

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def is_int(v: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_real(v: Any) -> bool:
    """A real number (Python or NumPy int or float), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_writable_dir(path: Any, what: str, error: type[Exception] = ConfigError) -> str:
    """``path`` made absolute, after checking it is (or can be made) a writable directory.

    Leaves nothing behind: the check creates and removes one empty directory
    in ``path``, or in its nearest existing ancestor if ``path`` does not exist
    yet (the caller creates it once every setting is checked).

    Args:
        path: a ``str`` or ``os.PathLike`` (``pathlib.Path``).
        what: how messages name the setting.
        error: the exception raised.

    Raises:
        error: not a path, an existing non-directory on the way, or not
            writable (the message starts with ``what``).
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path.strip():
        raise error(f"{what}: expected a directory path, got {path!r}")
    path = os.path.abspath(path)
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise error(f"{what} {path!r}: {base!r} exists and is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".eeipu-write-test-"))
    except OSError as e:
        raise error(f"{what} {path!r} is not writable: {e}") from None
    return path


def coerce_bo_option(name: str, value: Any, reserved: Sequence[str] = (), where: str = "bo.",
                     method: str = "eeipu") -> Any:
    """A BO setting's value (text or a config's value) as the setting's type.

    The settings are those :func:`eeipu_jax.config.configure` takes for
    ``method``: :class:`~eeipu_jax.loop.BOConfig` fields,
    :class:`~eeipu_jax.config.Params` floats, ``cooling`` and the method's
    own params (:func:`eeipu_jax.config.setting_defaults`).

    Ints must fit int32, floats must be finite, bools and strings must be
    what they say; the core checks ranges when the config is built, except
    ``top_q = 0``, refused here with a pointer to the ``_nomemo`` methods.
    ``where`` starts the messages (``"--bo "`` on a command line, ``"bo."``
    in a config).

    Raises:
        ConfigError: not a settable field (``reserved`` ones included), or a
            value of the wrong type.
    """
    from eeipu_jax.config import setting_defaults

    defaults = setting_defaults(method)
    if name not in defaults or name in reserved:
        allowed = sorted(set(defaults) - set(reserved))
        raise ConfigError(f"{where}{name}: not a setting of method {method!r}; choose from {allowed}")
    default = defaults[name]
    kind = type(default).__name__
    what = {"float": "a finite float", "int": f"an int of at most {INT32_MAX}"}.get(kind, f"a {kind}")
    if isinstance(value, str) and not isinstance(default, str):
        text = value.strip()
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1")
            elif isinstance(default, int):
                value = int(text)
            elif isinstance(default, float):
                value = float(text)
        except ValueError:
            raise ConfigError(f"{where}{name}={value}: expected {what}") from None
    ok = (
        isinstance(value, (bool, np.bool_)) if isinstance(default, bool)
        else is_int(value) and abs(value) <= INT32_MAX if isinstance(default, int)
        else is_real(value) and math.isfinite(value) if isinstance(default, float)
        else isinstance(value, str) if isinstance(default, str)
        else True
    )
    if not ok:
        raise ConfigError(f"{where}{name}={value!r}: expected {what}")
    if name == "top_q" and value < 1:
        # top_q counts the observations whose prefixes are candidates; "none"
        # is a method of its own, so that results files name it.
        raise ConfigError(
            f"{where}top_q={value!r}: must be at least 1; to turn memoized prefixes off, use the "
            "method's '_nomemo' variant (e.g. method 'eeipu_nomemo', the paper's Q = 0 ablation)"
        )
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, float):
        return float(value)
    return int(value) if is_int(value) else value

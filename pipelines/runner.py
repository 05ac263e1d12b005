"""Deprecated location: moved to :mod:`eeipu_jax.runtime.runner` (this module only re-exports it)."""

import warnings

from eeipu_jax.runtime.runner import Runner, TrialResult, StageTimeout, nested_params, MAX_SEED, check_seed  # noqa: F401

__all__ = ['Runner', 'TrialResult', 'StageTimeout', 'nested_params', 'MAX_SEED', 'check_seed']

warnings.warn(
    "pipelines.runner moved to eeipu_jax.runtime.runner; import from there",
    DeprecationWarning,
    stacklevel=2,
)

"""Deprecated location: moved to :mod:`eeipu_jax.runtime.pipeline` (this module only re-exports it)."""

import warnings

from eeipu_jax.runtime.pipeline import Stage, Pipeline, stage_key, objective_of  # noqa: F401

__all__ = ['Stage', 'Pipeline', 'stage_key', 'objective_of']

warnings.warn(
    "pipelines.base moved to eeipu_jax.runtime.pipeline; import from there",
    DeprecationWarning,
    stacklevel=2,
)

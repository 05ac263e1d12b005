"""A tuning run of one pipeline from the command line: ``eeipu tune`` with this repository's pipelines.

Usage::

    python -m experiments.run --pipeline toy --method eeipu --budget 60 --seed 0 --out runs/toy
    python -m experiments.run --help

The options, resume, exit statuses and run directory are those of
:mod:`eeipu_jax.runtime.cli` over :class:`eeipu_jax.Study`; this module only
registers the repository's pipelines (:mod:`pipelines.registry`) and sets up
the CPU (:func:`eeipu_jax.cpu.pin_xla_threads`) first.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pipelines.registry  # noqa: F401  (registers toy, stacking, segmentation, language)
from eeipu_jax.runtime.cli import build_parser, tune

__all__ = ["main", "build_parser"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or resume) a tuning run; returns the exit status (2: a wrong setting, nothing written)."""
    from eeipu_jax.cpu import pin_xla_threads

    pin_xla_threads()  # before the first JAX computation of this process
    return tune(argv, prog="python -m experiments.run")


if __name__ == "__main__":
    sys.exit(main())

"""One entry point for the experiment scripts of a clone: ``python -m experiments.cli COMMAND``.

    python -m experiments.cli synthetic [...]   the synthetic comparison      (python -m experiments.synthetic)
    python -m experiments.cli real [...]        the real-pipeline comparison  (python -m experiments.real)
    python -m experiments.cli run [...]         a tuning run on a pipeline    (python -m experiments.run)

The installed ``eeipu`` command is the library's (:mod:`eeipu_jax.runtime.cli`:
``eeipu tune``, ``eeipu summary``); the experiments live in the repository and
run from its root. Figures are drawn by ``python -m paper_figures.synthetic``
and ``python -m paper_figures.real`` from a results folder.
"""

from __future__ import annotations

import sys

_COMMANDS = {
    "synthetic": ("experiments.synthetic", "the synthetic comparison (methods x pipelines x seeds)"),
    "real": ("experiments.real", "the real-pipeline comparison (stacking, segmentation, language)"),
    "run": ("experiments.run", "a crash-safe tuning run on a (real) pipeline with the stage cache"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
        lines = [f"  {name:<10} {desc}" for name, (_, desc) in _COMMANDS.items()]
        print("usage: python -m experiments.cli COMMAND [options]   (COMMAND --help for options)\n\ncommands:\n"
              + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    module = importlib.import_module(_COMMANDS[argv[0]][0])
    result = module.main(argv[1:])
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

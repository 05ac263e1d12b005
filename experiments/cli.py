"""The ``eeipu`` command: one entry point for the experiment scripts.

    eeipu synthetic [...]   the synthetic comparison      (python -m experiments.synthetic)
    eeipu real [...]        the real-pipeline comparison  (python -m experiments.real)
    eeipu run [...]         a tuning run on a pipeline    (python -m experiments.run)
    eeipu figures DIR       figures from a results folder (python -m paper_figures.synthetic)
"""

from __future__ import annotations

import sys

_COMMANDS = {
    "synthetic": ("experiments.synthetic", "the synthetic comparison (methods x pipelines x seeds)"),
    "real": ("experiments.real", "the real-pipeline comparison (stacking, segmentation, language)"),
    "run": ("experiments.run", "a crash-safe tuning run on a (real) pipeline with the stage cache"),
    "figures": ("paper_figures.synthetic", "draw figures and the summary table from a results folder"),
    "stage-regret": ("paper_figures.stage_regret", "per-stage regret of the best points of synthetic runs"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
        lines = [f"  {name:<10} {desc}" for name, (_, desc) in _COMMANDS.items()]
        print("usage: eeipu COMMAND [options]   (eeipu COMMAND --help for options)\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    module = importlib.import_module(_COMMANDS[argv[0]][0])
    result = module.main(argv[1:])
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

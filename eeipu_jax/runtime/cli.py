"""The ``eeipu`` command: tune a pipeline with a :class:`~eeipu_jax.runtime.study.Study`.

    eeipu tune --pipeline mypackage.rff:pipe --budget 600 --out runs/rff     # a new run
    eeipu tune --pipeline mypackage.rff:pipe --budget 600 --out runs/rff --resume
    eeipu summary runs/rff                                                   # a run's summary

``--pipeline module:attribute`` and ``--import module`` import from the
working directory first, as ``python -m`` does.

This module owns the command line over the study: its options (one per
:meth:`Study.create` setting), the exit statuses and the CPU set-up a script
opts in to (:func:`eeipu_jax.cpu.pin_xla_threads`). Every error is one line
on stderr, never a traceback:

* 0: done;
* 1: a file of the run could not be written (a full disk:
  :class:`~eeipu_jax.runtime.settings.StorageError`); the trials recorded
  before it are kept, ``--resume`` continues once there is space (a run that
  could not even be created leaves nothing behind);
* 2: a wrong setting (reported before anything is written), a run directory
  whose records are damaged (the file and line named), or a pipeline whose
  ``prepare()`` raised;
* 130: interrupted (Ctrl-C); ``--resume`` continues.

``eeipu summary`` only reads (no lock, nothing written), so it works on a run
another process is optimizing and on a read-only file system.

The repository's ``python -m experiments.run`` is this command with the
repository's pipelines registered.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence

from eeipu_jax import methods as methodlib
from eeipu_jax.runtime.cache import parse_bytes
from eeipu_jax.runtime.registry import available_pipelines
from eeipu_jax.runtime.settings import ConfigError, StorageError
from eeipu_jax.runtime.study import CACHE_WRITES, Study, StudySettings, check_optimize

__all__ = ["build_parser", "tune", "main", "default_jax_cache_dir"]


def _bo_option(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _resource(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        amount = float(value)
    except ValueError:
        amount = None
    if not sep or not name.strip() or amount is None:
        raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT (a custom Ray resource, e.g. TPU=4), got {text!r}")
    return name.strip(), amount


def _byte_size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def default_jax_cache_dir() -> str | None:
    """``$EEIPU_JAX_XLA_CACHE`` or ``~/.cache/eeipu_jax/xla``; ``None`` when that variable says ``off``."""
    from eeipu_jax.utils import default_cache_root

    env = os.environ.get("EEIPU_JAX_XLA_CACHE", "")
    if env.lower() in ("off", "0", "false"):
        return None
    return env or os.path.join(default_cache_root(), "xla")


def build_parser(prog: str = "eeipu tune") -> argparse.ArgumentParser:
    """The options of a tuning run."""
    methods = ", ".join(f"{m.name} ({m.description})" for m in map(methodlib.get_method, methodlib.registered()))
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Tune a multi-stage pipeline with memoization-aware, cost-aware Bayesian optimization. "
            "Each trial's stage outputs are cached (orbax) so that a candidate sharing a "
            "hyperparameter prefix with an earlier one restarts from the cached stage."
        ),
        epilog=(
            f"Registered pipelines: {', '.join(available_pipelines()) or 'none'} (or any 'module:attribute' "
            f"path to a Pipeline or a zero-argument factory). Methods: {methods}; add '_nomemo' to any "
            "name to turn memoization off (eeipu_nomemo: the paper's Q = 0 ablation). "
            "Results: <out>/trials.jsonl (one JSON line per trial), <out>/summary.json."
        ),
    )
    p = parser.add_argument
    p("--pipeline", required=True, help="registered pipeline name or module:attribute")
    p("--import", dest="imports", action="append", default=[], metavar="MODULE",
      help="import MODULE first, e.g. one that registers pipelines (repeatable)")
    p("--method", default="eeipu", help="optimization method (registry name; default: %(default)s)")
    p("--budget", type=float, required=True, help="budget in wall seconds of trials (restores, stages, cache writes)")
    p("--seed", type=int, default=0, help="seed of the optimizer and of the pipeline's stage PRNG keys, 0..4294967295 (default: %(default)s)")
    p("--out", required=True, help="run directory (trials.jsonl, checkpoints, config.json, summary.json)")
    p("--cache-dir", default=None, help="stage cache directory, shareable between runs (default: <out>/cache)")
    p("--cache-policy", default="top_q", choices=["top_q", "all"],
      help="top_q: keep exactly the prefixes the optimizer may propose (its BOConfig.top_q best per memo depth); "
           "all: keep every output (default: %(default)s)")
    p("--cache-max-bytes", type=_byte_size, default=None,
      help="size limit of the cache, e.g. 500MB or 2GiB; least recently used entries are evicted (default: none)")
    p("--cache-writes", default="auto", choices=list(CACHE_WRITES),
      help="auto: write stage outputs only for memoizing methods (the only ones that restore); "
           "always: also for baselines (e.g. to fill a shared cache); never (default: %(default)s)")
    p("--n-warmup", type=int, default=10,
      help="random initial trials before Bayesian optimization, at least 2 (default: %(default)s)")
    p("--stage-timeout", type=float, default=None,
      help="per-stage time limit in seconds; a stage over it fails the trial (charged, run continues; default: none)")
    p("--epsilon", type=float, default=0.1, help="price of a memoized stage in the acquisition (default: %(default)s)")
    p("--charge-optimizer", action="store_true",
      help="charge the optimizer's seconds (each trial's ask, and the tell before it) to the budget too; "
           "they are recorded either way (ask_seconds in trials.jsonl, optimizer_fraction in summary.json)")
    p("--bo", type=_bo_option, action="append", default=[], metavar="NAME=VALUE",
      help="set another BO setting (a BOConfig field, a float param or the method's own), e.g. --bo n_random=256 --bo refine_lr=0.1 (repeatable)")
    p("--max-trials", type=int, default=None,
      help="stop after this many trials in this invocation (counted per invocation, like Optuna's n_trials)")
    p("--total-trials", type=int, default=None,
      help="stop when the run holds this many trials in all, those of earlier invocations (--resume) included")
    p("--timeout", type=float, default=None,
      help="wall-clock seconds for this invocation: no trial starts after them, a stage still running is "
           "interrupted (its trial recorded as failed) and the run ends with its summary (default: none; "
           "--stage-timeout bounds each stage)")
    p("--workers", type=int, default=1,
      help="trials run at once, on Ray actors when more than 1 (pip install 'eeipu-jax[ray]'); 1: this "
           "process alone, without Ray (default: %(default)s)")
    p("--address", default=None,
      help="join the Ray cluster at this address (e.g. auto or HEAD_IP:6379); default: start a local Ray "
           "bound to localhost when --workers > 1")
    p("--worker-cpus", type=float, default=None,
      help="logical CPUs each parallel trial reserves (default: min(1, CPUs / workers) on a local Ray, so more "
           "workers than cores can run; 1 with --address)")
    p("--worker-gpus", type=float, default=None,
      help="GPUs each parallel trial reserves; 1 runs one trial per GPU (default: 0)")
    p("--worker-resources", type=_resource, action="append", default=[], metavar="NAME=AMOUNT",
      help="a custom Ray resource each parallel trial reserves, e.g. TPU=4 for four TPU chips (repeatable)")
    p("--placement-timeout", type=float, default=None,
      help="seconds to wait for Ray to place the workers before stopping with an error that names the "
           "resources asked for and those the cluster has (default: 120)")
    p("--jax-cache-dir", default=None,
      help="JAX persistent compilation cache directory (a resumed run skips recompiling); default "
           "$EEIPU_JAX_XLA_CACHE or ~/.cache/eeipu_jax/xla ('off' in that variable disables it)")
    p("--resume", action="store_true",
      help="continue the run in --out (same settings; finished trials are kept, the interrupted one rerun)")
    p("--no-progress", action="store_true", help="no progress bar")
    p("-v", "--verbose", action="store_true", help="log each trial")
    return parser


def tune(argv: Sequence[str] | None = None, prog: str = "eeipu tune") -> int:
    """Run (or resume) a tuning run from command-line options; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # importing orbax installs a root handler first
    )
    for module in args.imports:
        try:
            importlib.import_module(module)
        except Exception as e:
            print(f"error: --import {module}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    settings = StudySettings(
        pipeline=args.pipeline,
        method=args.method,
        budget=args.budget,
        seed=args.seed,
        out=args.out,
        cache_dir=args.cache_dir,
        cache_policy=args.cache_policy,
        cache_max_bytes=args.cache_max_bytes,
        cache_writes=args.cache_writes,
        n_warmup=args.n_warmup,
        stage_timeout=args.stage_timeout,
        epsilon=args.epsilon,
        charge_optimizer=args.charge_optimizer,
        bo_options=tuple(args.bo),
        jax_cache_dir=args.jax_cache_dir if args.jax_cache_dir is not None else default_jax_cache_dir(),
        cli=True,
    )
    try:
        resources = {k: v for k, v in (("num_cpus", args.worker_cpus), ("num_gpus", args.worker_gpus),
                                       *args.worker_resources) if v is not None} or None
        run = dict(workers=args.workers, address=args.address, resources=resources,
                   placement_timeout=args.placement_timeout, timeout=args.timeout)
        # every option is checked before Study.open creates --out and config.json, so a refused
        # command leaves nothing behind and the corrected one runs
        check_optimize(settings, args.max_trials, total_trials=args.total_trials, **run)
        study = Study.open(settings, "resume" if args.resume else "create")
        summary = study.optimize(args.max_trials, progress=not args.no_progress, total_trials=args.total_trials,
                                 **run)
    except (ConfigError, ImportError) as e:  # ImportError: --workers without the ray extra
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except StorageError as e:
        kept = os.path.exists(os.path.join(args.out, "config.json"))
        print(f"error: {' '.join(str(e).split())}" + (
            f"; finished trials are in {args.out}; continue with --resume once there is space" if kept else ""),
            file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; finished trials are in {args.out}; continue with --resume", file=sys.stderr)
        return 130
    if summary.get("stopped") == "timeout":
        print(f"stopped: the time limit of {args.timeout:g} s ran out; continue with --resume", file=sys.stderr)
    best = summary["best"]
    best_text = "-" if best is None else f"{best['y']:.6g} (trial {best['index']})"
    print(
        f"{summary['n_trials']} trials ({summary['n_failed']} failed, {summary['n_memoized']} memoized), "
        f"spent {summary['spent']:.1f}/{summary['budget']:.1f} s, best {best_text}, "
        f"cache I/O {100 * summary['cache_io_fraction']:.1f}% of spend, optimizer {summary['optimizer_seconds']:.1f} s "
        f"({100 * summary['optimizer_fraction']:.1f}% of optimizer + trial seconds"
        f"{', charged' if summary['charge_optimizer'] else ', not charged'}), JAX compiling "
        f"{summary['compile_seconds']:.1f} s (not charged) -> {os.path.join(args.out, 'summary.json')}"
    )
    if "parallel" in summary:
        par = summary["parallel"]
        print(f"{par['workers']} workers: {par['duplicate_stage_computations']} duplicated stage computations, "
              f"{par['waited_for_prefix']} trials waited for a running prefix, {par['worker_restarts']} workers replaced")
    return 0


def _summary(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="eeipu summary", description="Print a study's summary as JSON.")
    parser.add_argument("out", help="run directory")
    parser.add_argument("--pipeline", default=None, help="the pipeline, if the study cannot resolve it itself")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, e.g. one that registers pipelines (repeatable)")
    args = parser.parse_args(argv)
    try:
        for module in args.imports:
            importlib.import_module(module)
        summary = Study.load(args.out, args.pipeline).summary()  # reads only
    except (ConfigError, ImportError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


_COMMANDS = {
    "tune": "run or resume a crash-safe tuning run of a pipeline (eeipu tune --help)",
    "summary": "print the summary of a tuning run directory",
}


def _import_from_cwd() -> None:
    """Put the working directory first on ``sys.path``, as ``python -m`` does, so that
    ``--pipeline mymodule:pipe`` and ``--import mymodule`` find a module in it (a console
    script's ``sys.path[0]`` is its own directory)."""
    cwd = os.getcwd()
    if not sys.path or sys.path[0] not in ("", cwd):
        sys.path.insert(0, cwd)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``eeipu`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _import_from_cwd()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
        lines = [f"  {name:<8} {desc}" for name, desc in _COMMANDS.items()]
        print("usage: eeipu COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "summary":
        return _summary(argv[1:])
    from eeipu_jax.cpu import pin_xla_threads

    pin_xla_threads()  # before the first JAX computation of this process
    return tune(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""The study: a crash-safe tuning run of a pipeline, as an object (``Study``).

Usage::

    study = Study.create("runs/rff", pipeline, method="eeipu", budget=600, seed=0)
    study.optimize()                       # until the budget is spent
    study.best_trial, study.trials         # typed records (:class:`Trial`)
    study = Study.load("runs/rff", pipeline)   # another process, after a crash
    study.optimize(max_trials=20)          # continues where the run stopped

This module owns a study's settings (checked before anything is written),
its run directory's ``config.json``, and reading its records back. Its
trials run through the one trial driver
(:class:`~eeipu_jax.runtime.driver.TrialDriver`), in this process
(:class:`~eeipu_jax.runtime.driver.InProcess`) or on Ray workers
(:class:`~eeipu_jax.runtime.parallel.RayExecutor`). One serial iteration:
split the PRNG key, ``ask`` for a candidate, run it
(:class:`~eeipu_jax.runtime.runner.Runner`: longest cached prefix restored for
memoizing methods, remaining stages timed), ``tell`` the result, append one
line to ``trials.jsonl`` (flushed and fsynced), then checkpoint the BO state
and key with orbax. The budget is wall seconds of trials (restore, stages,
cache writes); the optimizer's own time is not charged, as in the paper
(arXiv 2411.03731), unless ``charge_optimizer`` is set. Either way each trial
records its optimizer seconds (``ask_seconds``: the wall seconds of the
``tell`` of the previous trial in this process (and the check of whether its
outputs enter the cache) plus the ``ask`` that proposed this one, each timed
to ``block_until_ready``: all the optimizer did between the end of one trial
and the start of the next) and its own
seconds (``trial_seconds``); the summary gives ``optimizer_seconds`` and
``optimizer_fraction``, their share of optimizer plus trial seconds. With
``charge_optimizer`` the budget is charged ``trial_seconds + ask_seconds``
per trial (``charged``), so the optimizer's time counts against the budget
as the trials' does. The loop runs while ``spent < budget``, so the last
trial may overshoot.

A run directory holds::

    config.json        the study's settings (Study.load reads them back)
    trials.jsonl       one JSON object per finished trial (index, x, params, y,
                       status, stage costs, memo depth, charge, cache keys, ...)
    checkpoints/<n>/   (BOState, key) after n trials (orbax; the latest two kept)
    cache_stats.json   this process's cache counters, rewritten after each trial
    summary.json       written when optimize() returns
    .lock              held by the process running the directory

Every ``optimize`` restores the newest readable checkpoint, reads
``trials.jsonl`` (dropping a half-written last line, which no finished trial
can be: a trial counts as finished once its line is fsynced) and re-tells
every line the checkpoint does not include, replaying the same key splits and
asks, so the run continues exactly as if uninterrupted: no finished trial is
lost or run twice, and the trial that was running at a kill is proposed
again (a checkpoint counting trials the records lost is not used: those run
again too). The cache directory is reused. The lock (:mod:`.rundir`) refuses a
second process while one optimizes; reading a study (:meth:`Study.load`,
:attr:`Study.trials`, :meth:`Study.summary`) takes no lock and writes nothing.
Damaged records stop a study with a :class:`ConfigError` naming the file and
the line; a write that fails (a full disk) with a
:class:`~eeipu_jax.runtime.settings.StorageError` on one line, every recorded
trial kept (docs/runtime.md, "Crashes and resuming").

Failed trials (a stage raised or ran past ``stage_timeout``, or the objective
is missing or non-finite) are recorded with ``status: "failed"`` and charged
their measured seconds; the optimizer treats them as the worst objective
observed so far, and the run continues.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from eeipu_jax import loop as bo
from eeipu_jax import methods as methodlib
from eeipu_jax.runtime import driver, rundir
from eeipu_jax.runtime.cache import CachePolicy, parse_bytes
from eeipu_jax.runtime.pipeline import Pipeline
from eeipu_jax.runtime.records import Trial, atomic_write_json, best_record, read_trials, writing
from eeipu_jax.runtime.registry import get_pipeline, target_of
from eeipu_jax.runtime.runner import check_seed
from eeipu_jax.runtime.settings import (
    INT32_MAX,
    ConfigError,
    StorageError,
    check_writable_dir,
    coerce_bo_option,
    is_int,
    is_real,
)
from eeipu_jax.utils import enable_compilation_cache

__all__ = ["Study", "Trial", "StudySettings", "CACHE_WRITES", "check_optimize"]

logger = logging.getLogger(__name__)

FORMAT = 1
CACHE_WRITES = ("auto", "always", "never")
# BOConfig fields set by their own options (the others derive from the pipeline).
_BO_RESERVED = ("n_warmup",)
# The fields of config.json that make a run what it is: reopening a run with
# explicit settings (a command line's --resume) must match them.
_IDENTITY = ("format", "pipeline", "pipeline_name", "pipeline_version", "method", "budget", "seed", "n_warmup",
             "epsilon", "cache_policy", "cache_writes", "bo_options", "charge_optimizer")
# Options of Study.create beyond (pipeline, method, budget, seed), with their defaults.
_OPTIONS = dict(cache_dir=None, cache_policy="top_q", cache_max_bytes=None, cache_writes="auto",
                n_warmup=10, stage_timeout=None, epsilon=0.1, bo=None, jax_cache_dir=None, charge_optimizer=False)
# Options that may differ when a run is reopened (where it runs, not what it is).
_RUNTIME = ("cache_dir", "cache_max_bytes", "stage_timeout", "jax_cache_dir")


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """Everything a study needs (the options of :meth:`Study.create`).

    Attributes:
        pipeline: a :class:`~eeipu_jax.runtime.Pipeline`, a registered name or
            ``"module:attribute"``.
        method: registered method (:func:`eeipu_jax.methods.registered`; a
            ``_nomemo`` suffix turns memoization off, e.g. ``eeipu_nomemo``).
        budget: wall seconds of trials to spend.
        seed: seeds both the optimizer's key and the pipeline's stage keys.
        out: run directory (a ``str`` or ``os.PathLike``, as every path here).
        cache_dir: stage cache directory (default ``<out>/cache``); may be
            shared between runs and workers.
        cache_policy: ``"top_q"``: the cache keeps exactly the optimizer's
            prefix pool (``BOConfig.top_q`` prefixes per memo depth:
            :func:`~eeipu_jax.runtime.driver.pool_keys`), so every memoized
            proposal is a hit; ``"all"``: every stage output.
        cache_max_bytes: size limit of the cache (LRU eviction), ``None``: none.
        cache_writes: ``"auto"`` (write only for memoizing methods),
            ``"always"`` or ``"never"``.
        n_warmup: random initial trials.
        stage_timeout: per-stage limit in seconds (``None``: none).
        epsilon: price of a memoized stage in the acquisition.
        bo_options: other :class:`~eeipu_jax.loop.BOConfig` fields as
            ``((name, value), ...)``.
        jax_cache_dir: turn on JAX's persistent compilation cache in this
            directory when optimizing (``None``: leave JAX's configuration
            alone).
        charge_optimizer: charge the optimizer's seconds of each trial (its
            ``ask_seconds``) to the budget with the trial's own.
        cli: name settings as command-line options in error messages.
    """

    pipeline: Any
    method: str
    budget: float
    seed: int
    out: str
    cache_dir: str | None = None
    cache_policy: str = "top_q"
    cache_max_bytes: int | None = None
    cache_writes: str = "auto"
    n_warmup: int = 10
    stage_timeout: float | None = None
    epsilon: float = 0.1
    bo_options: tuple = ()
    jax_cache_dir: str | None = None
    charge_optimizer: bool = False
    cli: bool = False

    def __post_init__(self):
        # Paths may be given as os.PathLike (pathlib.Path); config.json records them as text.
        for field in ("out", "cache_dir", "jax_cache_dir"):
            value = getattr(self, field)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, field, os.fspath(value))

    def name(self, field: str) -> str:
        """How error messages name a setting (``--n-warmup`` on a command line)."""
        return f"--{field.replace('_', '-')}" if self.cli else field


@dataclasses.dataclass
class _Plan:
    settings: StudySettings
    pipeline: Pipeline
    method: methodlib.Method
    config: bo.BOConfig
    params: bo.Params
    policy: CachePolicy
    cache_dir: str
    write: bool
    doc: dict


# ------------------------------------------------------------- validation
def _resolve_pipeline(spec: Any) -> Pipeline:
    if isinstance(spec, Pipeline):
        return spec
    return get_pipeline(spec)


def _validate(s: StudySettings, *, disk: bool = True) -> _Plan:
    """Check every setting and resolve names, writing nothing anywhere.

    Everything a run needs is decided here, before any file or directory is
    created, so a refused study leaves ``out`` as it was. Nothing expensive
    runs (the pipeline object is built; its ``prepare()`` is not called).

    Args:
        s: the settings.
        disk: also check the directories (writable: :func:`_directories`).
            ``False`` checks the settings alone (the directories are only
            resolved), e.g. for every job of a comparison before the first
            runs, or a study loaded to be read.

    Raises:
        ConfigError: the first setting that is wrong, named.
    """
    def bad(field: str, msg: str):
        raise ConfigError(f"{s.name(field)}: {msg}")

    if not (is_real(s.budget) and math.isfinite(s.budget) and s.budget > 0):
        bad("budget", f"must be a positive number of seconds, got {s.budget!r}")
    try:
        check_seed(s.seed)
    except ValueError as e:
        bad("seed", str(e).removeprefix("seed "))
    if not (is_int(s.n_warmup) and 1 <= s.n_warmup <= INT32_MAX):
        bad("n_warmup", f"must be a positive integer of at most {INT32_MAX}, got {s.n_warmup!r}")
    if s.cache_writes not in CACHE_WRITES:
        bad("cache_writes", f"must be one of {list(CACHE_WRITES)}, got {s.cache_writes!r}")
    if s.stage_timeout is not None and not (
        is_real(s.stage_timeout) and math.isfinite(s.stage_timeout) and s.stage_timeout > 0
    ):
        bad("stage_timeout", f"must be positive seconds, got {s.stage_timeout!r}")
    if not (is_real(s.epsilon) and math.isfinite(s.epsilon) and s.epsilon > 0):
        bad("epsilon", f"must be a positive number, got {s.epsilon!r}")
    if not isinstance(s.charge_optimizer, bool):
        bad("charge_optimizer", f"must be True or False, got {s.charge_optimizer!r}")
    if not isinstance(s.method, str):
        bad("method", f"must be a registered method name, got {s.method!r}")
    try:
        method = methodlib.get_method(s.method)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{s.name('method')}: {e}") from None
    try:
        pipeline = _resolve_pipeline(s.pipeline)
    except Exception as e:  # a factory or space that raises is a bad pipeline, not a crash
        raise ConfigError(f"{s.name('pipeline')}: {e}") from None
    bo_options = {}
    where = "--bo " if s.cli else "bo."
    for item in s.bo_options:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise ConfigError(f"{where.strip()}: expected (name, value) pairs, got {item!r}")
        bo_options[item[0]] = coerce_bo_option(*item, reserved=_BO_RESERVED, where=where, method=method.name)
    for stage in pipeline.stages:
        for p in stage.params:
            for choice in getattr(p, "choices", ()):
                if not (choice is None or isinstance(choice, (bool, int, float, str))) or (
                    isinstance(choice, float) and not math.isfinite(choice)
                ):
                    bad("pipeline", f"stage {stage.name!r} parameter {p.name!r} has choice {choice!r}; "
                                    "cache keys need finite bool/int/float, str or None choices")
    try:
        config, params = driver.optimizer_config(pipeline.space, method.name, s.n_warmup, s.epsilon, bo_options)
    except Exception as e:
        raise ConfigError(f"{s.name('n_warmup')}/{where.strip()}: {type(e).__name__}: {e}") from None
    try:
        # One top_q: a study's "top_q" cache keeps the optimizer's prefix pool (the driver sets its
        # keep-set), so the policy's own q is the optimizer's, never a second setting.
        policy = CachePolicy(s.cache_policy, config.top_q, s.cache_max_bytes)
    except (ValueError, TypeError) as e:
        names = "/".join(s.name(f) for f in ("cache_policy", "cache_max_bytes"))
        raise ConfigError(f"{names}: {e}") from None
    write = {"auto": method.memoize, "always": True, "never": False}[s.cache_writes]
    doc = {
        "format": FORMAT,
        "pipeline": s.pipeline if isinstance(s.pipeline, str) else None,
        "pipeline_name": pipeline.name,
        "pipeline_version": pipeline.version,
        "method": method.name,
        "budget": float(s.budget),
        "seed": int(s.seed),
        "n_warmup": int(s.n_warmup),
        "epsilon": float(s.epsilon),
        "cache_policy": policy.kind,
        "cache_writes": s.cache_writes,
        "bo_options": {k: bo_options[k] for k in sorted(bo_options)},
        "charge_optimizer": s.charge_optimizer,
        # Not part of the run's identity: where the pipeline can be imported
        # from, and where the run ran (defaults when it is reopened).
        "pipeline_target": target_of(s.pipeline) if isinstance(s.pipeline, str) else None,
        "runtime": {"cache_dir": s.cache_dir, "cache_max_bytes": s.cache_max_bytes,
                    "stage_timeout": s.stage_timeout},
    }
    try:  # config.json must be writable as strict JSON before anything is written
        json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the study's settings cannot be recorded in config.json: {e}") from None
    return _Plan(s, pipeline, method, config, params, policy, _directories(s, check=disk), write, doc)


def _directories(s: StudySettings, check: bool) -> str:
    """The stage cache directory (absolute; ``""`` without ``out``), after checking, with
    ``check``, that ``out``, ``cache_dir`` and ``jax_cache_dir`` are (or can be made) writable
    directories (:func:`~eeipu_jax.runtime.settings.check_writable_dir`: nothing is left behind).

    Raises:
        ConfigError: a path that is not one, or (``check``) not writable.
    """
    if check:
        out = check_writable_dir(s.out, s.name("out"))
        cache_dir = check_writable_dir(s.cache_dir or os.path.join(out, "cache"), s.name("cache_dir"))
        if s.jax_cache_dir is not None:
            check_writable_dir(s.jax_cache_dir, s.name("jax_cache_dir"))
        return cache_dir
    if not s.out:
        return ""
    for field in ("out", "cache_dir", "jax_cache_dir"):
        value = getattr(s, field)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise ConfigError(f"{s.name(field)}: expected a directory path, got {value!r}")
    return os.path.abspath(s.cache_dir or os.path.join(s.out, "cache"))


def _settings_from_options(out_dir, pipeline, method, budget, seed, options: Mapping, cli: bool) -> StudySettings:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}; Study.create takes {sorted(_OPTIONS)}")
    o = {**_OPTIONS, **options}
    bo_opts = o.pop("bo") or {}
    if not isinstance(bo_opts, Mapping):
        raise ConfigError(f"bo must be a dict of BOConfig fields, got {bo_opts!r}")
    if isinstance(o["cache_max_bytes"], str):
        try:
            o["cache_max_bytes"] = parse_bytes(o["cache_max_bytes"])
        except ValueError as e:
            raise ConfigError(f"cache_max_bytes: {e}") from None
    return StudySettings(pipeline=pipeline, method=method, budget=budget, seed=seed, out=out_dir,
                         bo_options=tuple(sorted(bo_opts.items())), cli=cli, **o)


def _read_config(run_dir: str, what: str) -> dict:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{what}: no study in {run_dir!r} (config.json missing)")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise ValueError(f"it holds a {type(saved).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what}: {path} is unreadable ({e}); the run directory was altered") from None
    if saved.get("format") != FORMAT:
        raise ConfigError(f"{what}: {path} has format {saved.get('format')!r}; this version of eeipu_jax reads "
                          f"format {FORMAT} (a run written by another version, or an edited file)")
    # Runs recorded before the option existed charged trials only.
    saved.setdefault("charge_optimizer", False)
    # Runs recorded before cache_q was removed have it: it never changed a study (a study's top_q
    # cache keeps exactly the optimizer's prefix pool, BOConfig.top_q), so it is read and ignored.
    saved.pop("cache_q", None)
    return saved


def _has_run(run_dir: str) -> bool:
    return any(os.path.exists(os.path.join(run_dir, f)) for f in ("config.json", "trials.jsonl"))


def _missing_dirs(path: str) -> list[str]:
    """The directories ``os.makedirs(path)`` would create, deepest first."""
    missing = []
    while not os.path.exists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_created(paths: list[str]) -> None:
    """Undo a study's creation that failed: remove ``paths`` (files, then directories if empty)."""
    for path in sorted(set(paths), key=lambda p: (os.path.isdir(p), -p.count(os.sep))):
        with contextlib.suppress(OSError):
            if os.path.isdir(path):
                os.rmdir(path)
            else:
                os.remove(path)


def check_optimize(settings: StudySettings, max_trials: int | None = None, workers: int = 1,
                   address: str | None = None, resources: Mapping | None = None,
                   placement_timeout: float | None = None, timeout: float | None = None,
                   total_trials: int | None = None):
    """Check the options of :meth:`Study.optimize` without touching anything (the command line
    checks them before it creates the run directory).

    Returns:
        The parallel trials' :class:`~eeipu_jax.runtime.parallel.TrialResources`
        (``None``: a serial study).

    Raises:
        ConfigError: the first wrong option, named.
    """
    s = settings
    if max_trials is not None and not (is_int(max_trials) and max_trials >= 1):
        raise ConfigError(f"{s.name('max_trials')}: must be an integer of at least 1, got {max_trials!r}")
    if total_trials is not None and not (is_int(total_trials) and total_trials >= 1):
        raise ConfigError(f"{s.name('total_trials')}: must be an integer of at least 1 (the study's trials in all, "
                          f"earlier calls included), got {total_trials!r}")
    if timeout is not None and not (is_real(timeout) and math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"{s.name('timeout')}: must be positive seconds, got {timeout!r}")
    if not (is_int(workers) and 1 <= workers <= 4096):
        raise ConfigError(f"{s.name('workers')}: must be an integer from 1 to 4096, got {workers!r}")
    if placement_timeout is not None and not (
        is_real(placement_timeout) and math.isfinite(placement_timeout) and placement_timeout > 0
    ):
        raise ConfigError(f"{s.name('placement_timeout')}: must be positive seconds, got {placement_timeout!r}")
    from eeipu_jax.runtime import parallel as par  # Ray itself is imported only when a parallel study runs

    if address is not None:
        try:
            par.check_address(address)
        except ValueError as e:
            raise ConfigError(f"{s.name('address')}: {e}") from None
    res_name = "/".join(s.name(f) for f in ("worker_cpus", "worker_gpus", "worker_resources")) if s.cli else "resources"
    try:
        trial_resources = par.TrialResources.of(resources)
    except ValueError as e:
        raise ConfigError(f"{res_name}: {e}") from None
    if workers > 1 or address is not None:
        return trial_resources
    for name, value in ((res_name, resources), (s.name("placement_timeout"), placement_timeout)):
        if value is not None:
            raise ConfigError(f"{name}: only for parallel studies (workers > 1 or an address)")
    return None


# ------------------------------------------------------------------ study
class Study:
    """A crash-safe tuning run of one pipeline in one directory.

    Make one with :meth:`create` (a new run) or :meth:`load` (an existing
    one); both check every setting before anything is written. Then
    :meth:`optimize` runs trials; :attr:`trials`, :attr:`best_trial`,
    :meth:`summary`, :meth:`trials_dataframe` and :meth:`plot` read the
    records back (from disk, so they also work on a run another process is
    optimizing).
    """

    def __init__(self, plan: _Plan):
        """Use :meth:`create`, :meth:`load` or :meth:`open`."""
        self._plan = plan
        self._worker: driver.TrialWorker | None = None  # in process: prepared once per study
        self.out_dir = os.path.abspath(plan.settings.out)

    # ------------------------------------------------------ construction
    @classmethod
    def create(cls, out_dir: str | os.PathLike, pipeline: Any, method: str = "eeipu", budget: float | None = None,
               seed: int = 0, *, load_if_exists: bool = False, **options) -> "Study":
        """A new study in ``out_dir`` (created; it must not hold a run).

        Args:
            out_dir: run directory (``str`` or ``os.PathLike``; so are
                ``cache_dir`` and ``jax_cache_dir``).
            pipeline: a :class:`~eeipu_jax.runtime.Pipeline`, a registered
                name or ``"module:attribute"`` (a name or path is recorded, so
                :meth:`load` can rebuild the pipeline without being given it).
            method: registered method name (``eeipu``, ``ei``, ``eips``,
                ``carbo``, ``ms_carbo``, ``lambo``, ``ms_bo``; add
                ``_nomemo`` to turn memoization off, e.g. ``eeipu_nomemo``).
            budget: wall seconds of trials to spend (required).
            seed: seeds the optimizer and the stages' PRNG keys, 0..2**32-1.
            load_if_exists: reopen the run already in ``out_dir`` if its
                settings are these (else refuse, naming the differences).
            **options: ``n_warmup`` (10), ``epsilon`` (0.1), ``bo`` (a dict of
                other :class:`~eeipu_jax.loop.BOConfig` fields),
                ``cache_dir`` (``<out_dir>/cache``), ``cache_policy``
                (``"top_q"`` or ``"all"``), ``cache_max_bytes`` (int or ``"500MB"``), ``cache_writes``
                (``"auto"``: only memoizing methods write), ``stage_timeout``
                (seconds), ``jax_cache_dir`` (turn on JAX's persistent
                compilation cache there), ``charge_optimizer`` (False:
                charge the optimizer's seconds to the budget too).

        Raises:
            ConfigError: a wrong setting (nothing is written), or ``out_dir``
                already holds a run (another one, or this one without
                ``load_if_exists``).
            StorageError: the run directory could not be written (a full
                disk); what was created is removed again.
        """
        if budget is None:
            raise ConfigError("budget: required (wall seconds of trials to spend)")
        settings = _settings_from_options(out_dir, pipeline, method, budget, seed, options, cli=False)
        return cls.open(settings, "create_or_resume" if load_if_exists else "create")

    @classmethod
    def load(cls, out_dir: str | os.PathLike, pipeline: Any = None, **runtime) -> "Study":
        """Reopen the study in ``out_dir`` with the settings it was created with.

        Reads only (no lock, nothing written: a run on a read-only file
        system can be loaded, summarized and its trials read); :meth:`optimize`
        checks that the directories are writable.

        Args:
            out_dir: run directory (``str`` or ``os.PathLike``).
            pipeline: needed only if the study was created with a
                ``Pipeline`` object, or under a name this process has not
                registered; it must have the recorded name and version.
                Otherwise the recorded name or ``"module:attribute"`` is
                resolved again.
            **runtime: settings that may change between processes:
                ``cache_dir``, ``cache_max_bytes``, ``stage_timeout``,
                ``jax_cache_dir`` (default: as recorded; ``jax_cache_dir``
                is never recorded).

        Raises:
            ConfigError: no readable study, a pipeline that cannot be
                resolved or does not match, or a wrong runtime setting.
        """
        if not isinstance(out_dir, (str, os.PathLike)):
            raise ConfigError(f"Study.load: out_dir must be a directory path, got {out_dir!r}")
        run_dir = os.path.abspath(out_dir)
        saved = _read_config(run_dir, "Study.load")
        unknown = sorted(set(runtime) - set(_RUNTIME))
        if unknown:
            raise ConfigError(f"Study.load: unknown option(s) {unknown}; it takes {list(_RUNTIME)}")
        missing = [k for k in _IDENTITY if k not in saved]
        if missing:
            raise ConfigError(f"Study.load: {run_dir}/config.json lacks {missing}; the run directory was altered")
        spec = pipeline
        if spec is None:
            spec = saved["pipeline"]
            if spec is None:
                raise ConfigError(
                    f"Study.load: the study in {run_dir!r} was created with a Pipeline object "
                    f"({saved['pipeline_name']!r} version {saved['pipeline_version']!r}); pass it: "
                    "Study.load(out_dir, pipeline)"
                )
            try:
                get_pipeline(spec)
            except ValueError as e:
                target = saved.get("pipeline_target")
                if not target:
                    raise ConfigError(f"Study.load: pipeline {spec!r} cannot be resolved here ({e}); "
                                      "register it or pass it: Study.load(out_dir, pipeline)") from None
                spec = target
        recorded = dict(saved.get("runtime") or {})
        recorded.update(runtime)
        settings = StudySettings(
            pipeline=spec, method=saved["method"], budget=saved["budget"], seed=saved["seed"], out=run_dir,
            cache_policy=saved["cache_policy"], cache_writes=saved["cache_writes"],
            n_warmup=saved["n_warmup"], epsilon=saved["epsilon"], charge_optimizer=saved["charge_optimizer"],
            bo_options=tuple(sorted((saved["bo_options"] or {}).items())),
            cache_dir=recorded.get("cache_dir"), cache_max_bytes=recorded.get("cache_max_bytes"),
            stage_timeout=recorded.get("stage_timeout"), jax_cache_dir=recorded.get("jax_cache_dir"),
        )
        plan = _validate(settings, disk=False)  # optimize() checks the directories
        got = (plan.pipeline.name, plan.pipeline.version)
        if got != (saved["pipeline_name"], saved["pipeline_version"]):
            raise ConfigError(
                f"Study.load: the pipeline is {got[0]!r} version {got[1]!r}, the study ran "
                f"{saved['pipeline_name']!r} version {saved['pipeline_version']!r}"
            )
        return cls(plan)

    @classmethod
    def check(cls, pipeline: Any, method: str = "eeipu", budget: float | None = None, seed: int = 0,
              **options) -> None:
        """Check the settings of :meth:`create` without touching the disk.

        Raises:
            ConfigError: the first wrong setting, named.
        """
        if budget is None:
            raise ConfigError("budget: required (wall seconds of trials to spend)")
        settings = _settings_from_options("", pipeline, method, budget, seed, options, cli=False)
        _validate(settings, disk=False)

    @classmethod
    def open(cls, settings: StudySettings, mode: str = "create") -> "Study":
        """A study from complete settings (what :meth:`create` and the ``eeipu tune`` command use).

        Args:
            settings: every setting of the study (:class:`StudySettings`).
            mode: ``"create"`` (a new run; ``settings.out`` must not hold
                one), ``"resume"`` (reopen the run there, whose
                ``config.json`` must have these settings' identity fields)
                or ``"create_or_resume"`` (either).

        Raises:
            ConfigError: a wrong setting (nothing is written), no run to
                resume, a run already there for ``"create"``, or a run with
                other settings (the differing fields are named).
            StorageError: the run directory could not be written (a full
                disk): the directories and files this call created are
                removed again, so a new attempt starts from scratch.
        """
        if mode not in ("create", "resume", "create_or_resume"):
            raise ValueError(f"mode must be 'create', 'resume' or 'create_or_resume', got {mode!r}")
        plan = _validate(settings)
        run_dir = os.path.abspath(settings.out)
        cli = settings.cli
        if mode == "resume" and not os.path.exists(os.path.join(run_dir, "config.json")):
            raise ConfigError(f"{'--resume' if cli else 'Study.load'}: no run to resume in {run_dir!r} "
                              "(config.json missing)")
        hint = ("pass --resume to continue it or choose a new --out" if cli
                else "use Study.load(out_dir) or load_if_exists=True to continue it, or choose another out_dir")
        if mode == "create" and _has_run(run_dir):
            raise ConfigError(f"{settings.name('out')} {run_dir!r} already holds a run; {hint}")
        lock_path = os.path.join(run_dir, ".lock")
        created = _missing_dirs(run_dir) + _missing_dirs(plan.cache_dir) + (
            [] if os.path.exists(lock_path) else [lock_path])
        try:
            with writing(f"the run directory {run_dir}"):
                os.makedirs(run_dir, exist_ok=True)
                os.makedirs(plan.cache_dir, exist_ok=True)
                with rundir.lock(run_dir):
                    config_path = os.path.join(run_dir, "config.json")
                    if mode == "create" and _has_run(run_dir):  # created by another process since the check above
                        raise ConfigError(f"{settings.name('out')} {run_dir!r} already holds a run; {hint}")
                    if os.path.exists(config_path):
                        saved = _read_config(run_dir, "--resume" if cli else "Study.create")
                        diffs = [f"{k}: run has {saved.get(k)!r}, {'this command' if cli else 'given'} "
                                 f"{plan.doc[k]!r}" for k in _IDENTITY if saved.get(k) != plan.doc[k]]
                        if diffs:
                            what = "--resume" if cli else "Study.create(load_if_exists=True)"
                            raise ConfigError(f"{what}: settings differ from the run's config.json: " + "; ".join(diffs))
                        created = []  # an existing run: nothing of it is removed
                    elif os.path.exists(os.path.join(run_dir, "trials.jsonl")):
                        raise ConfigError(f"{run_dir!r} holds trials.jsonl without config.json; the run directory "
                                          "was altered")
                    else:
                        with writing(config_path):
                            atomic_write_json(config_path, plan.doc)
        except StorageError:
            _remove_created(created)
            raise
        return cls(plan)

    # ------------------------------------------------------------ reading
    @property
    def pipeline(self) -> Pipeline:
        """The pipeline being tuned."""
        return self._plan.pipeline

    @property
    def method(self) -> str:
        """The method's registered name."""
        return self._plan.method.name

    @property
    def budget(self) -> float:
        """Wall seconds of trials to spend."""
        return float(self._plan.settings.budget)

    @property
    def seed(self) -> int:
        return int(self._plan.settings.seed)

    @property
    def config(self) -> bo.BOConfig:
        """The optimizer's static settings."""
        return self._plan.config

    @property
    def charge_optimizer(self) -> bool:
        """Whether the optimizer's seconds are charged to the budget."""
        return bool(self._plan.settings.charge_optimizer)

    @property
    def cache_dir(self) -> str:
        return self._plan.cache_dir

    def _records(self) -> list[dict]:
        return read_trials(os.path.join(self.out_dir, "trials.jsonl"))

    @property
    def trials(self) -> list[Trial]:
        """Every finished trial, in order (read from ``trials.jsonl``)."""
        return [Trial.from_record(r) for r in self._records()]

    @property
    def best_trial(self) -> Trial | None:
        """The finished trial with the highest objective (``None`` before any succeeded)."""
        best = best_record(self._records())
        return None if best is None else Trial.from_record(best)

    def summary(self) -> dict:
        """Trials, failures, memoized trials, spend, the best trial, the share of cache I/O and
        the optimizer's seconds and share (of optimizer plus trial seconds)."""
        return driver.summarize(self._records(), pipeline=self.pipeline.name, method=self.method, seed=self.seed,
                                budget=self.budget, charge_optimizer=self.charge_optimizer)

    def trials_dataframe(self):
        """The trials as a ``pandas.DataFrame``: one row per trial, hyperparameters as
        ``params.<stage>.<name>`` columns and other metrics as ``metrics.<name>``.

        Raises:
            ImportError: pandas is not installed (it is optional).
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "Study.trials_dataframe needs pandas, which eeipu_jax does not install: "
                "pip install pandas (or read study.trials, a list of Trial records)"
            ) from None
        rows = []
        for t in self.trials:
            row = {"index": t.index, "status": t.status, "y": t.y, "memo_depth": t.memo_depth,
                   "proposed_depth": t.proposed_depth, "source": t.source, "charged": t.charged,
                   "trial_seconds": t.trial_seconds, "ask_seconds": t.ask_seconds,
                   "spent": t.spent, "warmup": t.warmup, "error": t.error}
            row.update({f"params.{s}.{k}": v for s, p in t.params.items() for k, v in p.items()})
            row.update({f"metrics.{k}": v for k, v in t.metrics.items()})
            rows.append(row)
        return pd.DataFrame(rows).set_index("index") if rows else pd.DataFrame()

    def plot(self, ax=None):
        """Best objective against budget spent (a step curve; the warm-up shaded).

        Args:
            ax: a matplotlib ``Axes`` to draw on (default: a new figure's).

        Returns:
            The ``Axes``.
        """
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6, 4))
        trials = self.trials
        spent = np.array([t.spent for t in trials])
        y = np.array([t.y if t.ok else -np.inf for t in trials])
        best = np.maximum.accumulate(y) if len(y) else y
        shown = np.isfinite(best)
        ax.step(spent[shown], best[shown], where="post", label=self.method)
        warm = [t.spent for t in trials if t.warmup]
        if warm:
            ax.axvspan(0.0, max(warm), color="0.9", zorder=0, label="warm-up")
        ax.set_xlim(0.0, max(self.budget, float(spent.max()) if len(spent) else 0.0))
        ax.set_xlabel("budget spent (s)")
        ax.set_ylabel("best objective")
        ax.set_title(f"{self.pipeline.name} / {self.method} (seed {self.seed})")
        ax.legend(loc="lower right")
        return ax

    # ------------------------------------------------------------ running
    def optimize(self, max_trials: int | None = None, *, progress: bool = False, workers: int = 1,
                 address: str | None = None, resources: Mapping | None = None,
                 placement_timeout: float | None = None, timeout: float | None = None,
                 total_trials: int | None = None) -> dict:
        """Run trials until the budget is spent, ``max_trials`` more trials ran, the study holds
        ``total_trials`` trials, or ``timeout`` seconds passed.

        Resumes from the directory's checkpoint and records first (see the
        module docstring), so a study reopened after a crash continues
        exactly where it stopped. Holds the run directory's lock meanwhile.

        With ``workers > 1`` (or an ``address``) up to ``workers`` trials run
        at once on Ray actors (:mod:`eeipu_jax.runtime.parallel`: Ray is an
        optional dependency); this process stays the driver and keeps every
        guarantee above. ``workers=1`` without an address runs the trials in
        this process, without Ray. Both run the same trial driver
        (:class:`~eeipu_jax.runtime.driver.TrialDriver`).

        Args:
            max_trials: stop after this many trials of this call: it counts
                per call, like Optuna's ``n_trials`` (``None``: no limit).
            total_trials: stop when the study holds this many trials in all,
                those of earlier calls and runs resumed included (``None``: no
                limit; a study that holds them already runs none).
            progress: show a progress bar (tqdm).
            workers: trials run at once (Ray actors when more than one).
            address: a Ray cluster to join (``None``: a local Ray bound to
                localhost, started unless this process is connected already).
            resources: what each trial reserves, ``num_cpus``, ``num_gpus``
                and custom Ray resources by name, e.g. ``{"TPU": 4}`` (default:
                no GPU, and ``min(1, CPUs / workers)`` CPUs on a local Ray, so
                more workers than cores can run; 1 CPU on a cluster joined by
                address; ``num_gpus=1``: one trial per GPU).
            placement_timeout: seconds to wait for the workers to be placed
                on Ray before stopping with an error that names what was
                asked for and what the cluster has (default
                :data:`~eeipu_jax.runtime.parallel.PLACEMENT_TIMEOUT`).
            timeout: wall-clock seconds for this call (like Optuna's
                ``optimize(timeout=...)``): no trial starts after them, and a
                stage still running then is interrupted (``SIGALRM`` in a
                serial study, as ``stage_timeout``; a single long XLA call
                stops when it returns) and its trial recorded as failed; the
                call then returns its summary. ``None``: no limit.

        Returns:
            The :meth:`summary`, plus the cache's statistics (also written to
            ``summary.json``), ``stopped`` (``"budget"``, ``"max_trials"``,
            ``"total_trials"`` or ``"timeout"``) and, for a parallel study, a ``parallel`` entry
            (workers, resources, duplicated stage computations, trials that
            waited for a prefix, workers replaced: counted over the whole run).

        Raises:
            ConfigError: a wrong ``max_trials``, ``total_trials`` or parallel setting, a
                directory that is not writable, another process holds the
                directory, the directory's records were altered (the line is
                named), (:class:`~eeipu_jax.runtime.pipeline.PrepareError`)
                the pipeline's ``prepare()`` raised, or
                (:class:`~eeipu_jax.runtime.parallel.PlacementError`) the
                workers could not be placed in time.
            StorageError: a file of the run could not be written (a full
                disk); every trial recorded before it is kept, and the study
                continues from there once the cause is fixed.
        """
        s = self._plan.settings
        trial_resources = check_optimize(s, max_trials, workers, address, resources, placement_timeout, timeout,
                                         total_trials)
        parallel = trial_resources is not None
        if parallel:
            from eeipu_jax.runtime import parallel as par

            par.require_ray()
            executor = par.RayExecutor(workers, trial_resources, address,
                                       par.PLACEMENT_TIMEOUT if placement_timeout is None else placement_timeout)
        _directories(s, check=True)  # a study loaded to be read was not checked
        if s.jax_cache_dir is not None:
            try:
                enable_compilation_cache(os.path.abspath(s.jax_cache_dir))
            except OSError as e:
                raise ConfigError(f"{s.name('jax_cache_dir')}: cannot use the compilation cache: {e}") from None
        with writing(f"the stage cache directory {self._plan.cache_dir}"):
            os.makedirs(self._plan.cache_dir, exist_ok=True)
        spec = self._spec()
        with rundir.lock(self.out_dir):
            _read_config(self.out_dir, "Study.optimize")
            state, key, records = driver.resume(spec)
            if not parallel:
                if self._worker is None:  # one per study, so prepare() runs once per process
                    self._worker = driver.TrialWorker(**spec.worker_kwargs())
                executor = driver.InProcess(self._worker)
            return driver.TrialDriver(spec, executor, progress=progress).run(state, key, records, max_trials,
                                                                             timeout=timeout,
                                                                             total_trials=total_trials)

    def _spec(self) -> driver.RunSpec:
        plan = self._plan
        s = plan.settings
        return driver.RunSpec(
            out_dir=self.out_dir, pipeline=plan.pipeline, method=plan.method.name, config=plan.config,
            budget=float(s.budget), seed=int(s.seed), params=plan.params, memoize=plan.method.memoize,
            write=plan.write, policy=plan.policy, cache_dir=plan.cache_dir, stage_timeout=s.stage_timeout,
            charge_optimizer=s.charge_optimizer,
        )

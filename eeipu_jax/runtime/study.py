"""The study: a crash-safe tuning run of a pipeline, as an object (``Study``).

Usage::

    study = Study.create("runs/rff", pipeline, method="eeipu", budget=600, seed=0)
    study.optimize()                       # until the budget is spent
    study.best_trial, study.trials         # typed records (:class:`Trial`)
    study = Study.load("runs/rff", pipeline)   # another process, after a crash
    study.optimize(max_trials=20)          # continues where the run stopped

This module owns the Python driver loop of a tuning run on a real pipeline.
One iteration: split the PRNG key, ``ask`` for a candidate, run it
(:class:`~eeipu_jax.runtime.runner.Runner`: longest cached prefix restored for
memoizing methods, remaining stages timed), ``tell`` the result, append one
line to ``trials.jsonl`` (flushed and fsynced), then checkpoint the BO state
and key with orbax. The budget is wall seconds of trials (restore, stages,
cache writes); the optimizer's own time is not charged, as in the paper
(arXiv 2411.03731), unless ``charge_optimizer`` is set. Either way each trial
records its optimizer seconds (``ask_seconds``: the wall seconds of the
``tell`` of the previous trial in this process plus the ``ask`` that
proposed this one, each timed to ``block_until_ready``: all the optimizer
did between the end of one trial and the start of the next) and its own
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
again. The cache directory is reused. The lock (:mod:`.rundir`) refuses a
second process while one optimizes.

Failed trials (a stage raised or ran past ``stage_timeout``, or the objective
is missing or non-finite) are recorded with ``status: "failed"`` and charged
their measured seconds; the optimizer treats them as the worst objective
observed so far, and the run continues.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from eeipu_jax import loop as bo
from eeipu_jax import methods as methodlib
from eeipu_jax.runtime import rundir
from eeipu_jax.runtime.cache import CachePolicy, StageCache, parse_bytes
from eeipu_jax.runtime.pipeline import Pipeline
from eeipu_jax.runtime.records import Trial, append_line, atomic_write_json, jsonable, optimizer_seconds, read_trials
from eeipu_jax.runtime.registry import get_pipeline, target_of
from eeipu_jax.runtime.runner import Runner, check_seed
from eeipu_jax.runtime.settings import INT32_MAX, ConfigError, check_writable_dir, coerce_bo_option, is_int, is_real
from eeipu_jax.utils import enable_compilation_cache

__all__ = ["Study", "Trial", "StudySettings", "CACHE_WRITES"]

logger = logging.getLogger(__name__)

FORMAT = 1
CACHE_WRITES = ("auto", "always", "never")
# BOConfig fields set by their own options (the others derive from the pipeline).
_BO_RESERVED = ("n_warmup",)
# The fields of config.json that make a run what it is: reopening a run with
# explicit settings (a command line's --resume) must match them.
_IDENTITY = ("format", "pipeline", "pipeline_name", "pipeline_version", "method", "budget", "seed", "n_warmup",
             "epsilon", "cache_policy", "cache_q", "cache_writes", "bo_options", "charge_optimizer")
# Options of Study.create beyond (pipeline, method, budget, seed), with their defaults.
_OPTIONS = dict(cache_dir=None, cache_policy="top_q", cache_q=5, cache_max_bytes=None, cache_writes="auto",
                n_warmup=10, stage_timeout=None, epsilon=0.1, bo=None, jax_cache_dir=None, charge_optimizer=False)
# Options that may differ when a run is reopened (where it runs, not what it is).
_RUNTIME = ("cache_dir", "cache_max_bytes", "stage_timeout", "jax_cache_dir")


# ------------------------------------------------- one definition of cached
_prefix_pool = jax.jit(bo.prefix_pool, static_argnums=1)


def pool_keys(state, config: bo.BOConfig, records) -> set[str]:
    """Cache keys of the optimizer's prefix pool (:func:`eeipu_jax.loop.prefix_pool`).

    Under ``"top_q"`` the stage cache keeps exactly these: the depth-``j``
    prefix key of each pool entry of depth ``j``, i.e. exactly the prefixes the
    next ``ask`` may propose, so a memoized proposal is never a cache miss.
    ``records[i]`` is trial ``i`` (row ``i`` of ``state``).
    """
    pool = _prefix_pool(state, config)
    src, ok = np.asarray(pool.source), np.asarray(pool.ok)
    return {records[int(r)]["cache_keys"][j] for j in range(src.shape[0]) for r in src[j][ok[j]]}


def enters_pool(state, config: bo.BOConfig, x, objective: float) -> bool:
    """Whether trial ``state.n`` at ``x`` with ``objective`` would be in the prefix pool
    once told (only the ranks matter, so its costs are placeholders): the runner
    writes its stage outputs only then."""
    if not math.isfinite(objective):
        return False
    i = int(state.n)
    told = bo.tell(state, x, objective, np.ones(config.n_stages), 0)
    pool = _prefix_pool(told, config)
    return bool(np.any(np.asarray(pool.ok) & (np.asarray(pool.source) == i)))


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
        out: run directory.
        cache_dir: stage cache directory (default ``<out>/cache``); may be
            shared between runs and workers.
        cache_policy: ``"top_q"`` or ``"all"``.
        cache_q: trials whose prefixes a ``"top_q"`` cache keeps when used
            without a study; a study's ``"top_q"`` cache keeps exactly the
            optimizer's prefix pool (:func:`pool_keys`, ``BOConfig.top_q``
            prefixes per depth), so every memoized proposal is a hit.
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
    cache_q: int = 5
    cache_max_bytes: int | None = None
    cache_writes: str = "auto"
    n_warmup: int = 10
    stage_timeout: float | None = None
    epsilon: float = 0.1
    bo_options: tuple = ()
    jax_cache_dir: str | None = None
    charge_optimizer: bool = False
    cli: bool = False

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
        disk: also check the directories (writable). ``False`` checks the
            settings alone, e.g. for every job of a comparison before the
            first runs.

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
        policy = CachePolicy(s.cache_policy, s.cache_q, s.cache_max_bytes)
    except (ValueError, TypeError) as e:
        names = "/".join(s.name(f) for f in ("cache_policy", "cache_q", "cache_max_bytes"))
        raise ConfigError(f"{names}: {e}") from None
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
        config, params = bo.configure(pipeline.space, method.name, n_warmup=s.n_warmup, epsilon=s.epsilon,
                                      **bo_options)
    except Exception as e:
        raise ConfigError(f"{s.name('n_warmup')}/{where.strip()}: {type(e).__name__}: {e}") from None
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
        "cache_q": int(policy.q),
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
    if not disk:
        return _Plan(s, pipeline, method, config, params, policy, "", write, doc)
    out = check_writable_dir(s.out, s.name("out"))
    cache_dir = check_writable_dir(s.cache_dir or os.path.join(out, "cache"), s.name("cache_dir"))
    if s.jax_cache_dir is not None:
        check_writable_dir(s.jax_cache_dir, s.name("jax_cache_dir"))
    return _Plan(s, pipeline, method, config, params, policy, cache_dir, write, doc)


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
    # Runs recorded before the option existed charged trials only.
    saved.setdefault("charge_optimizer", False)
    return saved


def _has_run(run_dir: str) -> bool:
    return any(os.path.exists(os.path.join(run_dir, f)) for f in ("config.json", "trials.jsonl"))


def _nan(v) -> float:
    return math.nan if v is None else float(v)


def _tell_record(state, rec: dict):
    return bo.tell(
        state,
        np.asarray(rec["x"], np.float32),
        _nan(rec["y"]),
        np.asarray([_nan(c) for c in rec["stage_costs"]]),
        int(rec["memo_depth"]),
        float(rec["charged"]),
    )


def _best(records: list[dict]) -> dict | None:
    ok = [r for r in records if r["status"] == "ok"]
    return max(ok, key=lambda r: r["y"]) if ok else None


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
        """Use :meth:`create` or :meth:`load`."""
        self._plan = plan
        self._runner: Runner | None = None
        self.out_dir = os.path.abspath(plan.settings.out)

    # ------------------------------------------------------ construction
    @classmethod
    def create(cls, out_dir: str, pipeline: Any, method: str = "eeipu", budget: float | None = None,
               seed: int = 0, *, load_if_exists: bool = False, **options) -> "Study":
        """A new study in ``out_dir`` (created; it must not hold a run).

        Args:
            out_dir: run directory.
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
                (``"top_q"`` or ``"all"``), ``cache_q`` (5),
                ``cache_max_bytes`` (int or ``"500MB"``), ``cache_writes``
                (``"auto"``: only memoizing methods write), ``stage_timeout``
                (seconds), ``jax_cache_dir`` (turn on JAX's persistent
                compilation cache there), ``charge_optimizer`` (False:
                charge the optimizer's seconds to the budget too).

        Raises:
            ConfigError: a wrong setting (nothing is written), or ``out_dir``
                already holds a run (another one, or this one without
                ``load_if_exists``).
        """
        if budget is None:
            raise ConfigError("budget: required (wall seconds of trials to spend)")
        settings = _settings_from_options(out_dir, pipeline, method, budget, seed, options, cli=False)
        return cls._open(settings, "create_or_resume" if load_if_exists else "create")

    @classmethod
    def load(cls, out_dir: str, pipeline: Any = None, **runtime) -> "Study":
        """Reopen the study in ``out_dir`` with the settings it was created with.

        Args:
            out_dir: run directory.
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
            cache_policy=saved["cache_policy"], cache_q=saved["cache_q"], cache_writes=saved["cache_writes"],
            n_warmup=saved["n_warmup"], epsilon=saved["epsilon"], charge_optimizer=saved["charge_optimizer"],
            bo_options=tuple(sorted((saved["bo_options"] or {}).items())),
            cache_dir=recorded.get("cache_dir"), cache_max_bytes=recorded.get("cache_max_bytes"),
            stage_timeout=recorded.get("stage_timeout"), jax_cache_dir=recorded.get("jax_cache_dir"),
        )
        plan = _validate(settings)
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
    def _open(cls, settings: StudySettings, mode: str) -> "Study":
        """Create (``"create"``), reopen with the same settings (``"resume"``) or either.

        A reopened run's identity fields in ``config.json`` must equal these
        settings'; the differing fields are named otherwise.
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
        try:
            os.makedirs(run_dir, exist_ok=True)
            os.makedirs(plan.cache_dir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{settings.name('out')}/{settings.name('cache_dir')}: cannot create the directory: {e}") from None
        with rundir.lock(run_dir):
            config_path = os.path.join(run_dir, "config.json")
            if mode == "create" and _has_run(run_dir):  # created by another process since the check above
                raise ConfigError(f"{settings.name('out')} {run_dir!r} already holds a run; {hint}")
            if os.path.exists(config_path):
                saved = _read_config(run_dir, "--resume" if cli else "Study.create")
                diffs = [f"{k}: run has {saved.get(k)!r}, {'this command' if cli else 'given'} {plan.doc[k]!r}"
                         for k in _IDENTITY if saved.get(k) != plan.doc[k]]
                if diffs:
                    what = "--resume" if cli else "Study.create(load_if_exists=True)"
                    raise ConfigError(f"{what}: settings differ from the run's config.json: " + "; ".join(diffs))
            elif os.path.exists(os.path.join(run_dir, "trials.jsonl")):
                raise ConfigError(f"{run_dir!r} holds trials.jsonl without config.json; the run directory was altered")
            else:
                atomic_write_json(config_path, plan.doc)
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
        best = _best(self._records())
        return None if best is None else Trial.from_record(best)

    def summary(self) -> dict:
        """Trials, failures, memoized trials, spend, the best trial, the share of cache I/O and
        the optimizer's seconds and share (of optimizer plus trial seconds)."""
        return self._summary(self._records())

    def _summary(self, records: list[dict]) -> dict:
        spent = float(records[-1]["spent"]) if records else 0.0
        io = sum(r["restore_seconds"] + r["save_seconds"] for r in records)
        optimizer, wall = optimizer_seconds(records)
        best = _best(records)
        return {
            "pipeline": self.pipeline.name,
            "method": self.method,
            "seed": self.seed,
            "budget": self.budget,
            "spent": spent,
            "n_trials": len(records),
            "n_failed": sum(1 for r in records if r["status"] != "ok"),
            "n_memoized": sum(1 for r in records if r["memo_depth"] > 0),
            "n_fallback": sum(1 for r in records if r.get("fallback", False)),
            "best": None if best is None else {k: best[k] for k in ("index", "y", "params", "metrics")},
            "cache_io_seconds": io,
            "cache_io_fraction": io / spent if spent > 0 else 0.0,
            "charge_optimizer": self.charge_optimizer,
            "optimizer_seconds": optimizer,
            "optimizer_fraction": optimizer / wall if wall > 0 else 0.0,
        }

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
                 address: str | None = None, resources: Mapping | None = None) -> dict:
        """Run trials until the budget is spent, or ``max_trials`` more trials ran.

        Resumes from the directory's checkpoint and records first (see the
        module docstring), so a study reopened after a crash continues
        exactly where it stopped. Holds the run directory's lock meanwhile.

        With ``workers > 1`` (or an ``address``) up to ``workers`` trials run
        at once on Ray actors (:mod:`eeipu_jax.runtime.parallel`: Ray is an
        optional dependency); this process stays the driver and keeps every
        guarantee above. ``workers=1`` without an address is the
        single-process loop, without Ray.

        Args:
            max_trials: stop after this many trials of this call (``None``:
                only the budget stops it).
            progress: show a progress bar (tqdm).
            workers: trials run at once (Ray actors when more than one).
            address: a Ray cluster to join (``None``: a local Ray bound to
                localhost, started unless this process is connected already).
            resources: what each trial reserves, ``{"num_cpus": 1,
                "num_gpus": 0}`` by default (``num_gpus=1``: one trial per GPU).

        Returns:
            The :meth:`summary`, plus the cache's statistics (also written to
            ``summary.json``).

        Raises:
            ConfigError: a wrong ``max_trials``, another process holds the
                directory, or the directory's records were altered.
        """
        s = self._plan.settings
        if max_trials is not None and not (is_int(max_trials) and max_trials >= 1):
            raise ConfigError(f"{s.name('max_trials')}: must be an integer of at least 1, got {max_trials!r}")
        if not (is_int(workers) and 1 <= workers <= 4096):
            raise ConfigError(f"{s.name('workers')}: must be an integer from 1 to 4096, got {workers!r}")
        if address is not None and not (isinstance(address, str) and address):
            raise ConfigError(f"{s.name('address')}: must be a Ray cluster address, got {address!r}")
        parallel = workers > 1 or address is not None
        if parallel:
            from eeipu_jax.runtime import parallel as par

            try:
                trial_resources = par.TrialResources.of(resources)
            except ValueError as e:
                raise ConfigError(f"resources: {e}") from None
            par.require_ray()
        elif resources is not None:
            raise ConfigError("resources: only for parallel studies (workers > 1 or an address)")
        if s.jax_cache_dir is not None:
            try:
                enable_compilation_cache(os.path.abspath(s.jax_cache_dir))
            except OSError as e:
                raise ConfigError(f"{s.name('jax_cache_dir')}: cannot use the compilation cache: {e}") from None
        os.makedirs(self._plan.cache_dir, exist_ok=True)
        with rundir.lock(self.out_dir):
            state, key, records = self._restore()
            if parallel:
                return par.run_parallel(self, state, key, records, max_trials, progress, workers=workers,
                                        resources=trial_resources, address=address)
            return self._loop(state, key, records, max_trials, progress)

    def _restore(self):
        """``(state, key, records)``: the newest checkpoint plus every recorded trial re-told."""
        plan = self._plan
        _read_config(self.out_dir, "Study.optimize")
        trials_path = os.path.join(self.out_dir, "trials.jsonl")
        fresh = bo.init(plan.config, plan.settings.budget, plan.params)
        records = read_trials(trials_path, repair=True)
        got = rundir.restore_checkpoint(self.out_dir, fresh)
        state, key = got if got is not None else (fresh, jax.random.key(plan.settings.seed))
        n = int(state.n)
        if len(records) < n:
            raise ConfigError(
                f"{trials_path} has {len(records)} trials but the checkpoint has {n}: the run directory was altered"
            )
        # Trials recorded after the last checkpoint: replay their asks (same key
        # splits, same GP warm starts) and tell what was recorded; nothing reruns.
        retold_parallel = False
        for rec in records[n:]:
            if "worker" in rec:  # a parallel run's trial: its ask saw other trials in flight; tell only
                state = _tell_record(state, rec)
                retold_parallel = True
                continue
            key, k_ask = jax.random.split(key)
            prop, state = bo.ask(k_ask, state, plan.config)
            if not np.allclose(np.asarray(prop.x), np.asarray(rec["x"], np.float32), atol=1e-6):
                logger.warning("replayed proposal %d differs from the recorded one; telling the recorded trial",
                               rec["index"])
            state = _tell_record(state, rec)
        if retold_parallel:
            # the checkpoint's key was split again for the asks of those trials: derive a fresh one
            key = jax.random.fold_in(key, len(records))
        if len(records) > n:
            logger.info("re-told %d trial(s) recorded after the last checkpoint", len(records) - n)
            rundir.save_checkpoint(self.out_dir, state, key)
        return state, key, records

    def _make_runner(self, cache: StageCache) -> Runner:
        plan = self._plan
        if self._runner is None:  # one per study, so prepare() runs once per process
            self._runner = Runner(plan.pipeline, seed=plan.settings.seed, cache=cache, restore=plan.method.memoize,
                                  write=plan.write, stage_timeout=plan.settings.stage_timeout)
        self._runner.cache = cache
        return self._runner

    def _loop(self, state, key, records: list[dict], max_trials: int | None, progress: bool) -> dict:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        plan = self._plan
        config, pipeline, budget = plan.config, plan.pipeline, float(plan.settings.budget)
        space = pipeline.space
        trials_path = os.path.join(self.out_dir, "trials.jsonl")
        cache = StageCache(plan.cache_dir, plan.policy)
        for rec in records:
            cache.record_trial(_nan(rec["y"]), rec["cache_keys"], prune=False)
        cache.set_keep(pool_keys(state, config, records))
        cache.prune()
        runner = self._make_runner(cache)
        stats_path = os.path.join(self.out_dir, "cache_stats.json")
        hits = sum(1 for r in records if r["memo_depth"] > 0)
        fails = sum(1 for r in records if r["status"] != "ok")
        best = _best(records)
        started = len(records)
        bar = tqdm(
            total=budget,
            initial=min(float(state.spent), budget),
            unit="s",
            disable=not progress,
            dynamic_ncols=True,
            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
            desc=f"{pipeline.name}/{plan.method.name}",
        )

        def postfix():
            bar.set_postfix(
                trial=len(records),
                spent=f"{float(state.spent):.1f}/{budget:g}s",
                best=f"{best['y']:.4g}" if best else "-",
                hits=hits,
                failed=fails,
                refresh=False,
            )

        postfix()
        charge_optimizer = plan.settings.charge_optimizer
        tell_seconds = 0.0  # the previous trial's tell (none before the first trial of this process)
        with bar, logging_redirect_tqdm():
            while float(state.spent) < budget and (max_trials is None or len(records) - started < max_trials):
                i = int(state.n)
                t0 = time.perf_counter()
                key, k_ask = jax.random.split(key)
                prop, state = bo.ask(k_ask, state, config)
                jax.block_until_ready((prop, state))
                ask_seconds = tell_seconds + (time.perf_counter() - t0)
                x = np.array(prop.x, np.float32)
                params = space.from_unit(x)
                proposed_depth, source = int(prop.memo_depth), int(prop.source)
                if proposed_depth > 0 and source >= 0:
                    # Reuse the source trial's exact raw values so cache keys match bit for bit.
                    for stage in pipeline.stages[:proposed_depth]:
                        params[stage.name] = dict(records[source]["params"][stage.name])
                    mask = space.prefix_mask(proposed_depth)
                    x[mask] = np.asarray(state.X[source])[mask]
                admit = None
                if plan.policy.kind == "top_q":
                    admit = functools.partial(enters_pool, state, config, x)
                result = runner.run(params, admit=admit)
                charged = result.charged + ask_seconds if charge_optimizer else result.charged
                t0 = time.perf_counter()
                state = bo.tell(state, x, result.objective, result.stage_costs, result.memo_depth, charged)
                jax.block_until_ready(state)
                tell_seconds = time.perf_counter() - t0
                record = {
                    "index": i,
                    "status": result.status,
                    "y": result.objective,
                    "x": x.astype(float).tolist(),
                    "params": params,
                    "memo_depth": result.memo_depth,
                    "proposed_depth": proposed_depth,
                    "source": source,
                    "stage_costs": result.stage_costs,
                    "stage_seconds": result.stage_seconds,
                    "charged": charged,
                    "trial_seconds": result.charged,
                    "ask_seconds": ask_seconds,
                    "spent": float(state.spent),
                    "restore_seconds": result.restore_seconds,
                    "save_seconds": result.save_seconds,
                    "metrics": result.metrics,
                    "error": result.error,
                    "failed_stage": result.failed_stage,
                    "traceback": result.traceback,
                    "cache_keys": list(result.cache_keys),
                    "saved_keys": list(result.saved_keys),
                    "eta": float(prop.eta),
                    "score": float(prop.score),
                    # every candidate scored non-finite: ask fell back to its documented choice
                    "fallback": bool(prop.fallback),
                    "warmup": i < config.n_warmup,
                    "time": time.time(),
                }
                records.append(append_line(trials_path, record))
                logger.info(
                    "trial %d %s: y=%s memo_depth=%d charged=%.3fs spent=%.1f/%gs%s",
                    i, result.status, f"{result.objective:.6g}", result.memo_depth, charged,
                    float(state.spent), budget, f" ({result.error})" if result.error else "",
                )
                rundir.save_checkpoint(self.out_dir, state, key)
                cache.set_keep(pool_keys(state, config, records))
                cache.record_trial(result.objective, result.cache_keys)
                atomic_write_json(stats_path, cache.stats.to_dict())  # counters only: no directory scan per trial
                hits += result.memo_depth > 0
                fails += not result.ok
                best = _best(records)
                postfix()
                bar.update(max(0.0, min(charged, bar.total - bar.n)))  # the last trial may overshoot

        summary = self._summary(records)
        summary["cache"] = cache.summary()
        atomic_write_json(os.path.join(self.out_dir, "summary.json"), jsonable(summary))
        return summary

"""The trial driver: one trial's life, from ``ask`` to its line in ``trials.jsonl``, for every study.

A serial study, a parallel study on Ray and the Ray Tune searcher all drive
the same pure optimizer (:func:`eeipu_jax.loop.ask` / :func:`~eeipu_jax.loop.tell`,
EEIPU: arXiv 2411.03731); this module owns every step they share, once:

* **Ask** (:func:`ask_trial`): ``loop.ask`` with the trials in flight as
  pending rows (:func:`pack_pending`), then the proposal's prefix: when it
  reuses the prefix of a told trial or of a trial in flight,
  :func:`copy_prefix` gives it that trial's exact raw parameters and unit-cube
  prefix columns, so its cache keys match bit for bit.
* **Run**, through an :class:`Executor`: :class:`InProcess` runs one
  :class:`TrialWorker` in this process (a serial study is the W = 1 case of
  this driver); :class:`eeipu_jax.runtime.parallel.RayExecutor` runs W of
  them as Ray actors. An executor only places and runs trials; it decides
  nothing.
* **Single flight** (:class:`TrialDriver`): a proposal that reuses the prefix
  of a trial still in flight is held, without a worker, until that trial is
  told and its prefix written, then runs on the first free worker and
  restores it (inert with one worker: nothing is in flight at an ask).
* **Tell and record**: :func:`trial_record` builds the one ``trials.jsonl``
  line of a trial, :func:`tell_record` tells a record to the optimizer (a
  finished trial, or a recorded one on resume).
* **Cache keep-set**: under ``"top_q"`` the stage cache keeps exactly the
  optimizer's prefix pool (:func:`pool_keys`, from
  :func:`eeipu_jax.loop.prefix_pool`) plus every prefix a trial in flight
  will restore (:func:`keep_keys`); a finished trial's outputs are written
  when it enters the pool (:func:`enters_pool`) or a held trial waits for
  them.
* **Checkpoints, resume, counters**: the driver appends each record
  (fsynced), checkpoints the state and key (after every trial in process; at
  most every :data:`CHECKPOINT_SECONDS` with remote workers), restores a run
  (:func:`resume`) and summarizes it (:func:`summarize`,
  :func:`run_counters`, which count from the records, so they survive a
  resume). A write of the run directory that fails (a full disk) stops the
  run with a :class:`~eeipu_jax.runtime.settings.StorageError` on one line,
  the files as they were before it: every trial recorded before stays, and
  a resume continues from there.

The optimizer's settings are built here too (:func:`optimizer_config`,
:func:`initial_state`), so the runtime makes a ``BOConfig`` and a fresh
state in one place each.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from eeipu_jax import loop as bo
from eeipu_jax.cpu import jit
from eeipu_jax.runtime import rundir
from eeipu_jax.runtime.cache import CachePolicy, StageCache, prefix_keys
from eeipu_jax.runtime.pipeline import Pipeline
from eeipu_jax.runtime.records import (
    append_line,
    atomic_write_json,
    best_record,
    float_or_nan,
    jsonable,
    optimizer_seconds,
    read_trials,
    writing,
)
from eeipu_jax.runtime.runner import F32_MAX, Runner, TrialResult, nested_params
from eeipu_jax.runtime.settings import ConfigError

__all__ = [
    "CHECKPOINT_SECONDS", "RunSpec", "Flight", "Outcome", "TrialWorker", "Executor", "InProcess", "TrialDriver",
    "optimizer_config", "initial_state", "resume", "check_records", "ask_trial", "pack_pending", "pending_capacity",
    "copy_prefix", "trial_record", "as_failed", "tell_record", "tell_or_fail", "pool_keys", "enters_pool", "keep_keys",
    "prefix_written",
    "duplicate_computations", "run_counters", "summarize",
]

logger = logging.getLogger(__name__)

#: Seconds between two checkpoints of a run with remote workers at least (and one at its end). Such
#: a run re-tells the trials recorded after its checkpoint without replaying asks, which restores
#: the optimizer exactly, so frequent checkpoints only shorten a resume; they cost the driver ~0.1 s
#: each, time a worker waiting for its next trial would otherwise lose. In process, the driver
#: checkpoints after every trial, so a resume replays the same asks.
CHECKPOINT_SECONDS = 5.0


# ------------------------------------------------------------ the optimizer
def optimizer_config(space, method: str, n_warmup: int, epsilon: float,
                     options: Mapping[str, Any]) -> tuple[bo.BOConfig, bo.Params]:
    """The optimizer's settings for a pipeline's search space (the runtime's one place):
    ``(config, params)``, each option routed by :func:`eeipu_jax.loop.configure`.

    Args:
        space: the pipeline's :class:`~eeipu_jax.space.SearchSpace`.
        method: a registered method's name.
        n_warmup: random initial trials.
        epsilon: price of a memoized stage.
        options: other settings (:class:`~eeipu_jax.loop.BOConfig` fields,
            float params, the method's own params).
    """
    return bo.configure(space, method, n_warmup=n_warmup, epsilon=epsilon, **dict(options))


def initial_state(config: bo.BOConfig, budget: float, params: bo.Params) -> bo.BOState:
    """A fresh optimizer state (the runtime's one place): ``budget`` to spend, the run's ``params``."""
    return bo.init(config, budget, params)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything the driver needs to run a study's trials (its settings, resolved).

    Attributes:
        out_dir: the run directory (``trials.jsonl``, checkpoints, summary).
        pipeline: the pipeline.
        method: the method's registered name.
        config: the optimizer's static settings (:func:`optimizer_config`).
        params: the optimizer's numbers (:func:`optimizer_config`).
        budget: seconds to spend.
        seed: seeds the optimizer's key and the stages' PRNG keys.
        memoize: restore cached prefixes (memoizing methods).
        write: write stage outputs to the cache.
        policy: the cache policy (``"top_q"``: the driver sets what is kept).
        cache_dir: the stage cache directory.
        stage_timeout: per-stage limit in seconds (``None``: none).
        charge_optimizer: charge each trial's optimizer seconds to the budget.
    """

    out_dir: str
    pipeline: Pipeline
    method: str
    config: bo.BOConfig
    params: bo.Params
    budget: float
    seed: int
    memoize: bool
    write: bool
    policy: CachePolicy
    cache_dir: str
    stage_timeout: float | None
    charge_optimizer: bool

    def worker_kwargs(self) -> dict:
        """The arguments of a :class:`TrialWorker` running this spec's trials."""
        return dict(pipeline=self.pipeline, seed=self.seed, cache_dir=self.cache_dir, policy=self.policy,
                    restore=self.memoize, write=self.write, stage_timeout=self.stage_timeout)


# ------------------------------------------------------------------ asking
@dataclasses.dataclass(eq=False)  # identity: a flight is one trial, whatever its values
class Flight:
    """A proposed trial: held for a prefix in flight (no worker yet), or running.

    Attributes:
        x: its point in the unit cube (float32; prefix columns copied from its source).
        params: its raw parameters, ``{stage: {name: value}}``.
        proposed_depth: the stages the optimizer proposed to restore.
        source: the told row whose prefix it reuses (-1: none, or a trial
            in flight: then ``after`` until that one is told).
        after: the trial in flight whose prefix it waits for (``None``: ready).
        warmup: asked while fewer than ``n_warmup`` trials were told.
        eta: cost-cooling exponent of the ask.
        score: acquisition value of the proposal.
        fallback: every candidate scored non-finite (ask's documented fallback).
        n_pending: trials in flight when it was asked.
        ask_seconds: the optimizer's seconds before it (see :class:`TrialDriver`).
        proposed: its dispatch order in the run (-1 outside a driver).
        keys: its prefix keys (what it restores and computes).
        slot: its worker, once it runs.
        wait_started: when it was held (0: never).
        wait_seconds: how long it was held.
        started: when it was given to its worker.
        deadline: the study's wall-clock limit (``time.time()``; ``None``:
            none): its worker interrupts a stage that would run past it.
    """

    x: np.ndarray
    params: dict
    proposed_depth: int
    source: int
    after: "Flight | None"
    warmup: bool
    eta: float
    score: float
    fallback: bool
    n_pending: int
    ask_seconds: float
    proposed: int = -1
    keys: tuple = ()
    slot: int = -1
    wait_started: float = 0.0
    wait_seconds: float = 0.0
    started: float = 0.0
    deadline: float | None = None


def pending_capacity(workers: int) -> int:
    """Pending rows an ask of a ``workers``-worker run can see: the other ``W - 1`` workers'
    running trials and up to ``W`` held trials, rounded up to ``2 W`` (fixed, so ``ask``
    compiles once per W and state capacity)."""
    return 2 * workers


def pack_pending(flights: Sequence[Flight], capacity: int, d: int) -> bo.Pending:
    """The trials in flight as ``ask``'s pending rows (:func:`eeipu_jax.loop.pending_from`), in the order given.

    Row ``p`` is ``flights[p]``: a proposal with ``source == N + p`` reuses its prefix.
    """
    xs = np.stack([f.x for f in flights]) if flights else np.zeros((0, d), np.float32)
    return bo.pending_from(xs, np.asarray([f.proposed_depth for f in flights], np.int32), capacity, d)


def copy_prefix(pipeline: Pipeline, params: dict, x: np.ndarray, depth: int, base_params: Mapping,
                base_x) -> None:
    """Give a proposal the exact prefix of the trial it reuses (in place).

    The first ``depth`` stages' raw values are copied from ``base_params`` and
    their unit-cube columns from ``base_x``: a round trip through the unit cube
    could change a float's last bit, and with it the cache key, so a memoized
    proposal would miss the entry it was proposed for.
    """
    for stage in pipeline.stages[:depth]:
        params[stage.name] = dict(base_params[stage.name])
    mask = pipeline.space.prefix_mask(depth)
    x[mask] = np.asarray(base_x)[mask]


def ask_trial(key, state: bo.BOState, config: bo.BOConfig, pipeline: Pipeline, told: Sequence[Mapping],
              in_flight: Sequence[Flight] = (), capacity: int | None = None) -> tuple[Flight, bo.BOState]:
    """Ask for one trial and take its prefix from the trial it reuses.

    Args:
        key: PRNG key of this ask (split by the caller).
        state: the optimizer's state.
        config: its settings.
        pipeline: the pipeline (its space and stage names).
        told: ``told[row]["params"]``: the raw parameters of each told trial
            (a study's records).
        in_flight: the trials proposed and not yet told, in pending-row order.
        capacity: pending rows (:func:`pending_capacity`); ``None``: ask
            without pending rows (one worker: the single-worker step).

    Returns:
        ``(flight, state)``: the proposal as a :class:`Flight` (``after`` set
        when it reuses the prefix of a trial in flight; ``ask_seconds``: the
        ask's own seconds, to ``block_until_ready``) and the state ``ask``
        returned.
    """
    warmup = int(state.n) < config.n_warmup
    pending = None if capacity is None else pack_pending(in_flight, capacity, config.dim)
    t0 = time.perf_counter()
    prop, state = bo.ask(key, state, config, pending=pending)
    jax.block_until_ready((prop, state))
    seconds = time.perf_counter() - t0
    x = np.array(prop.x, np.float32)
    params = pipeline.space.from_unit(x)
    depth, src = int(prop.memo_depth), int(prop.source)
    n = int(state.X.shape[0])
    after = None
    if depth > 0 and src >= 0:
        if src >= n:  # the prefix a trial in flight is computing (pending row src - n)
            after = in_flight[src - n]
            copy_prefix(pipeline, params, x, depth, after.params, after.x)
        else:
            copy_prefix(pipeline, params, x, depth, told[src]["params"], np.asarray(state.X[src]))
    flight = Flight(x=x, params=params, proposed_depth=depth, source=src if after is None else -1, after=after,
                    warmup=warmup, eta=float(prop.eta), score=float(prop.score), fallback=bool(prop.fallback),
                    n_pending=len(in_flight), ask_seconds=seconds)
    return flight, state


# ---------------------------------------------------------------- records
def trial_record(index: int, flight: Flight, result: TrialResult | None, *, n_stages: int, trial_seconds: float,
                 charged: float, error: str | None = None, committed: Sequence[str] = (),
                 commit_seconds: float = 0.0) -> dict:
    """The ``trials.jsonl`` line of a finished trial, before it is told (the one builder).

    The driver adds ``spent`` (after the tell) and ``time``, and, with remote
    workers, ``worker``, ``proposed``, ``pending``, ``wait_seconds`` and
    ``worker_replaced``; a study's records without ``worker`` are replayed on
    resume (their asks saw nothing in flight).

    Args:
        index: the trial's row in the optimizer's state (tell order).
        flight: the trial as proposed.
        result: what the runner returned; ``None``: its worker died during it
            (a failed trial, every stage cost unknown).
        n_stages: the pipeline's stages.
        trial_seconds: the trial's own wall seconds (restore, stages, cache writes).
        charged: what it costs the budget.
        error: why ``result`` is ``None``.
        committed: keys its worker wrote once the driver decided to keep them.
        commit_seconds: the seconds of those writes.
    """
    if result is None:
        unknown = [math.nan] * n_stages
        status, y, depth = "failed", math.nan, 0
        fields = dict(stage_costs=unknown, stage_seconds=unknown, restore_seconds=0.0, save_seconds=0.0,
                      compile_seconds=0.0, metrics={}, error=error, failed_stage=None, traceback=None, saved_keys=[])
    else:
        status, y, depth = result.status, result.objective, result.memo_depth
        fields = dict(stage_costs=result.stage_costs, stage_seconds=result.stage_seconds,
                      restore_seconds=result.restore_seconds, save_seconds=result.save_seconds + commit_seconds,
                      compile_seconds=result.compile_seconds, metrics=result.metrics, error=result.error, failed_stage=result.failed_stage,
                      traceback=result.traceback, saved_keys=list(result.saved_keys) + list(committed))
    return {
        "index": index,
        "status": status,
        "y": y,
        "x": flight.x.astype(float).tolist(),
        "params": flight.params,
        "memo_depth": depth,
        "proposed_depth": flight.proposed_depth,
        "source": flight.source,
        **fields,
        "charged": charged,
        "trial_seconds": trial_seconds,
        "ask_seconds": flight.ask_seconds,
        "cache_keys": list(flight.keys),
        "eta": flight.eta,
        "score": flight.score,
        # every candidate scored non-finite: ask fell back to its documented choice
        "fallback": flight.fallback,
        "warmup": flight.warmup,
    }


def as_failed(record: Mapping, reason: str) -> dict:
    """``record`` turned into a failed trial the optimizer accepts, ``reason`` first in its error.

    The driver's safety net for a trial whose values ``loop.tell`` refuses (an
    objective or a cost beyond float32): its objective becomes NaN, costs
    that are not finite numbers of float32 range become NaN (unknown; a
    memoized stage with such a cost is told as computed, ``memo_depth``
    lowered to the stages before it) and its charge is kept within float32.
    """
    rec = dict(record)
    costs = [float_or_nan(c) for c in rec["stage_costs"]]
    costs = [c if math.isfinite(c) and 0.0 <= c <= F32_MAX else math.nan for c in costs]
    depth = int(rec["memo_depth"])
    unknown = [j for j in range(depth) if math.isnan(costs[j])]
    charged = float_or_nan(rec["charged"])
    rec.update(status="failed", y=math.nan, stage_costs=costs, memo_depth=unknown[0] if unknown else depth,
               charged=charged if math.isfinite(charged) and 0.0 <= charged <= F32_MAX else 0.0,
               error=reason + (f"; {rec['error']}" if rec.get("error") else ""))
    return rec


def tell_record(state: bo.BOState, rec: Mapping) -> bo.BOState:
    """Tell the optimizer a trial from its record's ``x``, ``y``, ``stage_costs``, ``memo_depth``
    and ``charged`` (recorded ``None`` read as NaN: a failed trial, a stage that never ran)."""
    return bo.tell(
        state,
        np.asarray(rec["x"], np.float32),
        float_or_nan(rec["y"]),
        np.asarray([float_or_nan(c) for c in rec["stage_costs"]]),
        int(rec["memo_depth"]),
        float(rec["charged"]),
    )


def tell_or_fail(state: bo.BOState, record: dict) -> tuple[bo.BOState, dict]:
    """Tell a finished trial; one whose values the optimizer refuses (``loop.tell`` keeps refusing
    them from API callers) is told, and returned, as a failed trial (:func:`as_failed`) instead of
    stopping the run: a value a stage produced never aborts a study, nor every resume of it.

    Returns:
        ``(state, record)``: the record as told (the one to write).
    """
    try:
        return tell_record(state, record), record
    except ValueError as e:
        record = as_failed(record, f"the optimizer refused the trial's values ({e})")
        logger.warning("trial %s failed: %s", record.get("index", ""), record["error"])
        return tell_record(state, record), record


# --------------------------------------------------------- the keep-set
_prefix_pool = jit(bo.prefix_pool, static_argnums=1)


def pool_keys(state: bo.BOState, config: bo.BOConfig, records: Sequence[Mapping]) -> set[str]:
    """Cache keys of the optimizer's prefix pool (:func:`eeipu_jax.loop.prefix_pool`).

    Under ``"top_q"`` the stage cache keeps these: the depth-``j`` prefix key
    of each pool entry of depth ``j``, i.e. exactly the prefixes the next
    ``ask`` may propose, so a memoized proposal is never a cache miss.
    ``records[i]`` is trial ``i`` (row ``i`` of ``state``).
    """
    pool = _prefix_pool(state, config)
    src, ok = np.asarray(pool.source), np.asarray(pool.ok)
    return {records[int(r)]["cache_keys"][j] for j in range(src.shape[0]) for r in src[j][ok[j]]}


def keep_keys(state: bo.BOState, config: bo.BOConfig, records: Sequence[Mapping],
              in_flight: Sequence[Flight] = ()) -> set[str]:
    """What a ``"top_q"`` cache keeps: the prefix pool, and every prefix a trial in flight will restore
    (so nothing a held or running trial counts on is pruned)."""
    keep = pool_keys(state, config, records)
    for f in in_flight:
        keep.update(f.keys[: f.proposed_depth])
    return keep


def enters_pool(state: bo.BOState, config: bo.BOConfig, x, objective: float) -> bool:
    """Whether trial ``state.n`` at ``x`` with ``objective`` would be in the prefix pool once told.

    Only the ranks matter, so its costs are placeholders. A finished trial's
    stage outputs are written only then (or when a held trial waits for them).
    """
    if not math.isfinite(objective):
        return False
    i = int(state.n)
    told = bo.tell(state, x, objective, np.ones(config.n_stages), 0)
    pool = _prefix_pool(told, config)
    return bool(np.any(np.asarray(pool.ok) & (np.asarray(pool.source) == i)))


def prefix_written(record: Mapping, depth: int) -> bool:
    """Whether the trial of ``record`` left its depth-``depth`` prefix in the cache: it restored it,
    or wrote it (a trial that failed in a later stage may have written it under an eager policy)."""
    return depth <= record["memo_depth"] or record["cache_keys"][depth - 1] in record["saved_keys"]


# --------------------------------------------------------------- counters
def duplicate_computations(records: Sequence[Mapping], n_stages: int) -> int:
    """Stage outputs computed more than once among ``records``.

    Stage ``j < K - 1`` of a trial was computed (not restored) when
    ``memo_depth <= j`` and the trial got past it (an ``ok`` trial, or a
    failed one whose ``failed_stage`` is later); its output is identified by
    the prefix key ``cache_keys[j]``. Each key computed ``c > 1`` times counts
    ``c - 1``. The last stage has no key (its output is never cached).
    """
    counts: dict[str, int] = {}
    for r in records:
        keys = r.get("cache_keys") or []
        if r["status"] == "ok":
            done = n_stages - 1
        elif r.get("failed_stage") is not None:
            done = min(int(r["failed_stage"]), n_stages - 1)
        else:  # the worker died: what it computed is unknown and was not written
            done = 0
        for j in range(int(r["memo_depth"]), min(done, len(keys))):
            counts[keys[j]] = counts.get(keys[j], 0) + 1
    return sum(c - 1 for c in counts.values() if c > 1)


def run_counters(records: Sequence[Mapping], n_stages: int) -> dict:
    """The parallel counters of a run, from its records (so a resumed run keeps counting).

    Returns:
        ``duplicate_stage_computations`` (:func:`duplicate_computations`),
        ``waited_for_prefix`` (trials held for the prefix of a trial in
        flight: those with ``wait_seconds > 0``) and ``worker_restarts``
        (workers replaced: records with ``worker_replaced``; records written
        before that field existed count none).
    """
    return {
        "duplicate_stage_computations": duplicate_computations(records, n_stages),
        "waited_for_prefix": sum(1 for r in records if (r.get("wait_seconds") or 0.0) > 0.0),
        "worker_restarts": sum(1 for r in records if r.get("worker_replaced", False)),
    }


def summarize(records: Sequence[Mapping], *, pipeline: str, method: str, seed: int, budget: float,
              charge_optimizer: bool) -> dict:
    """A study's summary from its records: trials, failures, memoized trials, spend, the best trial,
    the share of cache I/O and the optimizer's seconds and share (of optimizer plus trial seconds)."""
    spent = float(records[-1]["spent"]) if records else 0.0
    io = sum(r["restore_seconds"] + r["save_seconds"] for r in records)
    optimizer, wall = optimizer_seconds(list(records))
    best = best_record(list(records))
    return {
        "pipeline": pipeline,
        "method": method,
        "seed": seed,
        "budget": budget,
        "spent": spent,
        "n_trials": len(records),
        "n_failed": sum(1 for r in records if r["status"] != "ok"),
        "n_memoized": sum(1 for r in records if r["memo_depth"] > 0),
        "n_fallback": sum(1 for r in records if r.get("fallback", False)),
        "best": None if best is None else {k: best[k] for k in ("index", "y", "params", "metrics")},
        "cache_io_seconds": io,
        "cache_io_fraction": io / spent if spent > 0 else 0.0,
        # JAX's tracing and compiling in the stages: set-up, not charged (records without the field: 0)
        "compile_seconds": sum(float(r.get("compile_seconds", 0.0)) for r in records),
        "charge_optimizer": charge_optimizer,
        "optimizer_seconds": optimizer,
        "optimizer_fraction": optimizer / wall if wall > 0 else 0.0,
    }


# ------------------------------------------------------------------ resume
def resume(spec: RunSpec) -> tuple[bo.BOState, Any, list[dict]]:
    """``(state, key, records)`` of a run: its newest checkpoint plus every recorded trial re-told.

    Trials recorded after the checkpoint are told again, nothing reruns. Those
    recorded in process (no ``worker`` field) have their asks replayed too
    (same key splits, same GP warm starts), so the run continues exactly as
    if uninterrupted; a trial run by a remote worker saw other trials in
    flight when it was asked, so it is told only, and the key is then derived
    afresh (its splits were spent on those asks). The caller holds the run
    directory's lock.

    A checkpoint of more trials than ``trials.jsonl`` holds (its last lines
    were lost, e.g. a truncated last line removed) is not used: the newest
    checkpoint the records cover is, or the state is rebuilt from the records
    (:func:`~eeipu_jax.runtime.rundir.restore_checkpoint`), and the lost
    trials run again.

    Raises:
        ConfigError: a record that does not fit this run (its line named), or
            disagrees with the checkpoint or with the run's seed
            (:func:`check_records`): the run directory was altered.
        StorageError: the repaired checkpoint cannot be written.
    """
    trials_path = os.path.join(spec.out_dir, "trials.jsonl")
    fresh = initial_state(spec.config, spec.budget, spec.params)
    records = read_trials(trials_path, repair=True)
    got = rundir.restore_checkpoint(spec.out_dir, fresh, max_n=len(records))
    state, key = got if got is not None else (fresh, jax.random.key(spec.seed))
    n = int(state.n)
    for rec in records:
        if len(rec["cache_keys"]) != spec.pipeline.n_stages - 1:
            raise ConfigError(f"{trials_path} line {rec['index'] + 1}: {len(rec['cache_keys'])} cache keys, expected "
                              f"{spec.pipeline.n_stages - 1} (one per stage but the last); the file was edited")
    check_records(spec, state, records)
    retold_remote = False
    for rec in records[n:]:
        if "worker" in rec:
            state = _retell(state, rec, trials_path)
            retold_remote = True
            continue
        key, k_ask = jax.random.split(key)
        prop, state = bo.ask(k_ask, state, spec.config)
        if not np.allclose(np.asarray(prop.x), np.asarray(rec["x"], np.float32), atol=1e-6):
            logger.warning("replayed proposal %d differs from the recorded one; telling the recorded trial",
                           rec["index"])
        state = _retell(state, rec, trials_path)
    if retold_remote:
        key = jax.random.fold_in(key, len(records))
    if len(records) > n:
        logger.info("re-told %d trial(s) recorded after the last checkpoint", len(records) - n)
        rundir.save_checkpoint(spec.out_dir, state, key)
    return state, key, records


def _retell(state: bo.BOState, rec: Mapping, trials_path: str) -> bo.BOState:
    """:func:`tell_record`, a record that does not fit the optimizer's state refused naming its line."""
    try:
        return tell_record(state, rec)
    except ValueError as e:
        raise ConfigError(f"{trials_path} line {rec['index'] + 1} does not fit this run: {e}") from None


def check_records(spec: RunSpec, state: bo.BOState, records: Sequence[Mapping]) -> None:
    """Refuse records that are not the run's: a hand-edited ``trials.jsonl`` or ``config.json``.

    * Each record's ``cache_keys`` must be the keys of its ``params`` under
      the run's seed and pipeline name and version: a seed changed in
      ``config.json`` after trials ran (the stages' keys, hence their outputs,
      would differ from the recorded trials'), or edited parameters, fail.
    * Each record the checkpoint holds (rows ``0 .. n-1`` of ``state``) must
      have the checkpoint's values (status, objective, point, memo depth,
      stage costs, charge): an edited ``y`` would otherwise be shown by
      ``Study.trials`` while the optimizer goes on with the old value.

    Refusing (rather than trusting the checkpoint and warning) keeps the
    records the one account of the run: the message names the trial and the
    field; restore the file, or delete ``checkpoints/`` to rebuild the
    optimizer from the records as they are.

    Raises:
        ConfigError: the first disagreement, naming the trial.
    """
    where = os.path.join(spec.out_dir, "trials.jsonl")
    for rec in records:
        try:
            keys = list(prefix_keys(spec.pipeline, rec["params"], spec.seed))
        except (KeyError, TypeError, ValueError, AttributeError):
            keys = None
        if keys != list(rec.get("cache_keys") or []):
            raise ConfigError(
                f"{where}: trial {rec['index']} was run with other cache keys than its parameters give under the "
                f"run's seed {spec.seed} and pipeline {spec.pipeline.name!r} version {spec.pipeline.version!r}: "
                "the seed in config.json or the trial's parameters were changed after it ran (the run directory "
                "was altered; a run's seed is fixed: start a new run for another one)"
            )
    n = int(state.n)
    if not n:
        return
    told = {
        "status": np.where(np.asarray(state.failed[:n]), "failed", "ok"),
        "y": bo.objective_values(state),
        "x": np.asarray(state.X[:n], np.float64),
        "memo_depth": np.asarray(state.memo_depth[:n]),
        "stage_costs": np.asarray(state.stage_costs[:n], np.float64),
        "charged": np.asarray(state.charged[:n], np.float64),
    }
    for i, rec in enumerate(records[:n]):
        got = {
            "status": "ok" if math.isfinite(float_or_nan(rec["y"])) else "failed",
            "y": float_or_nan(rec["y"]),
            "x": np.asarray(rec["x"], np.float32).astype(np.float64),
            "memo_depth": int(rec["memo_depth"]),
            "stage_costs": np.asarray([float_or_nan(c) for c in rec["stage_costs"]], np.float32).astype(np.float64),
            "charged": float(np.float32(float_or_nan(rec["charged"]))),
        }
        for field, value in got.items():
            want = told[field][i]
            same = (value == want if field in ("status", "memo_depth") else
                    np.allclose(value, want, rtol=1e-9, atol=0.0, equal_nan=True) if field == "y" else
                    np.array_equal(value, want, equal_nan=True))
            if not same:
                raise ConfigError(
                    f"{where}: trial {i} has {field} {np.asarray(value).tolist()!r} but the checkpoint has "
                    f"{np.asarray(want).tolist()!r}: the records were altered after the trial ran (restore "
                    f"trials.jsonl, or delete {os.path.join(spec.out_dir, 'checkpoints')} to rebuild the "
                    "optimizer from the records as they are)"
                )


# ----------------------------------------------------------------- workers
class TrialWorker:
    """Runs trials of one pipeline: in this process (:class:`InProcess`) or as a Ray actor.

    Its :class:`~eeipu_jax.runtime.runner.Runner` prepares the pipeline once
    and keeps the stages compiled from trial to trial. Under a lazy
    (``"top_q"``) cache policy the outputs of a trial are held in the worker
    until the driver, which alone knows the optimizer's pool and the trials
    waiting for a prefix, says whether to write them (:meth:`commit`).

    Args:
        pipeline: the pipeline.
        seed: the run seed.
        cache_dir: the stage cache directory (shared by every worker).
        policy: the cache policy.
        restore: restore cached prefixes (memoizing methods).
        write: write stage outputs.
        stage_timeout: per-stage limit in seconds.
    """

    def __init__(self, pipeline: Pipeline, seed: int, cache_dir: str, policy: CachePolicy, restore: bool,
                 write: bool, stage_timeout: float | None):
        self.cache = StageCache(cache_dir, policy)
        self.runner = Runner(pipeline, seed=seed, cache=self.cache, restore=restore, write=write,
                             stage_timeout=stage_timeout)
        self._held: dict[int, tuple[TrialResult, dict]] = {}

    def use_cache(self, cache: StageCache) -> None:
        """Read and write through ``cache``: an in-process worker shares the driver's, so a serial
        study counts one set of cache statistics."""
        self.cache = self.runner.cache = cache

    def pid(self) -> int:
        """The worker's process id (fault tests kill it)."""
        return os.getpid()

    def warm(self) -> int:
        """Start JAX's backend and prepare the pipeline now (its data loaded once), untimed: set-up
        a worker's first trial is not charged; returns the process id."""
        jax.devices()
        self.runner.data()
        return os.getpid()

    def devices(self) -> list[str]:
        """The JAX devices this worker sees."""
        return [str(d) for d in jax.devices()]

    def run(self, token: int, params: Mapping, deadline: float | None = None) -> TrialResult:
        """Run one trial; its outputs are held under ``token`` when writes are lazy (the result
        returned carries no outputs: they stay here until :meth:`commit`). ``deadline``: the
        study's wall-clock limit (``time.time()``), which interrupts a stage that runs past it."""
        lazy = self.runner.write and not self.cache.policy.eager
        result = self.runner.run(params, keep_outputs=lazy, admit=(lambda y: False) if lazy else None,
                                 deadline=deadline)
        if lazy and result.ok:
            self._held[token] = (result, nested_params(self.runner.pipeline, params))
        return dataclasses.replace(result, outputs=None)

    def commit(self, token: int, write: bool) -> tuple[tuple, float]:
        """Write (or drop) the stage outputs held for trial ``token``.

        Returns:
            ``(saved_keys, save_seconds)``.
        """
        held = self._held.pop(token, None)
        if not write or held is None:
            return (), 0.0
        result, params = held
        saved, seconds = [], 0.0
        for j in range(result.memo_depth, len(self.runner.pipeline.stages) - 1):
            key, secs = self.runner.save_output(j, result.outputs[j], params, result.cache_keys, result.stage_costs)
            seconds += secs
            saved += [key] if key else []
        return tuple(saved), seconds

    def stats(self) -> dict:
        """This worker's cache counters."""
        return self.cache.stats.to_dict()


@dataclasses.dataclass
class Outcome:
    """What a worker gave back for a trial.

    Attributes:
        result: the runner's result; ``None``: the worker died during the trial.
        error: why there is no result.
        replaced: the worker was lost and a new one took its slot.
    """

    result: TrialResult | None
    error: str | None = None
    replaced: bool = False


class Executor:
    """Where a :class:`TrialDriver`'s trials run: ``workers`` slots, one trial at a time each.

    An executor places workers and runs the trials it is given; it decides
    nothing (what to run, what to write and what to record are the
    driver's). Subclasses: :class:`InProcess`,
    :class:`eeipu_jax.runtime.parallel.RayExecutor`.

    Attributes:
        workers: trials that can run at once.
        concurrent: trials run elsewhere while the driver works: it asks with
            the trials in flight as pending rows, and gives a freed worker its
            next trial before it writes the last one's record.
    """

    workers: int = 1
    concurrent: bool = False

    def start(self, spec: RunSpec, cache: StageCache) -> None:
        """Place the workers (the driver's ``cache`` is the one to share, where that is possible)."""
        raise NotImplementedError

    def submit(self, flight: Flight) -> None:
        """Start ``flight`` on worker ``flight.slot``."""
        raise NotImplementedError

    def wait(self) -> tuple[Flight, Outcome]:
        """The next trial to finish, and what its worker gave back."""
        raise NotImplementedError

    def commit(self, flight: Flight, write: bool) -> tuple[tuple, float, bool]:
        """Write (or drop) the stage outputs ``flight``'s worker holds.

        Returns:
            ``(saved_keys, seconds, replaced)``: ``replaced`` when the worker
            was lost meanwhile (nothing written) and a new one took its slot.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Stop the workers (those in this process stay, for the next run)."""

    def cache_stats(self, cache: StageCache, final: bool) -> dict | None:
        """``cache_stats.json``: after a trial (``None``: not rewritten then) or at the end."""
        return cache.stats.to_dict()

    def describe(self) -> dict | None:
        """The summary's ``parallel`` entry, without the counters (``None``: none)."""
        return None


class InProcess(Executor):
    """One :class:`TrialWorker` in this process, run synchronously: a serial study.

    :meth:`submit` only queues the trial; :meth:`wait` runs it, so the driver
    has recorded and checkpointed the previous trial before the next one
    starts.

    Args:
        worker: the worker (a study keeps one, so the pipeline is prepared
            once per process).
    """

    def __init__(self, worker: TrialWorker):
        self.worker = worker
        self._queued: Flight | None = None

    def start(self, spec: RunSpec, cache: StageCache) -> None:
        self.worker.use_cache(cache)

    def submit(self, flight: Flight) -> None:
        self._queued = flight

    def wait(self) -> tuple[Flight, Outcome]:
        flight, self._queued = self._queued, None
        return flight, Outcome(self.worker.run(flight.proposed, flight.params, flight.deadline))

    def commit(self, flight: Flight, write: bool) -> tuple[tuple, float, bool]:
        saved, seconds = self.worker.commit(flight.proposed, write)
        return saved, seconds, False


# ------------------------------------------------------------------ driver
class TrialDriver:
    """Runs a study's trials until its budget is spent or ``max_trials`` more were proposed.

    One loop for every executor: give each free worker a trial (held trials
    whose prefix is written first, in proposal order; then new proposals while
    the budget lasts and fewer than ``workers`` trials are held), wait for one
    to finish, write or drop its outputs, tell it, record it. A proposal that
    reuses the prefix of a trial in flight is held without a worker (the
    worker that asked is asked again; held trials are pending rows of that
    ask) until that trial is told; if its prefix was not written (it failed),
    the first held trial computes it and the others wait for that one.

    Finished trials are told in completion order: a trial's ``index`` is its
    row in the optimizer's state, ``proposed`` its dispatch order. Each
    trial's ``ask_seconds`` are the optimizer's seconds since the previous
    ask of this process: the tells (and pool checks) in between, and its own
    ask. The budget: trials are proposed while ``spent < budget``; those in
    flight when it runs out finish and are recorded, so a run may overshoot
    by up to ``W`` trials.

    Args:
        spec: the run.
        executor: where trials run.
        progress: show a progress bar (tqdm).
        checkpoint_seconds: least seconds between checkpoints (default: 0,
            after every trial, in process; :data:`CHECKPOINT_SECONDS` with
            concurrent workers).
    """

    def __init__(self, spec: RunSpec, executor: Executor, *, progress: bool = False,
                 checkpoint_seconds: float | None = None):
        self.spec = spec
        self.executor = executor
        self.progress = progress
        if checkpoint_seconds is None:
            checkpoint_seconds = CHECKPOINT_SECONDS if executor.concurrent else 0.0
        self.checkpoint_seconds = checkpoint_seconds
        self.capacity = pending_capacity(executor.workers) if executor.concurrent else None
        # the driver decides what is written under a lazy policy (its pool, the trials waiting)
        self.lazy = spec.write and not spec.policy.eager
        self.trials_path = os.path.join(spec.out_dir, "trials.jsonl")
        self.stats_path = os.path.join(spec.out_dir, "cache_stats.json")

    # --------------------------------------------------------------- run
    def run(self, state: bo.BOState, key, records: list[dict], max_trials: int | None = None,
            timeout: float | None = None, total_trials: int | None = None) -> dict:
        """Run trials from a resumed ``(state, key, records)`` (:func:`resume`); returns the summary
        (also written to ``summary.json``), with the cache's statistics and ``stopped`` (what ended
        this call: ``"budget"``, ``"max_trials"``, ``"total_trials"`` or ``"timeout"``).

        ``max_trials`` counts the trials of this call; ``total_trials`` those of
        the study (``records`` included): no trial is proposed once it holds that many.

        ``timeout``: wall seconds for this call. No trial is proposed after it
        (a proposal whose ask ends after it is dropped, state and key as before
        the ask), and a stage still running then is interrupted (the
        runner's ``deadline``: ``SIGALRM`` on the main thread, else when the
        stage returns) and its trial recorded as failed; trials in flight on
        remote workers are interrupted the same way in their processes.
        """
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        spec = self.spec
        self.state, self.key, self.records = state, key, records
        self.max_trials = max_trials
        self.total_trials = total_trials
        self.deadline = None if timeout is None else time.time() + float(timeout)
        self._timed_out = False
        self.started = self.proposed = len(records)
        self.free = list(range(self.executor.workers))
        self.running: list[Flight] = []
        self.held: list[Flight] = []
        self._optimizer_seconds = 0.0  # tells and pool checks since the last ask
        self._dirty = False  # asked or told since the last checkpoint
        self._last_checkpoint = time.perf_counter()
        self._best = best_record(records)
        self._hits = sum(1 for r in records if r["memo_depth"] > 0)
        self._fails = sum(1 for r in records if r["status"] != "ok")
        with writing(f"the stage cache {spec.cache_dir}"):
            self.cache = StageCache(spec.cache_dir, spec.policy)
        for rec in records:
            self.cache.record_trial(float_or_nan(rec["y"]), rec["cache_keys"], prune=False)
        self.cache.set_keep(pool_keys(self.state, spec.config, records))
        self.cache.prune()
        budget = float(spec.budget)
        workers = f" x{self.executor.workers}" if self.executor.concurrent else ""
        try:
            self.executor.start(spec, self.cache)
            self.bar = tqdm(total=budget, initial=min(float(state.spent), budget), unit="s",
                            disable=not self.progress, dynamic_ncols=True,
                            desc=f"{spec.pipeline.name}/{spec.method}{workers}",
                            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
            self._postfix()
            with self.bar, logging_redirect_tqdm():
                while True:
                    self._dispatch()
                    if not self.running:
                        break
                    flight, outcome = self.executor.wait()
                    self.running.remove(flight)
                    record = self._complete(flight, outcome)
                    self._release_waiters(flight, record)
                    self.free.append(flight.slot)
                    if self.executor.concurrent:
                        # the freed worker runs a trial that waited for this prefix, or takes a new one,
                        # before the record is written: the workers need not wait for the driver's disk
                        self._dispatch()
                    self._persist(record)
                if self._dirty:
                    self._checkpoint()
        finally:
            self.executor.close()
        self.cache.set_keep(pool_keys(self.state, spec.config, self.records))
        self.cache.prune()
        with writing(self.stats_path):
            atomic_write_json(self.stats_path, self.executor.cache_stats(self.cache, final=True))
        summary = summarize(self.records, pipeline=spec.pipeline.name, method=spec.method, seed=spec.seed,
                            budget=float(spec.budget), charge_optimizer=spec.charge_optimizer)
        summary["cache"] = self.cache.summary()
        summary["stopped"] = ("timeout" if self._timed_out else
                              "budget" if float(self.state.spent) >= budget else
                              "total_trials" if total_trials is not None and self.proposed >= total_trials else
                              "max_trials")
        described = self.executor.describe()
        if described is not None:
            summary["parallel"] = {**described, **run_counters(self.records, spec.pipeline.n_stages)}
        summary_path = os.path.join(spec.out_dir, "summary.json")
        with writing(summary_path):
            atomic_write_json(summary_path, jsonable(summary))
        return summary

    # ----------------------------------------------------------- dispatch
    def _in_flight(self) -> list[Flight]:
        """The trials proposed and not told, in pending-row order: running (by start), then held."""
        return self.running + self.held

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def _can_start(self) -> bool:
        """No trial starts once the study's time is over (held ones are dropped, as at a kill)."""
        if self._past_deadline():
            self._timed_out = True
            return False
        return True

    def _can_propose(self) -> bool:
        return self._can_start() and float(self.state.spent) < self.spec.budget and (
            self.max_trials is None or self.proposed - self.started < self.max_trials) and (
            self.total_trials is None or self.proposed < self.total_trials)

    def _dispatch(self) -> None:
        """Give the free workers trials: first the held trials whose prefix is written (in proposal
        order), then new proposals while the budget lasts and fewer than ``workers`` trials are held."""
        for h in [h for h in self.held if h.after is None]:
            if not self.free or not self._can_start():
                return
            self.held.remove(h)
            self._launch(h, self.free.pop(0))
        while self.free and self._can_propose() and len(self.held) < self.executor.workers:
            self._propose()

    def _propose(self) -> None:
        """Ask for one trial: it runs on the first free worker, or is held (the worker stays free
        and is asked again) when it reuses the prefix of a trial in flight."""
        before = self.state, self.key
        self.key, k_ask = jax.random.split(self.key)
        f, self.state = ask_trial(k_ask, self.state, self.spec.config, self.spec.pipeline, self.records,
                                  self._in_flight(), self.capacity)
        if self._past_deadline():  # the time ran out during the ask: as if it had not been made
            self.state, self.key = before
            self._timed_out = True
            return
        self._dirty = True
        f.ask_seconds += self._optimizer_seconds
        self._optimizer_seconds = 0.0
        f.proposed = self.proposed
        self.proposed += 1
        f.keys = tuple(prefix_keys(self.spec.pipeline, f.params, self.spec.seed))
        if f.after is not None:
            f.wait_started = time.perf_counter()
            self.held.append(f)
        else:
            self._launch(f, self.free.pop(0))

    def _launch(self, f: Flight, slot: int) -> None:
        f.slot = slot
        f.started = time.perf_counter()
        f.wait_seconds = f.started - f.wait_started if f.wait_started else 0.0
        f.deadline = self.deadline
        self.running.append(f)
        self.executor.submit(f)

    # ----------------------------------------------------------- complete
    def _complete(self, f: Flight, outcome: Outcome) -> dict:
        """Write (or drop) the trial's held outputs, tell it, and return its record (in memory: the
        next ask may reuse its prefix; on disk once persisted)."""
        spec = self.spec
        i = int(self.state.n)
        result, replaced = outcome.result, outcome.replaced
        committed, commit_seconds = (), 0.0
        if result is None:  # the worker died: one failed trial, charged its wall seconds so far
            trial_seconds = time.perf_counter() - f.started
        else:
            if self.lazy and result.ok:
                t0 = time.perf_counter()
                write = any(h.after is f for h in self.held) or enters_pool(self.state, spec.config, f.x,
                                                                           result.objective)
                self._optimizer_seconds += time.perf_counter() - t0
                committed, commit_seconds, lost = self.executor.commit(f, write)
                replaced = replaced or lost
            trial_seconds = result.charged + commit_seconds
        charged = trial_seconds + f.ask_seconds if spec.charge_optimizer else trial_seconds
        record = trial_record(i, f, result, n_stages=spec.pipeline.n_stages, trial_seconds=trial_seconds,
                              charged=charged, error=outcome.error, committed=committed,
                              commit_seconds=commit_seconds)
        t0 = time.perf_counter()
        self.state, record = tell_or_fail(self.state, record)
        jax.block_until_ready(self.state)
        self._optimizer_seconds += time.perf_counter() - t0
        self._dirty = True
        record.update(spent=float(self.state.spent), time=time.time())
        if self.executor.concurrent:
            record.update(worker=f.slot, proposed=f.proposed, pending=f.n_pending, wait_seconds=f.wait_seconds,
                          worker_replaced=replaced)
        self.records.append(record)
        for h in self.held:  # trials held for this one's prefix: their source is now row i
            if h.after is f:
                h.source = i
        return record

    def _release_waiters(self, f: Flight, record: dict) -> None:
        """The trials held for ``f``'s prefix are ready once it is written; if it was not (the trial
        failed), the first of them computes it and the others wait for that one."""
        waiters = [h for h in self.held if h.after is f]
        ready = prefix_written(record, max((h.proposed_depth for h in waiters), default=0))
        for n, h in enumerate(waiters):
            h.after = None if ready or n == 0 else waiters[0]

    # ------------------------------------------------------------ persist
    def _persist(self, record: dict) -> None:
        """Append the trial's line (fsynced), checkpoint (every ``checkpoint_seconds`` at most), apply
        the cache policy, show progress."""
        i = record["index"]
        with writing(f"trial {i} to {self.trials_path}"):  # the file is left as it was: the trial reruns
            self.records[i] = append_line(self.trials_path, record)
        where = f" (proposed {record['proposed']}, worker {record['worker']})" if "worker" in record else ""
        logger.info("trial %d%s %s: y=%s memo_depth=%d charged=%.3fs spent=%.1f/%gs%s", i, where, record["status"],
                    f"{float_or_nan(record['y']):.6g}", record["memo_depth"], record["charged"], record["spent"],
                    self.spec.budget, f" ({record['error']})" if record["error"] else "")
        if time.perf_counter() - self._last_checkpoint >= self.checkpoint_seconds:
            self._checkpoint()
        self.cache.set_keep(keep_keys(self.state, self.spec.config, self.records, self._in_flight()))
        self.cache.record_trial(float_or_nan(record["y"]), record["cache_keys"])
        stats = self.executor.cache_stats(self.cache, final=False)
        if stats is not None:  # counters only: no directory scan per trial
            with writing(self.stats_path):
                atomic_write_json(self.stats_path, stats)
        rec = self.records[i]
        self._hits += rec["memo_depth"] > 0
        self._fails += rec["status"] != "ok"
        if rec["status"] == "ok" and (self._best is None or rec["y"] > self._best["y"]):
            self._best = rec
        self._postfix()
        self.bar.update(max(0.0, min(rec["charged"], self.bar.total - self.bar.n)))  # the last may overshoot

    def _checkpoint(self) -> None:
        # every told trial is on disk by now (one completion is told, then persisted, at a time)
        rundir.save_checkpoint(self.spec.out_dir, self.state, self.key)
        self._last_checkpoint = time.perf_counter()
        self._dirty = False

    def _postfix(self) -> None:
        self.bar.set_postfix(trial=len(self.records), spent=f"{float(self.state.spent):.1f}/{self.spec.budget:g}s",
                             best=f"{self._best['y']:.4g}" if self._best else "-", hits=self._hits,
                             failed=self._fails, refresh=False)

"""Parallel trials on Ray: W trials of one study at once, memoization-aware with trials in flight.

This module owns the execution of a :class:`~eeipu_jax.runtime.study.Study`
on several workers (``study.optimize(workers=W, address=...)``):

* **Ray.** ``ray`` is an optional dependency (``pip install 'eeipu-jax[ray]'``),
  imported only here and only when a parallel study runs (:func:`require_ray`).
  :func:`connect` joins the cluster at ``address`` or, without one, starts a
  local Ray bound to the loopback interface only (no dashboard; the node's IP
  is ``127.0.0.1``, so the GCS, raylet, object manager and worker ports listen
  on localhost: Ray has no authentication a network could rely on). A Ray
  already initialized in the process is used as it is.
* **Workers.** W actors (:class:`TrialWorker`), each with the declared
  resources of one trial (``num_cpus``, ``num_gpus``: Ray gives a GPU actor
  its own ``CUDA_VISIBLE_DEVICES``, so JAX in it sees only its device). An
  actor keeps the pipeline prepared and the stages' jitted functions compiled
  from trial to trial. All workers read and write one stage cache directory,
  which on a cluster must be a path every node sees (a shared POSIX
  filesystem: the cache's writes are atomic renames, its reads verify
  checksums).
* **Driver.** The driver (this process) holds the run directory's lock, asks,
  tells, appends ``trials.jsonl`` and checkpoints exactly as the single-process
  loop does; only the trials run elsewhere. When a worker frees up, ``ask``
  sees the trials still running as pending rows (:class:`eeipu_jax.loop.Pending`:
  their inputs and the stages they restore), so it neither re-proposes them
  nor ignores that their prefixes will soon be cached. Finished trials are
  told in completion order; a trial's ``index`` is its row in the optimizer's
  state (completion order), ``proposed`` its dispatch order.
* **Single flight.** No two workers compute the same stage prefix at once. A
  proposal that reuses the prefix of a trial still running (``source`` in the
  pending rows) is held, without a worker, until that trial has finished and
  its prefix is written; then it runs on the first free worker and restores
  it. The worker that asked for it is asked again meanwhile (held trials are
  pending rows of that ask); held trials go first when a worker frees up, and
  at most ``W`` are held at once. If the prefix was not written (the trial
  failed), the first held trial computes it and the others wait for it. The
  optimizer is not asked to avoid such prefixes: waiting for a prefix that is
  being computed is cheaper than computing another one, and the cost model
  already prices the restored stages at ``epsilon``. Under ``"top_q"`` the
  cache keeps, besides the optimizer's prefix pool, every prefix a held or
  running trial is going to restore, so nothing it waits for is pruned.
  ``duplicate_stage_computations`` in the summary counts stage outputs
  computed more than once (target: zero).
* **Faults.** A worker that dies mid-trial (its process killed, its node
  lost) is recorded once, as a failed trial charged its wall seconds so far,
  and replaced by a new actor; the study goes on. A killed driver loses only
  the trials in flight (never recorded, so never duplicated): on resume the
  checkpoint and ``trials.jsonl`` restore every finished trial, as in the
  single-process loop, and new trials are proposed.

Budget: trials are dispatched while the budget is not spent; those in flight
when it runs out finish and are recorded, so a parallel run may overshoot by
up to ``W - 1`` trials more than a sequential one. The first ``n_warmup``
told trials are random, and trials asked while fewer than ``n_warmup`` are
told are random too, so up to ``n_warmup + W - 1`` random trials run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from eeipu_jax import loop as bo
from eeipu_jax.runtime.cache import CachePolicy, StageCache, prefix_keys
from eeipu_jax.runtime.pipeline import Pipeline
from eeipu_jax.runtime.runner import Runner, TrialResult

#: Seconds between two checkpoints of a parallel run at least (and one at its end). A parallel
#: driver re-tells the trials recorded after its checkpoint without replaying asks, which restores
#: the optimizer exactly, so frequent checkpoints only shorten a resume; they cost the driver
#: ~0.1 s each, time a worker waiting for its next trial would otherwise lose.
CHECKPOINT_SECONDS = 5.0

__all__ = ["require_ray", "connect", "TrialWorker", "TrialResources", "duplicate_computations", "run_parallel"]

logger = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'eeipu-jax[ray]' (ray[tune]==2.60.0)"


def require_ray():
    """The ``ray`` module.

    Raises:
        ImportError: Ray is not installed, with the command that installs it.
    """
    try:
        import ray
    except ImportError:
        raise ImportError(f"parallel studies (workers > 1, address) run on Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


@contextlib.contextmanager
def _loopback_node(ray):
    """Make a Ray started in the block take ``127.0.0.1`` as its node IP.

    Ray resolves a requested loopback node IP to the machine's routable one
    unless clusters are disabled (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    read once at import into ``ray._private.ray_constants``), in which case it
    uses the loopback address and every server binds to it. Both the module
    constant (this process) and the variable (the processes Ray starts) are
    set for the block only.
    """
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    old_env, old_const = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old_env


def connect(address: str | None = None, *, num_cpus: float | None = None, num_gpus: float | None = None) -> bool:
    """Make sure this process is connected to Ray.

    Args:
        address: a running cluster's address (``"host:6379"``, ``"auto"``);
            ``None`` starts a local Ray on this machine, bound to localhost,
            without a dashboard.
        num_cpus: logical CPUs of a local Ray (default: the machine's cores).
        num_gpus: GPUs of a local Ray (default: those Ray detects).

    Returns:
        ``True`` if this call started or joined Ray, ``False`` if the process
        was connected already (its Ray is used as it is).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    # The repository root (where `pipelines`, `experiments` and `tests` import
    # from) travels to the workers, which unpickle pipelines by reference.
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}}
    if address is not None:
        ray.init(address=address, runtime_env=env, include_dashboard=False, log_to_driver=True)
        return True
    with _loopback_node(ray):
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env=env)
    return True


@dataclasses.dataclass(frozen=True)
class TrialResources:
    """What one trial (one worker actor) reserves on the cluster.

    Attributes:
        num_cpus: logical CPUs (default 1).
        num_gpus: GPUs (0 or 1: one trial per GPU; JAX in the worker then sees
            only that device).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self):
        for name in ("num_cpus", "num_gpus"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {v!r}")

    @classmethod
    def of(cls, spec) -> "TrialResources":
        if spec is None:
            return cls()
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"num_cpus", "num_gpus"})
            if unknown:
                raise ValueError(f"trial resources take num_cpus and num_gpus, got {unknown}")
            return cls(**spec)
        raise ValueError(f"trial resources must be a dict with num_cpus/num_gpus, got {spec!r}")


# ----------------------------------------------------------------- worker
class TrialWorker:
    """Runs trials of one pipeline in a worker process (wrapped as a Ray actor).

    The actor's :class:`~eeipu_jax.runtime.runner.Runner` prepares the
    pipeline once and keeps its stages compiled. Under a lazy (``"top_q"``)
    cache policy the outputs of a trial are held in the actor until the
    driver, which alone knows the optimizer's pool and the trials waiting for
    a prefix, says whether to write them (:meth:`commit`).

    Args:
        pipeline: the pipeline.
        seed: the run seed.
        cache_dir: the shared stage cache directory.
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
        self._held: dict[int, tuple[int, list]] = {}

    def pid(self) -> int:
        """The worker's process id (fault tests kill it)."""
        return os.getpid()

    def warm(self) -> int:
        """Prepare the pipeline now (its data loaded once, untimed); returns the process id."""
        self.runner.data()
        return os.getpid()

    def devices(self) -> list[str]:
        """The JAX devices this worker sees."""
        return [str(d) for d in jax.devices()]

    def run(self, token: int, params: Mapping) -> TrialResult:
        """Run one trial; its outputs are held under ``token`` when writes are lazy."""
        from eeipu_jax.runtime.runner import nested_params

        lazy = self.runner.write and not self.cache.policy.eager
        result = self.runner.run(params, keep_outputs=lazy, admit=(lambda y: False) if lazy else None)
        if lazy and result.ok:
            self._held[token] = (result, nested_params(self.runner.pipeline, params))
        out = dataclasses.replace(result, outputs=None)
        return out

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
            key, secs = self.runner._save(j, result.outputs[j], params, result.cache_keys, result.stage_costs)
            seconds += secs
            saved += [key] if key else []
        return tuple(saved), seconds

    def stats(self) -> dict:
        """This worker's cache counters."""
        return self.cache.stats.to_dict()


# ------------------------------------------------------------------ driver
@dataclasses.dataclass
class _Flight:
    """A proposed trial: held for a prefix (in ``held``, no worker yet) or running on ``slot``."""

    proposed: int
    x: np.ndarray
    params: dict
    proposed_depth: int
    keys: tuple  # its prefix keys (what it restores and computes)
    ask_seconds: float
    warmup: bool
    eta: float
    score: float
    fallback: bool
    n_pending: int
    source: int = -1  # state row of the reused prefix (-1: none; set once a held source is told)
    after: "_Flight | None" = None  # the trial in flight whose prefix it waits for (None: ready)
    slot: int = -1  # its worker, once it runs
    wait_started: float = 0.0
    wait_seconds: float = 0.0
    started: float = 0.0
    ref: Any = None


def duplicate_computations(records: list[dict], n_stages: int) -> int:
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


def _ask(key, state, config, pending):
    return bo.ask(key, state, config, pending=pending)


def pending_capacity(workers: int) -> int:
    """Pending rows an ask of a ``workers``-worker study can see: the other ``W - 1`` workers'
    running trials and up to ``W`` held trials, rounded up to ``2 W``."""
    return 2 * workers


def _prefix_written(record: dict, depth: int) -> bool:
    """Whether the trial of ``record`` left its depth-``depth`` prefix in the cache: it restored it,
    or wrote it (a trial that failed in a later stage may have written it under an eager policy)."""
    return depth <= record["memo_depth"] or record["cache_keys"][depth - 1] in record["saved_keys"]


def _pending(flights: list[_Flight], capacity: int, d: int):
    xs = np.stack([f.x for f in flights]) if flights else np.zeros((0, d), np.float32)
    depths = np.asarray([f.proposed_depth for f in flights], np.int32)
    return bo.pending_from(xs, depths, capacity, d)


def run_parallel(study, state, key, records: list[dict], max_trials: int | None, progress: bool, *,
                 workers: int, resources: TrialResources, address: str | None) -> dict:
    """The driver loop of a study on ``workers`` Ray actors (see the module docstring).

    Called by :meth:`Study.optimize` with the run directory locked and the
    state restored; returns the summary.
    """
    from tqdm.auto import tqdm

    from eeipu_jax.runtime import rundir
    from eeipu_jax.runtime.records import append_line, atomic_write_json, jsonable
    from eeipu_jax.runtime.study import _best, _nan, enters_pool, pool_keys

    ray = require_ray()
    connect(address)
    plan = study._plan
    config, pipeline, budget = plan.config, plan.pipeline, float(plan.settings.budget)
    space, K = pipeline.space, pipeline.n_stages
    d = int(space.dim)
    seed = plan.settings.seed
    trials_path = os.path.join(study.out_dir, "trials.jsonl")
    stats_path = os.path.join(study.out_dir, "cache_stats.json")
    cache = StageCache(plan.cache_dir, plan.policy)
    for rec in records:
        cache.record_trial(_nan(rec["y"]), rec["cache_keys"], prune=False)
    lazy = plan.policy.kind == "top_q"
    charge_optimizer = plan.settings.charge_optimizer

    actor_cls = ray.remote(TrialWorker).options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                                                max_restarts=0)

    def new_actor():
        return actor_cls.remote(pipeline, seed, plan.cache_dir, plan.policy, plan.method.memoize, plan.write,
                                plan.settings.stage_timeout)

    actors = [new_actor() for _ in range(workers)]
    ray.get([a.warm.remote() for a in actors])  # every worker prepared before the first trial
    free = list(range(workers))
    running: dict[Any, _Flight] = {}  # ObjectRef -> flight
    held: list[_Flight] = []
    restarts = 0
    last_checkpoint = time.perf_counter()
    waited = 0
    proposed = len(records)
    started = len(records)
    best = _best(records)
    worker_stats: dict[int, dict] = {}
    bar = tqdm(total=budget, initial=min(float(state.spent), budget), unit="s", disable=not progress,
               dynamic_ncols=True, desc=f"{pipeline.name}/{plan.method.name} x{workers}")

    def replace(slot: int) -> None:
        nonlocal restarts
        actors[slot] = new_actor()
        actors[slot].warm.remote()  # runs before its next trial (an actor runs its calls in order)
        restarts += 1

    def in_flight() -> list[_Flight]:
        return list(running.values()) + held

    def keep_keys() -> set[str]:
        # the optimizer's pool, and every prefix a trial in flight will restore
        keep = pool_keys(state, config, records)
        for f in in_flight():
            keep.update(f.keys[: f.proposed_depth])
        return keep

    def can_dispatch() -> bool:
        return float(state.spent) < budget and (max_trials is None or proposed - started < max_trials)

    def launch(f: _Flight, slot: int) -> None:
        f.slot = slot
        f.started = time.perf_counter()
        f.wait_seconds = f.started - f.wait_started if f.wait_started else 0.0
        f.ref = actors[slot].run.remote(f.proposed, f.params)
        running[f.ref] = f

    def dispatch() -> None:
        """Give the free workers trials: first the held trials whose prefix is written (in proposal
        order), then new proposals while the budget lasts and fewer than ``workers`` trials are held."""
        for h in [h for h in held if h.after is None]:
            if not free:
                return
            held.remove(h)
            launch(h, free.pop(0))
        while free and can_dispatch() and len(held) < workers:
            propose()

    def propose() -> None:
        """Ask for one trial: it runs on the first free worker, or is held (the worker stays free
        and is asked again) when it reuses the prefix of a trial in flight."""
        nonlocal key, state, proposed
        flights = in_flight()
        t0 = time.perf_counter()
        key, k_ask = jax.random.split(key)
        warm = int(state.n) < config.n_warmup
        prop, state = _ask(k_ask, state, config, _pending(flights, pending_capacity(workers), d))
        jax.block_until_ready((prop, state))
        ask_seconds = time.perf_counter() - t0
        x = np.array(prop.x, np.float32)
        params = space.from_unit(x)
        depth, src = int(prop.memo_depth), int(prop.source)
        n = int(state.X.shape[0])
        after = None
        if depth > 0 and src >= 0:
            if src >= n:  # the prefix of a trial in flight
                after = flights[src - n]
                base_params, base_x = after.params, after.x
            else:
                base_params, base_x = records[src]["params"], np.asarray(state.X[src])
            for stage in pipeline.stages[:depth]:  # bit-identical values, so the cache keys match
                params[stage.name] = dict(base_params[stage.name])
            mask = space.prefix_mask(depth)
            x[mask] = np.asarray(base_x)[mask]
        f = _Flight(proposed=proposed, x=x, params=params, proposed_depth=depth,
                    keys=tuple(prefix_keys(pipeline, params, seed)), ask_seconds=ask_seconds, warmup=warm,
                    eta=float(prop.eta), score=float(prop.score), fallback=bool(prop.fallback),
                    n_pending=len(flights), source=src if after is None else -1, after=after)
        proposed += 1
        if after is not None and (after.ref in running or after in held):
            f.wait_started = time.perf_counter()
            held.append(f)
        else:
            launch(f, free.pop(0))

    def complete(f: _Flight, result: TrialResult | None, error: str | None) -> dict:
        """Write (or drop) the trial's held outputs, tell it, and return its record."""
        nonlocal state
        i = int(state.n)
        if result is None:  # the worker died: one failed trial, charged its wall seconds so far
            seconds = time.perf_counter() - f.started
            status, y, memo_depth = "failed", math.nan, 0
            costs = np.full(K, np.nan)
            result_fields = dict(stage_costs=costs.tolist(), stage_seconds=costs.tolist(), restore_seconds=0.0,
                                 save_seconds=0.0, metrics={}, error=error, failed_stage=None, traceback=None,
                                 saved_keys=[])
            trial_seconds = seconds
        else:
            status, y, memo_depth = result.status, result.objective, result.memo_depth
            saved, save_seconds = (), 0.0
            if lazy and plan.write and result.ok:
                waiting = any(h.after is f for h in held)
                write = waiting or enters_pool(state, config, f.x, result.objective)
                try:
                    saved, save_seconds = ray.get(actors[f.slot].commit.remote(f.proposed, write))
                except ray.exceptions.RayActorError as e:  # died after the trial: its result stands, uncached
                    logger.warning("worker %d died before writing trial %d's stage outputs (%s); replaced",
                                   f.slot, i, type(e).__name__)
                    replace(f.slot)
            result_fields = dict(stage_costs=result.stage_costs, stage_seconds=result.stage_seconds,
                                 restore_seconds=result.restore_seconds,
                                 save_seconds=result.save_seconds + save_seconds, metrics=result.metrics,
                                 error=result.error, failed_stage=result.failed_stage, traceback=result.traceback,
                                 saved_keys=list(result.saved_keys) + list(saved))
            costs = result.stage_costs
            trial_seconds = result.charged + save_seconds
        charged = trial_seconds + f.ask_seconds if charge_optimizer else trial_seconds
        state = bo.tell(state, f.x, y, costs, memo_depth, charged)
        record = {
            "index": i,
            "status": status,
            "y": y,
            "x": f.x.astype(float).tolist(),
            "params": f.params,
            "memo_depth": memo_depth,
            "proposed_depth": f.proposed_depth,
            "source": f.source,
            **result_fields,
            "charged": charged,
            "trial_seconds": trial_seconds,
            "ask_seconds": f.ask_seconds,
            "spent": float(state.spent),
            "cache_keys": list(f.keys),
            "eta": f.eta,
            "score": f.score,
            "fallback": f.fallback,
            "warmup": f.warmup,
            "time": time.time(),
            # parallel execution
            "worker": f.slot,
            "proposed": f.proposed,
            "pending": f.n_pending,
            "wait_seconds": f.wait_seconds,
        }
        records.append(record)  # in memory now (the next ask may reuse its prefix); on disk in persist()
        # trials held for this one's prefix: their source is now row i
        for h in held:
            if h.after is f:
                h.source = i
        return record

    def persist(record: dict, final: bool = False) -> None:
        """Append the trial's line (fsynced), checkpoint at most every ``CHECKPOINT_SECONDS``, apply the
        cache policy. Runs after the freed worker got its next trial, while it runs."""
        nonlocal best, last_checkpoint
        i = record["index"]
        records[i] = append_line(trials_path, record)
        logger.info("trial %d (proposed %d, worker %d) %s: y=%s memo_depth=%d charged=%.3fs spent=%.1f/%gs",
                    i, record["proposed"], record["worker"], record["status"], f"{record['y']:.6g}",
                    record["memo_depth"], record["charged"], record["spent"], budget)
        if final or time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS:
            checkpoint()
        cache.set_keep(keep_keys())
        cache.record_trial(_nan(record["y"]), record["cache_keys"])
        best = _best(records)
        bar.update(max(0.0, min(record["charged"], bar.total - bar.n)))
        bar.set_postfix(trial=len(records), best=f"{best['y']:.4g}" if best else "-", refresh=False)

    def checkpoint() -> None:
        nonlocal last_checkpoint
        # every told trial is on disk by now (one completion is told, then persisted, at a time)
        rundir.save_checkpoint(study.out_dir, state, key)
        last_checkpoint = time.perf_counter()

    try:
        with bar:
            while True:
                dispatch()
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1)
                f = running.pop(ready[0])
                try:
                    result, error = ray.get(ready[0]), None
                except ray.exceptions.RayActorError as e:
                    result = None
                    error = f"worker {f.slot} died during the trial ({type(e).__name__}: {str(e).splitlines()[0]})"
                    logger.warning("%s; it is recorded as failed and the worker replaced", error)
                    replace(f.slot)
                record = complete(f, result, error)
                # The trials held for this prefix are ready once it is written; if it was not (the
                # trial failed), the first of them computes it and the others wait for that one.
                waiters = [h for h in held if h.after is f]
                ready = _prefix_written(record, max((h.proposed_depth for h in waiters), default=0))
                for n_w, h in enumerate(waiters):
                    h.after = None if ready or n_w == 0 else waiters[0]
                waited += len(waiters) if ready else min(1, len(waiters))
                free.append(f.slot)
                # the freed worker runs a trial that waited for this prefix, or takes a new one,
                # before the record is written: the workers need not wait for the driver's disk
                dispatch()
                persist(record)
            checkpoint()
    finally:
        for a in actors:
            with contextlib.suppress(Exception):
                worker_stats[len(worker_stats)] = ray.get(a.stats.remote(), timeout=30)
        for a in actors:
            ray.kill(a)
    cache.set_keep(pool_keys(state, config, records))
    cache.prune()
    atomic_write_json(stats_path, {"driver": cache.stats.to_dict(), "workers": list(worker_stats.values())})
    summary = study._summary(records)
    summary["cache"] = cache.summary()
    summary["parallel"] = {
        "workers": workers,
        "resources": dataclasses.asdict(resources),
        "duplicate_stage_computations": duplicate_computations(records, K),
        "waited_for_prefix": waited,
        "worker_restarts": restarts,
    }
    atomic_write_json(os.path.join(study.out_dir, "summary.json"), jsonable(summary))
    return summary

"""EEIPU as a Ray Tune search algorithm: :class:`EEIPUSearcher` and its trainable.

Usage (one object, as with Tune's ``OptunaSearch``)::

    from ray import tune
    from eeipu_jax.runtime.tune_search import EEIPUSearcher

    searcher = EEIPUSearcher(pipeline, seed=0, budget=600, max_concurrent=4)
    tuner = tune.Tuner(
        searcher.trainable(cache_dir="/shared/cache"),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1),
    )
    tuner.fit()

This module owns the Tune side of the parallel runtime. It imports Ray at
import time (``pip install 'eeipu-jax[ray]'``); nothing else in the library
imports it.

* :class:`EEIPUSearcher` implements Tune's ``Searcher`` interface
  (``suggest``, ``on_trial_complete``, ``save``/``restore``,
  ``get_state``/``set_state``, ``set_search_properties``,
  ``set_max_concurrency``) over the pure optimizer
  (:func:`eeipu_jax.loop.ask` / :func:`~eeipu_jax.loop.tell`, arXiv
  2411.03731), through the study's trial driver's pieces
  (:mod:`eeipu_jax.runtime.driver`): ``suggest`` is
  :func:`~eeipu_jax.runtime.driver.ask_trial` (trials Tune is still running
  enter ``ask`` as pending rows; a reused prefix is copied bit for bit) and
  ``on_trial_complete`` is :func:`~eeipu_jax.runtime.driver.tell_or_fail`
  (finished trials are told in completion order). A trial's config is flat,
  one ``"stage/param"`` key per hyperparameter (the columns Tune shows).
  ``suggest`` returns ``None`` (Tune asks again later) while
  ``max_concurrent`` trials are in flight (the pending capacity is fixed, so
  ``ask`` compiles once; Tune's ``max_concurrent_trials`` need not be set),
  and ``Searcher.FINISHED`` once the trials told have spent ``budget``
  charged seconds: the budget ends the search, as it ends a study
  (``num_samples=-1``; a finite ``num_samples`` caps the trials too). The
  budget also drives the acquisition's cost cooling, as in a study.
* :meth:`EEIPUSearcher.trainable` (or :func:`pipeline_trainable`, the same
  function for a pipeline and seed given again) is the function Tune runs:
  one trial of the pipeline through the
  :class:`~eeipu_jax.runtime.runner.Runner` and the shared stage cache
  (policy ``"all"``: Tune has no driver that knows the optimizer's prefix
  pool, so every stage output is kept; bound it with ``cache_max_bytes``). A
  trial whose proposal reuses the prefix of a trial still running waits for
  that trial's completion marker (single flight), then restores the prefix;
  the searcher names the trial to wait for in a marker file of the cache
  directory when it knows that directory (:meth:`EEIPUSearcher.trainable`),
  else under the internal config key :data:`WAIT_KEY`. The trainable reports
  ``objective``, the stage costs, the memo depth and the charged seconds,
  which :meth:`EEIPUSearcher.on_trial_complete` tells.
* Ray: building the trainable connects this process to Ray through
  :func:`eeipu_jax.runtime.parallel.connect` when it is not connected yet, so
  a Ray that Tune would start listening on every interface is started bound
  to 127.0.0.1 instead (call ``ray.init(address=...)`` or ``connect(address)``
  first to use a cluster).
"""

from __future__ import annotations

import os
import pickle
import time

import jax
import numpy as np

from eeipu_jax.runtime.driver import Flight, ask_trial, initial_state, optimizer_config, tell_or_fail
from eeipu_jax.runtime.parallel import connect, require_ray
from eeipu_jax.runtime.pipeline import Pipeline

require_ray()
from ray.tune.search import Searcher  # noqa: E402

__all__ = ["EEIPUSearcher", "pipeline_trainable", "flat_config", "nested_config", "WAIT_KEY"]

#: Internal config key naming the trial whose prefix a trial waits for, used only when the
#: searcher does not know the cache directory (a trainable built by :func:`pipeline_trainable`).
WAIT_KEY = "_eeipu_wait_for"
_DONE_DIR = "tune_done"
_WAIT_DIR = "tune_wait"


def _done_path(cache_dir: str, trial_id: str) -> str:
    return os.path.join(cache_dir, _DONE_DIR, f"{trial_id}.done")


def _wait_path(cache_dir: str, trial_id: str) -> str:
    return os.path.join(cache_dir, _WAIT_DIR, f"{trial_id}.wait")


def flat_config(params: dict) -> dict:
    """``{stage: {param: value}}`` as Tune's flat ``{"stage/param": value}``."""
    return {f"{stage}/{name}": value for stage, values in params.items() for name, value in values.items()}


def nested_config(pipeline: Pipeline, config: dict) -> dict:
    """A trial's flat ``"stage/param"`` config as ``{stage: {param: value}}`` (other keys ignored).

    Raises:
        ValueError: a hyperparameter of the pipeline is missing.
    """
    params, missing = {}, []
    for stage in pipeline.space.stages:
        for p in stage.params:
            key = f"{stage.name}/{p.name}"
            if key in config:
                params.setdefault(stage.name, {})[p.name] = config[key]
            else:
                missing.append(key)
    if missing:
        raise ValueError(f"the trial's config lacks {missing}: EEIPUSearcher suggests the pipeline's parameters as "
                         "flat 'stage/param' keys (pass no param_space to the Tuner)")
    return params


class EEIPUSearcher(Searcher):
    """EEIPU (or another registered method) proposing Ray Tune trials of a pipeline.

    Args:
        pipeline: the :class:`~eeipu_jax.runtime.Pipeline` (its search space
            is the Tune search space; do not pass ``param_space`` to the Tuner).
        seed: seeds the optimizer's PRNG key, and is the run seed of the
            trials :meth:`trainable` runs (stage PRNG keys, cache keys).
        budget: charged seconds of trials the search may spend (their
            restores, stages and cache writes, as a study's budget): once the
            trials told have spent it, :meth:`suggest` returns
            ``Searcher.FINISHED`` and Tune ends the experiment when the trials
            in flight finish. It also drives the acquisition's cost cooling.
        method: a registered method (:func:`eeipu_jax.methods.registered`).
        metric: the reported metric to optimize (default ``"objective"``, what
            :meth:`trainable` reports).
        mode: ``"max"`` or ``"min"``.
        max_concurrent: trials in flight at most (the pending capacity); Tune
            keeps to it without its own ``max_concurrent_trials``.
        n_warmup: random initial trials.
        epsilon: price of a memoized stage.
        bo_options: other settings (:func:`eeipu_jax.loop.configure`).
    """

    def __init__(self, pipeline: Pipeline, *, seed: int, budget: float, method: str = "eeipu",
                 metric: str = "objective", mode: str = "max", max_concurrent: int = 4, n_warmup: int = 10,
                 epsilon: float = 0.1, bo_options: dict | None = None):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if not (isinstance(max_concurrent, int) and max_concurrent >= 1):
            raise ValueError(f"max_concurrent must be a positive integer, got {max_concurrent!r}")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (np.isfinite(budget) and budget > 0):
            raise ValueError(f"budget must be positive seconds, got {budget!r}")
        super().__init__(metric=metric, mode=mode)
        self.pipeline = pipeline
        self.seed = seed
        self.budget = float(budget)
        self.cache_dir: str | None = None  # set by trainable(): wait markers go there, not in the config
        self.space = pipeline.space
        self.config, params = optimizer_config(self.space, method, n_warmup, epsilon, bo_options or {})
        self.max_concurrent = max_concurrent
        self.state = initial_state(self.config, budget, params)
        self.key = jax.random.key(seed)
        self.live: dict[str, Flight] = {}  # trial id -> the trial as proposed, in suggestion order
        self.told: list[dict] = []  # row -> {"trial_id", "params"}

    # ------------------------------------------------------------- Tune API
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        if config:  # the space is the pipeline's; a Tune param_space would be ignored silently
            return False
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = int(max_concurrent)
        return True

    def trainable(self, *, cache_dir: str, memoize: bool = True, stage_timeout: float | None = None,
                  wait_timeout: float = 3600.0):
        """The Tune trainable of this searcher's pipeline and seed (:func:`pipeline_trainable`);
        the searcher then tells it which trial to wait for through ``cache_dir`` (nothing extra in
        the trial's config). Connects to Ray first when this process is not connected (a local Ray
        bound to 127.0.0.1)."""
        trainable = pipeline_trainable(self.pipeline, cache_dir=cache_dir, seed=self.seed, memoize=memoize,
                                       stage_timeout=stage_timeout, wait_timeout=wait_timeout)
        self.cache_dir = os.path.abspath(cache_dir)
        return trainable

    def suggest(self, trial_id: str) -> dict | str | None:
        """The next trial's flat ``{"stage/param": value}`` config; ``None`` while
        ``max_concurrent`` trials are in flight (Tune asks later); ``Searcher.FINISHED`` once the
        trials told have spent the budget.

        The trials in flight are ``ask``'s pending rows (capacity
        ``max_concurrent``); a proposal reusing the prefix of one of them
        names it (a marker file in the cache directory, or :data:`WAIT_KEY`),
        so the trainable waits for it.
        """
        if float(self.state.spent) >= self.budget:
            return Searcher.FINISHED
        if len(self.live) >= self.max_concurrent:
            return None
        in_flight = list(self.live.values())
        self.key, k_ask = jax.random.split(self.key)
        flight, self.state = ask_trial(k_ask, self.state, self.config, self.pipeline, self.told, in_flight,
                                       self.max_concurrent)
        wait = next(tid for tid, f in self.live.items() if f is flight.after) if flight.after else None
        self.live[trial_id] = flight
        config = flat_config(flight.params)
        if wait is not None and self.cache_dir is not None:
            os.makedirs(os.path.join(self.cache_dir, _WAIT_DIR), exist_ok=True)
            tmp = f"{_wait_path(self.cache_dir, trial_id)}.tmp"
            with open(tmp, "w") as f:
                f.write(wait)
            os.replace(tmp, _wait_path(self.cache_dir, trial_id))  # complete before Tune starts the trial
        elif wait is not None:
            config[WAIT_KEY] = wait
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell the trial's reported metric (a failed or errored trial: NaN, the worst seen), stage
        costs, memo depth and charged seconds."""
        flight = self.live.pop(trial_id, None)
        if flight is None:
            return
        told = {"x": flight.x, "y": None, "stage_costs": [None] * self.pipeline.n_stages, "memo_depth": 0,
                "charged": 0.0}
        if result is not None and not error:
            value = result.get(self.metric)
            if value is not None and np.isfinite(value):
                told["y"] = float(value) if self.mode == "max" else -float(value)
            if "stage_costs" in result:
                told.update(stage_costs=result["stage_costs"], memo_depth=int(result.get("memo_depth", 0)),
                            charged=float(result.get("charged", 0.0)))
        self.state, _ = tell_or_fail(self.state, told)
        self.told.append({"trial_id": trial_id, "params": flight.params})

    def get_state(self) -> dict:
        return {
            "state": jax.tree.map(np.asarray, self.state),
            "key": np.asarray(jax.random.key_data(self.key)),
            "live": self.live,
            "told": self.told,
            "max_concurrent": self.max_concurrent,
            "budget": self.budget,
            "cache_dir": self.cache_dir,
            "metric": self._metric,
            "mode": self._mode,
        }

    def set_state(self, state: dict) -> None:
        self.state = jax.tree.map(jax.numpy.asarray, state["state"])
        self.key = jax.random.wrap_key_data(jax.numpy.asarray(state["key"]))
        self.live, self.told = dict(state["live"]), list(state["told"])
        self.max_concurrent = state["max_concurrent"]
        self.budget = state.get("budget", self.budget)
        self.cache_dir = state.get("cache_dir", self.cache_dir)
        self._metric, self._mode = state["metric"], state["mode"]

    def save(self, checkpoint_path: str) -> None:
        tmp = f"{checkpoint_path}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(self.get_state(), f)
        os.replace(tmp, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


# ------------------------------------------------------------- trainable
_RUNNERS: dict = {}


def pipeline_trainable(pipeline: Pipeline, *, cache_dir: str, seed: int, memoize: bool = True,
                       stage_timeout: float | None = None, wait_timeout: float = 3600.0):
    """A Tune function trainable running one trial of ``pipeline`` per call
    (:meth:`EEIPUSearcher.trainable` builds it from the searcher's pipeline and seed).

    Connects this process to Ray when it is not connected
    (:func:`eeipu_jax.runtime.parallel.connect`: a local Ray bound to
    127.0.0.1, where Tune would start one listening on every interface).

    Args:
        pipeline: the pipeline.
        cache_dir: the stage cache every trial shares (a path all nodes see).
        seed: the run seed (stage PRNG keys and cache keys).
        memoize: restore cached prefixes and write stage outputs.
        stage_timeout: per-stage limit in seconds.
        wait_timeout: longest wait, in seconds, for a prefix being computed by
            another trial (then the trial computes it itself).

    Returns:
        ``trainable(config) -> metrics``: ``objective`` (NaN when the trial
        failed), ``status``, ``memo_depth``, ``stage_costs``, ``charged``,
        ``compile_seconds`` (JAX's compiling, not charged), ``wait_seconds``,
        ``error`` and the last stage's other metrics.
    """
    connect()  # no-op when connected: a Ray Tune would start itself listens on every interface
    from eeipu_jax.runtime.cache import CachePolicy, StageCache
    from eeipu_jax.runtime.runner import Runner

    cache_dir = os.path.abspath(cache_dir)

    def trainable(config: dict) -> dict:
        ident = (pipeline.name, pipeline.version, seed, cache_dir, memoize, stage_timeout)
        runner = _RUNNERS.get(ident)
        if runner is None:  # one per worker process: the pipeline is prepared once
            cache = StageCache(cache_dir, CachePolicy("all"))
            runner = _RUNNERS[ident] = Runner(pipeline, seed=seed, cache=cache, restore=memoize, write=memoize,
                                              stage_timeout=stage_timeout)
            jax.devices()  # JAX's start-up is the worker's set-up, not the first trial's charge
        from ray import tune

        trial_id = tune.get_context().get_trial_id()
        params = nested_config(pipeline, config)
        t0 = time.perf_counter()
        wait_for = config.get(WAIT_KEY)
        if wait_for is None and os.path.exists(_wait_path(cache_dir, trial_id)):
            with open(_wait_path(cache_dir, trial_id)) as f:
                wait_for = f.read().strip() or None
        if wait_for is not None:
            deadline = time.monotonic() + wait_timeout
            while not os.path.exists(_done_path(cache_dir, wait_for)) and time.monotonic() < deadline:
                time.sleep(0.02)
        waited = time.perf_counter() - t0
        try:
            result = runner.run(params)
        finally:  # written even if the trial raised, so no trial waits for it in vain
            os.makedirs(os.path.join(cache_dir, _DONE_DIR), exist_ok=True)
            with open(_done_path(cache_dir, trial_id), "w"):
                pass
        return {
            **result.metrics,
            "objective": result.objective,
            "status": result.status,
            "memo_depth": result.memo_depth,
            "stage_costs": [float(c) for c in result.stage_costs],
            "charged": result.charged,
            "compile_seconds": result.compile_seconds,
            "wait_seconds": waited,
            "error": result.error,
        }

    trainable.__name__ = f"eeipu_{pipeline.name}"
    return trainable

"""The engine: running pipelines, caching their stage outputs, crash-safe studies.

The algorithm modules of :mod:`eeipu_jax` are pure (no I/O); this package is
where the library touches the disk and the clock. One job per module:

* :mod:`~eeipu_jax.runtime.pipeline` -- the Stage / Pipeline API;
* :mod:`~eeipu_jax.runtime.registry` -- pipelines by name or
  ``"module:attribute"`` path;
* :mod:`~eeipu_jax.runtime.cache` -- the orbax stage-output cache (keys,
  codec, metadata, policy, store);
* :mod:`~eeipu_jax.runtime.runner` -- one trial: restore the longest cached
  prefix, run and time the rest;
* :mod:`~eeipu_jax.runtime.records` -- ``trials.jsonl`` and the typed
  :class:`Trial`;
* :mod:`~eeipu_jax.runtime.rundir` -- a run directory's lock and optimizer
  checkpoints;
* :mod:`~eeipu_jax.runtime.driver` -- the one trial driver: ask with pending
  rows, prefix copy, run through an executor, tell, record, cache keep-set,
  checkpoints, resume (a serial study is its one-worker case);
* :mod:`~eeipu_jax.runtime.study` -- the :class:`Study`: its settings,
  ``config.json`` and records, over the driver;
* :mod:`~eeipu_jax.runtime.parallel` -- Ray placement of a study's workers
  (optional; imported only by a parallel study);
* :mod:`~eeipu_jax.runtime.tune_search` -- EEIPU as a Ray Tune searcher over
  the driver's pieces (imports Ray; imported only by its users);
* :mod:`~eeipu_jax.runtime.settings` -- checks of settings;
* :mod:`~eeipu_jax.runtime.cli` -- the ``eeipu`` command.
"""

from eeipu_jax.runtime.cache import CachePolicy, StageCache
from eeipu_jax.runtime.pipeline import Pipeline, PrepareError, Stage
from eeipu_jax.runtime.records import Trial
from eeipu_jax.runtime.registry import available_pipelines, get_pipeline, register_pipeline
from eeipu_jax.runtime.runner import Runner, TrialResult
from eeipu_jax.runtime.settings import ConfigError, StorageError
from eeipu_jax.runtime.study import Study

__all__ = [
    "CachePolicy",
    "ConfigError",
    "Pipeline",
    "PrepareError",
    "Runner",
    "Stage",
    "StageCache",
    "StorageError",
    "Study",
    "Trial",
    "TrialResult",
    "available_pipelines",
    "get_pipeline",
    "register_pipeline",
]

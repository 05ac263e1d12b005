"""Running one candidate: restore the longest cached prefix, run the rest, time it.

This module owns the execution of a single trial of a pipeline
(:class:`Runner.run`):

1. validate the configuration against the pipeline's search space (before any
   compute);
2. when restoring is enabled (memoizing methods only), restore the deepest
   stage output cached for this configuration's prefix
   (:meth:`eeipu_jax.runtime.cache.StageCache.restore_longest`); a corrupted entry is
   discarded and the next shorter prefix tried;
3. run the remaining stages in order, each timed in wall seconds after
   ``jax.block_until_ready`` of its output, each under an optional time limit;
4. write stage outputs to the cache per its policy (``"all"``: as each stage
   finishes; ``"top_q"``: after the objective is known, if it ranks in the top
   ``q``);
5. return a :class:`TrialResult`.

Costs reported:

* ``stage_costs[k]``: what the cost models learn, the *compute* seconds of
  stage ``k``: measured for stages that ran, the original compute cost (read
  from the cache entry's metadata) for restored stages, ``NaN`` for stages that
  never ran. The stage that failed keeps its measured seconds (running it
  until it failed is what it costs at that configuration).
* ``stage_seconds[k]``: wall seconds spent on stage ``k`` in this trial: the
  restore time on the deepest restored stage (a restored stage is not free),
  ``0`` on shallower restored stages (nothing was done for them), measured
  time for stages that ran.
* ``charged``: wall seconds of the whole trial (cache lookup and restore,
  stages, cache writes): what the trial costs the budget, less
  ``compile_seconds``.
* ``compile_seconds``: wall seconds JAX spent tracing, lowering and compiling
  inside the stages (its monitoring events, :func:`compile_timer`): a
  process's first trial compiles every jitted stage function, a trial whose
  parameters change array shapes compiles again. It is set-up, like the
  pipeline's ``prepare()``: recorded, left out of ``charged`` and of
  ``stage_costs`` (the cost models learn what a configuration costs once
  compiled), kept in ``stage_seconds`` (wall time).

Inputs are read-only: every stage gets its input (the prepared data, a
restored output or the previous stage's output) with each NumPy array leaf as
a read-only view and its containers (dicts, lists, tuples) rebuilt, so a stage
that changes its input in place (``x += 1``, ``np.random.shuffle(x)``,
``inputs["k"] = v``) changes only its own copy of the containers and raises
``ValueError: assignment destination is read-only`` on an array (a failed
trial, whose error says to copy the array first). Without this, an output held
for a lazy (``"top_q"``) cache write, or the prepared data shared by every
trial, would be changed by a later stage: the cache would store, and later
restore, something the stage never returned. Read-only views cost nothing
whatever an output's size (a snapshot would copy every array of every
output); JAX arrays are immutable already.

Failures (``status == "failed"``, ``objective`` NaN): a stage that raises
(``sys.exit`` included: ``SystemExit`` is caught in a stage and names it;
``KeyboardInterrupt`` is not, so Ctrl-C still stops the study), a stage over
the time limit, a last stage without an objective, or an objective that is not
a finite number of float32 range (``|y| <= 3.4e38``: what the optimizer
stores; an integer beyond float64 included). The time limit interrupts a stage
with ``SIGALRM`` when the runner is on the main thread (Python code, e.g. a
training loop of jitted steps, is stopped when the limit passes; a single long
XLA call is stopped when it returns); elsewhere, or if an interval timer is
already in use, the limit is checked when the stage returns. A study's
wall-clock limit (``deadline``) interrupts a stage the same way.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import signal
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from eeipu_jax.runtime.cache import StageCache, prefix_keys
from eeipu_jax.runtime.pipeline import Pipeline, PrepareError, objective_of, stage_key

__all__ = ["Runner", "TrialResult", "StageTimeout", "nested_params", "read_only", "MAX_SEED", "check_seed",
           "F32_MAX", "compile_timer"]

logger = logging.getLogger(__name__)


#: The largest run seed. ``jax.random.key`` keeps only the low 32 bits of a seed
#: when 64-bit mode is off (``key(2**32)`` equals ``key(0)``) and overflows past
#: 2**63, so larger seeds would silently share stage keys with smaller ones.
MAX_SEED = 2**32 - 1


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` as an ``int`` in ``0 .. MAX_SEED``.

    Raises:
        ValueError: not an integer, or out of that range.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{what} must be an integer in 0..{MAX_SEED} (what jax.random.key keeps), got {seed!r}")
    return int(seed)


#: The largest objective the optimizer stores (float32); a larger one fails its trial.
F32_MAX = float(np.finfo(np.float32).max)


class StageTimeout(Exception):
    """A stage ran past its time limit."""


#: JAX's monitoring events of tracing, lowering and compiling a function (``jax._src.dispatch``).
_COMPILE_EVENTS = frozenset((
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
))
_compiling = threading.local()  # .spans: the (start, end) of those events in this thread, while timed
_listening = False
_listening_lock = threading.Lock()


def _on_span(event: str, start: float, end: float, **kwargs) -> None:
    spans = getattr(_compiling, "spans", None)
    if spans is not None and event in _COMPILE_EVENTS:
        spans.append((start, end))


@contextlib.contextmanager
def compile_timer():
    """Measure the wall seconds JAX spends tracing, lowering and compiling in this thread.

    Yields a list that, on exit, holds one number: those seconds, the union of
    the spans of JAX's compile events (nested traces counted once). A
    persistent compilation cache hit counts as the compile it replaces (its
    read).
    """
    global _listening
    with _listening_lock:
        if not _listening:
            jax.monitoring.register_event_time_span_listener(_on_span)
            _listening = True
    outer = getattr(_compiling, "spans", None)
    _compiling.spans = spans = []
    result: list[float] = []
    try:
        yield result
    finally:
        _compiling.spans = outer
        if outer is not None:
            outer.extend(spans)
        total, reach = 0.0, -math.inf
        for start, end in sorted(spans):
            if end > reach:
                total += end - max(start, reach)
                reach = end
        result.append(total)


def read_only(tree: Any) -> Any:
    """``tree`` as a stage's input: each NumPy array a read-only view, containers rebuilt.

    Dicts (in their order, subclasses copied with :func:`copy.copy`), lists,
    tuples and NamedTuples are rebuilt around the converted leaves, so a stage
    that assigns into its input changes its own container only; a writable
    NumPy array becomes a read-only view of the same memory (no copy), so an
    in-place change raises ``ValueError``. Other leaves (JAX arrays, scalars,
    ``None``) are immutable or not the cache's, and are passed as they are.
    """
    if isinstance(tree, np.ndarray):
        if not tree.flags.writeable:
            return tree
        view = tree.view()
        view.flags.writeable = False
        return view
    if isinstance(tree, dict):
        if type(tree) is dict:
            return {k: read_only(v) for k, v in tree.items()}
        out = copy.copy(tree)
        for k, v in tree.items():
            out[k] = read_only(v)
        return out
    if isinstance(tree, tuple) and hasattr(type(tree), "_fields"):
        return type(tree)(*(read_only(v) for v in tree))
    if type(tree) in (list, tuple):
        return type(tree)(read_only(v) for v in tree)
    return tree


def _objective_error(objective: float) -> str | None:
    """Why a finite-looking objective cannot be told, or ``None``."""
    if not math.isfinite(objective):
        return f"non-finite objective {objective!r}"
    if abs(objective) > F32_MAX:
        return (f"objective {objective!r} is beyond the float32 range (|y| <= {F32_MAX:.4g}) the optimizer "
                "stores; return a rescaled objective (proposals do not depend on its scale)")
    return None


@dataclasses.dataclass
class TrialResult:
    """The outcome of one trial.

    Attributes:
        status: ``"ok"`` or ``"failed"``.
        objective: the objective (NaN when failed).
        metrics: the other entries the last stage returned (scalars, strings, JSON
            values: :func:`~eeipu_jax.runtime.pipeline.objective_of`).
        stage_costs: ``(K,)`` compute seconds per stage (see module docstring).
        stage_seconds: ``(K,)`` wall seconds spent per stage in this trial.
        charged: wall seconds of the whole trial (the budget's charge), less
            the pipeline's preparation and ``compile_seconds``.
        memo_depth: number of leading stages restored from the cache.
        restore_seconds: wall seconds spent looking up and restoring.
        save_seconds: wall seconds spent writing cache entries.
        compile_seconds: wall seconds JAX spent tracing and compiling in the
            stages (a process's first trial, new shapes): not charged, and
            not in ``stage_costs``.
        cache_keys: the ``K - 1`` prefix keys of this configuration.
        saved_keys: keys written by this trial.
        error: what failed (``None`` if ok).
        failed_stage: index of the stage that failed (``None`` if none did).
        traceback: the formatted exception, if a stage raised.
        outputs: every stage's output (only with ``keep_outputs``; ``None``
            for stages restored implicitly under a deeper one).
    """

    status: str
    objective: float
    metrics: dict
    stage_costs: np.ndarray
    stage_seconds: np.ndarray
    charged: float
    memo_depth: int
    restore_seconds: float
    save_seconds: float
    cache_keys: tuple
    saved_keys: tuple
    error: str | None = None
    failed_stage: int | None = None
    traceback: str | None = None
    outputs: list | None = None
    compile_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def nested_params(pipeline: Pipeline, params: Mapping) -> dict[str, dict[str, Any]]:
    """A configuration as ``{stage: {param: value}}``, validated against the space.

    Accepts the nested form or flat ``"<stage>__<param>"`` keys. Values are
    kept as given (no round trip through the unit cube, which could change a
    float's last bit and with it the cache key).

    Raises:
        eeipu_jax.space.SpaceError: unknown, missing or out-of-range parameters.
    """
    space = pipeline.space
    space.to_unit(params)  # raises with the offending field's name
    out: dict[str, dict[str, Any]] = {s.name: {} for s in pipeline.stages}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out[key].update(value)
        else:
            stage, _, name = key.partition("__")
            out[stage][name] = value
    return out


@contextlib.contextmanager
def _time_limit(seconds: float | None, what: str):
    """Raise :class:`StageTimeout` inside the block after ``seconds`` (main thread only)."""
    usable = (
        seconds is not None
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
    )
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise StageTimeout(f"{what} exceeded its time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


class Runner:
    """Runs configurations of one pipeline with one seed, through a cache.

    Args:
        pipeline: the pipeline.
        seed: run seed (stage ``k`` gets ``stage_key(seed, k)``; part of every
            cache key).
        cache: a :class:`~eeipu_jax.runtime.cache.StageCache`, or ``None`` for none.
        restore: look up and restore cached prefixes (memoizing methods).
        write: write stage outputs to the cache per its policy.
        stage_timeout: per-stage wall-clock limit in seconds (``None``: none).

    The pipeline's ``prepare()`` runs once, on first use, untimed.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        seed: int,
        cache: StageCache | None = None,
        restore: bool = True,
        write: bool = True,
        stage_timeout: float | None = None,
    ):
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"pipeline must be a Pipeline, got {type(pipeline).__name__}")
        seed = check_seed(seed)
        if stage_timeout is not None and not (math.isfinite(stage_timeout) and stage_timeout > 0):
            raise ValueError(f"stage_timeout must be positive seconds or None, got {stage_timeout!r}")
        self.pipeline = pipeline
        self.seed = int(seed)
        self.cache = cache
        self.restore = bool(restore) and cache is not None
        self.write = bool(write) and cache is not None
        self.stage_timeout = stage_timeout
        self._data = None
        self._prepared = False

    def data(self) -> Any:
        """The pipeline's prepared data (``prepare()`` is called once).

        Raises:
            PrepareError: ``prepare()`` raised (no trial of the pipeline can
                run); it is called again next time.
        """
        if not self._prepared:
            try:
                self._data = self.pipeline.prepare()
            except Exception as e:
                raise PrepareError(f"pipeline {self.pipeline.name}'s prepare() failed: "
                                   f"{type(e).__name__}: {e}") from e
            self._prepared = True
        return self._data

    def save_output(self, j: int, output: Any, params: Mapping, keys, stage_costs) -> tuple[str | None, float]:
        """Write stage ``j``'s output to the cache under ``keys[j]``, with its metadata.

        A failed write is logged and counted (``cache.stats.save_errors``),
        never raised: the trial's result stands, only its caching is lost.

        Args:
            j: the stage (``0 .. K-2``; the last stage is never cached).
            output: the stage's output.
            params: the trial's nested parameters (stages ``0 .. j`` are recorded).
            keys: the trial's prefix keys (:func:`~eeipu_jax.runtime.cache.prefix_keys`).
            stage_costs: the trial's compute seconds per stage (stages
                ``0 .. j`` are recorded: a restore reports them as its costs).

        Returns:
            ``(key, seconds)``: the key written (``None`` when nothing was)
            and the wall seconds the write took.
        """
        names = [s.name for s in self.pipeline.stages]
        meta = {
            "pipeline": self.pipeline.name,
            "version": self.pipeline.version,
            "stage": j,
            "stage_name": names[j],
            "seed": self.seed,
            "params": {n: dict(params[n]) for n in names[: j + 1]},
            "prefix_costs": [float(c) for c in stage_costs[: j + 1]],
        }
        t0 = time.perf_counter()
        try:
            written = self.cache.save(keys[j], output, meta)
        except Exception as e:  # the trial's result stands; only its caching is lost
            cause = str(e).splitlines()[0][:300] if str(e) else ""  # orbax's messages hold whole storage specs
            logger.warning("could not cache the output of stage %d (%s): %s: %s", j, names[j], type(e).__name__, cause)
            self.cache.stats.save_errors += 1
            written = 0
        return (keys[j] if written else None), time.perf_counter() - t0

    def run(self, params: Mapping, *, keep_outputs: bool = False, admit=None,
            deadline: float | None = None) -> TrialResult:
        """Run one configuration.

        Args:
            params: raw configuration (nested ``{stage: {param: value}}`` or
                flat ``"<stage>__<param>"``).
            keep_outputs: return every stage's output in the result (tests,
                debugging).
            admit: optional ``objective -> bool`` deciding, under a lazy
                (``"top_q"``) policy, whether the finished trial's outputs are
                written (default: the cache's own :meth:`StageCache.admits`);
                a study's :class:`~eeipu_jax.runtime.driver.TrialWorker`
                passes ``lambda y: False`` and keeps the outputs
                (``keep_outputs``) until its driver decides whether the trial
                enters the optimizer's prefix pool.
            deadline: a study's wall-clock limit, as a ``time.time()``
                value: each stage runs under the smaller of ``stage_timeout``
                and the time left, so a stage that would run past it is
                interrupted (the trial fails, naming the study's limit).

        Returns:
            A :class:`TrialResult` (failures are results, not exceptions).

        Raises:
            eeipu_jax.space.SpaceError: the configuration does not fit the
                pipeline's search space (raised before any compute).
            PrepareError: the pipeline's ``prepare()`` raised.
        """
        stages = self.pipeline.stages
        K = len(stages)
        params = nested_params(self.pipeline, params)
        t_start = time.perf_counter()
        keys = prefix_keys(self.pipeline, params, self.seed)
        stage_costs = np.full(K, np.nan)
        stage_seconds = np.full(K, np.nan)
        outputs: list | None = [None] * K if keep_outputs else None

        depth, inp = 0, None
        prepare_seconds = 0.0  # the pipeline's one-off data preparation is not charged
        if self.restore and K > 1:
            depth, inp, meta = self.cache.restore_longest(keys)
        restore_seconds = time.perf_counter() - t_start
        if depth:
            stage_costs[:depth] = meta["prefix_costs"][:depth]
            stage_seconds[:depth] = 0.0
            stage_seconds[depth - 1] = restore_seconds
            if keep_outputs:
                outputs[depth - 1] = inp
        else:
            t_prepare = time.perf_counter()
            inp = self.data()
            prepare_seconds = time.perf_counter() - t_prepare
        inp = read_only(inp)  # shared by every trial (the prepared data) or restored: no stage changes it

        eager = self.write and self.cache.policy.eager
        pending: list[tuple[int, Any]] = []
        saved: list[str] = []
        save_seconds = compile_seconds = 0.0
        error = tb = None
        failed_stage = None
        out = None
        for j in range(depth, K):
            stage = stages[j]
            what = f"stage {j} ({stage.name})"
            limit, by_deadline = self.stage_timeout, False
            if deadline is not None:
                left = max(deadline - time.time(), 1e-3)
                if limit is None or left < limit:
                    limit, by_deadline = left, True
            t0 = time.perf_counter()
            compiled = [0.0]
            try:
                with _time_limit(limit, what), compile_timer() as compiled:
                    out = stage.fn(inp, dict(params[stage.name]), stage_key(self.seed, j))
                    jax.block_until_ready(out)
            except StageTimeout as e:
                error = f"{what} was interrupted: the study's time limit ran out" if by_deadline else str(e)
            except SystemExit as e:  # sys.exit() in a stage ends the trial, not the study
                error = f"{what} called sys.exit({e.code!r}) (SystemExit); a stage must return or raise"
                tb = traceback.format_exc()
            except Exception as e:
                error = f"{what} raised {type(e).__name__}: {e}"
                if isinstance(e, ValueError) and "read-only" in str(e):
                    error += (" (a stage's inputs are read-only, so that the cache restores exactly what each "
                              "stage returned: copy an array before changing it in place, e.g. x = np.array(x))")
                tb = traceback.format_exc()
            dt = time.perf_counter() - t0
            stage_seconds[j] = dt
            compiling = min(compiled[-1] if compiled else 0.0, dt)
            compile_seconds += compiling
            stage_costs[j] = dt - compiling  # what the stage costs once compiled
            if error is None and limit is not None and dt > limit:
                error = (f"{what} was interrupted: the study's time limit ran out" if by_deadline
                         else f"{what} took {dt:.3g} s, over its time limit of {self.stage_timeout:g} s")
            if error is not None:
                failed_stage = j
                break
            if keep_outputs:
                outputs[j] = out
            if j < K - 1 and self.write:
                if eager:
                    key, secs = self.save_output(j, out, params, keys, stage_costs)
                    save_seconds += secs
                    saved += [key] if key else []
                else:
                    pending.append((j, out))  # as returned: the next stages get a read-only view
            inp = read_only(out)

        objective, metrics = math.nan, {}
        if error is None:
            try:
                objective, metrics = objective_of(out)
            except (KeyError, TypeError, ValueError, OverflowError) as e:  # OverflowError: an int beyond float64
                error = f"the last stage's output has no scalar objective: {type(e).__name__}: {e}"
                failed_stage = K - 1
            else:
                error = _objective_error(objective)
                if error is not None:
                    objective = math.nan
        if error is None and pending and (self.cache.admits if admit is None else admit)(objective):
            for j, o in pending:
                key, secs = self.save_output(j, o, params, keys, stage_costs)
                save_seconds += secs
                saved += [key] if key else []
        del pending
        if error is not None:
            objective = math.nan
            logger.warning("trial failed: %s", error)
        return TrialResult(
            status="ok" if error is None else "failed",
            objective=float(objective),
            metrics=metrics,
            stage_costs=stage_costs,
            stage_seconds=stage_seconds,
            charged=max(0.0, time.perf_counter() - t_start - prepare_seconds - compile_seconds),
            memo_depth=int(depth),
            restore_seconds=restore_seconds if self.restore else 0.0,
            save_seconds=save_seconds,
            cache_keys=keys,
            saved_keys=tuple(saved),
            error=error,
            failed_stage=failed_stage,
            traceback=tb,
            outputs=outputs,
            compile_seconds=compile_seconds,
        )

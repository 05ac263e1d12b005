"""The tuning run: the core's ask/tell over a real pipeline, with a stage cache, crash-safe.

Usage::

    python -m experiments.run --pipeline toy --method eeipu --budget 60 --seed 0 --out runs/toy

This module owns the Python driver loop (:func:`run_tuning`) and its
command-line interface (:func:`main`). One iteration: split the PRNG key, ``ask``
for a candidate, run it (:class:`pipelines.runner.Runner`: longest cached prefix
restored for memoizing methods, remaining stages timed), ``tell`` the result,
append one line to ``trials.jsonl`` (flushed and fsynced), then checkpoint the
BO state and key with orbax. The budget is wall seconds of trials (restore,
stages, cache writes); the optimizer's own time is not charged, as in the
paper. The loop runs while ``spent < budget``, so the last trial may overshoot.

A run directory holds::

    config.json        the run's settings; --resume refuses a different one
    trials.jsonl       one JSON object per finished trial (index, x, params, y,
                       status, stage costs, memo depth, charge, cache keys, ...)
    checkpoints/<n>/   (BOState, key) after n trials (orbax; the latest two kept)
    cache_stats.json   this process's cache counters, rewritten after each trial
    summary.json       written when the run ends
    .lock              held by the process running the directory

Resuming (``--resume``) restores the newest readable checkpoint, reads
``trials.jsonl`` (dropping a half-written last line, which no finished trial can
be: a trial counts as finished once its line is fsynced) and re-tells every line
the checkpoint does not include, replaying the same key splits and asks, so the
run continues exactly as if uninterrupted: no finished trial is lost or run
twice, and the trial that was running at the kill is proposed again. The cache
directory is reused.

Failed trials (a stage raised or ran past ``--stage-timeout``, or the objective
is missing or non-finite) are recorded with ``status: "failed"`` and charged
their measured seconds; the optimizer treats them as the worst objective
observed so far, and the run continues.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from eeipu_jax import acquisition as acqlib
from eeipu_jax.utils import enable_compilation_cache
from eeipu_jax import loop as bo
from eeipu_jax.checkpoint import restore_state, save_state
from experiments import common
from pipelines.cache import CachePolicy, StageCache, parse_bytes
from pipelines.registry import available_pipelines, get_pipeline
from pipelines.runner import Runner, check_seed

__all__ = ["RunSpec", "RunConfigError", "run_tuning", "read_trials", "main"]

logger = logging.getLogger(__name__)

FORMAT = 1
_CACHE_WRITES = ("auto", "always", "never")
# BOConfig fields set by their own options (the others derive from the pipeline).
_BO_RESERVED = ("n_warmup",)


class RunConfigError(common.ConfigError):
    """A run's settings are invalid (raised before any compute is spent)."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a tuning run needs (the CLI's options).

    Attributes:
        pipeline: registered pipeline name or ``"module:attribute"``.
        method: registered method (:data:`eeipu_jax.acquisition.METHODS`).
        budget: wall seconds of trials to spend.
        seed: seeds both the optimizer's key and the pipeline's stage keys.
        out: run directory.
        cache_dir: stage cache directory (default ``<out>/cache``); may be
            shared between runs and workers.
        cache_policy: ``"top_q"`` or ``"all"``.
        cache_q: trials whose prefixes ``"top_q"`` keeps.
        cache_max_bytes: size limit of the cache (LRU eviction), ``None``: none.
        cache_writes: ``"auto"`` (write only for memoizing methods),
            ``"always"`` or ``"never"``.
        n_warmup: random initial trials.
        stage_timeout: per-stage limit in seconds (``None``: none).
        epsilon: price of a memoized stage in the acquisition.
        bo_options: other :class:`~eeipu_jax.loop.BOConfig` fields as
            ``((name, value), ...)``.
        max_trials: stop after this many trials even if budget remains.
        progress: show a progress bar.
        resume: continue the run in ``out``.
        jax_cache_dir: JAX persistent compilation cache (speeds up restarts).
    """

    pipeline: str
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
    max_trials: int | None = None
    progress: bool = True
    resume: bool = False
    jax_cache_dir: str | None = None


@dataclasses.dataclass
class _Plan:
    spec: RunSpec
    pipeline: Any
    method: acqlib.Method
    config: bo.BOConfig
    policy: CachePolicy
    cache_dir: str
    write: bool
    config_doc: dict


# ------------------------------------------------------------- validation
def _check_writable_dir(path: Any, what: str) -> str:
    return common.check_writable_dir(path, what, RunConfigError)


def _coerce_bo_option(name: str, value: Any) -> Any:
    try:
        return common.coerce_bo_option(name, value, reserved=_BO_RESERVED, where="--bo ")
    except common.ConfigError as e:
        raise RunConfigError(str(e)) from None


def _validate(spec: RunSpec, *, disk: bool = True) -> _Plan:
    """Check every setting and resolve names, writing nothing anywhere.

    Everything a run needs is decided here, before any file or directory is
    created, so a refused command leaves ``--out`` as it was. Nothing
    expensive runs (the pipeline object is built; its ``prepare()`` is not
    called).

    Args:
        spec: the run's settings.
        disk: also check the directories (writable; ``--out`` holds a run
            exactly when ``--resume`` says so). ``False`` checks the settings
            alone, e.g. for every job of a comparison before the first runs.

    Raises:
        RunConfigError: the first setting that is wrong, named as its option.
    """
    def bad(field: str, msg: str):
        raise RunConfigError(f"--{field.replace('_', '-')}: {msg}")

    if not (common.is_real(spec.budget) and math.isfinite(spec.budget) and spec.budget > 0):
        bad("budget", f"must be a positive number of seconds, got {spec.budget!r}")
    try:
        check_seed(spec.seed)
    except ValueError as e:
        bad("seed", str(e).removeprefix("seed "))
    if not (common.is_int(spec.n_warmup) and 1 <= spec.n_warmup <= common.INT32_MAX):
        bad("n_warmup", f"must be a positive integer of at most {common.INT32_MAX}, got {spec.n_warmup!r}")
    if spec.cache_writes not in _CACHE_WRITES:
        bad("cache_writes", f"must be one of {list(_CACHE_WRITES)}, got {spec.cache_writes!r}")
    if spec.stage_timeout is not None and not (
        common.is_real(spec.stage_timeout) and math.isfinite(spec.stage_timeout) and spec.stage_timeout > 0
    ):
        bad("stage_timeout", f"must be positive seconds, got {spec.stage_timeout!r}")
    if not (common.is_real(spec.epsilon) and math.isfinite(spec.epsilon) and spec.epsilon > 0):
        bad("epsilon", f"must be a positive number, got {spec.epsilon!r}")
    if spec.max_trials is not None and not (common.is_int(spec.max_trials) and spec.max_trials >= 1):
        bad("max_trials", f"must be an integer of at least 1, got {spec.max_trials!r}")
    try:
        method = acqlib.get_method(spec.method)
    except (ValueError, TypeError) as e:
        raise RunConfigError(f"--method: {e}") from None
    try:
        policy = CachePolicy(spec.cache_policy, spec.cache_q, spec.cache_max_bytes)
    except (ValueError, TypeError) as e:
        raise RunConfigError(f"--cache-policy/--cache-q/--cache-max-bytes: {e}") from None
    try:
        pipeline = get_pipeline(spec.pipeline)
    except Exception as e:  # a factory or space that raises is a bad --pipeline, not a crash
        raise RunConfigError(f"--pipeline: {e}") from None
    bo_options = {}
    for item in spec.bo_options:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise RunConfigError(f"--bo: expected (name, value) pairs, got {item!r}")
        bo_options[item[0]] = _coerce_bo_option(*item)
    for stage in pipeline.stages:
        for p in stage.params:
            for choice in getattr(p, "choices", ()):
                if not (choice is None or isinstance(choice, (bool, int, float, str))) or (
                    isinstance(choice, float) and not math.isfinite(choice)
                ):
                    raise RunConfigError(
                        f"--pipeline: stage {stage.name!r} parameter {p.name!r} has choice {choice!r}; "
                        "cache keys need finite bool/int/float, str or None choices"
                    )
    try:
        config = bo.BOConfig.from_space(pipeline.space, method=method.name, n_warmup=spec.n_warmup, **bo_options)
    except Exception as e:
        raise RunConfigError(f"--n-warmup/--bo: {type(e).__name__}: {e}") from None
    write = {"auto": method.memoize, "always": True, "never": False}[spec.cache_writes]
    doc = {
        "format": FORMAT,
        "pipeline": spec.pipeline,
        "pipeline_name": pipeline.name,
        "pipeline_version": pipeline.version,
        "method": method.name,
        "budget": float(spec.budget),
        "seed": int(spec.seed),
        "n_warmup": int(spec.n_warmup),
        "epsilon": float(spec.epsilon),
        "cache_policy": policy.kind,
        "cache_q": int(policy.q),
        "cache_writes": spec.cache_writes,
        "bo_options": {k: bo_options[k] for k in sorted(bo_options)},
    }
    try:  # config.json must be writable as strict JSON before anything is written
        json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise RunConfigError(f"the run's settings cannot be recorded in config.json: {e}") from None
    if not disk:
        return _Plan(spec, pipeline, method, config, policy, "", write, doc)
    if method.memoize and policy.kind == "top_q" and policy.q < config.top_q:
        logger.warning(
            "cache q=%d is smaller than the optimizer's top_q=%d: some proposed prefixes will not be cached",
            policy.q, config.top_q,
        )

    out = _check_writable_dir(spec.out, "--out")
    cache_dir = _check_writable_dir(spec.cache_dir or os.path.join(out, "cache"), "--cache-dir")
    if spec.jax_cache_dir is not None:
        _check_writable_dir(spec.jax_cache_dir, "--jax-cache-dir")
    has_run = any(os.path.exists(os.path.join(out, f)) for f in ("config.json", "trials.jsonl"))
    if spec.resume and not os.path.exists(os.path.join(out, "config.json")):
        raise RunConfigError(f"--resume: no run to resume in {out!r} (config.json missing)")
    if not spec.resume and has_run:
        raise RunConfigError(f"--out {out!r} already holds a run; pass --resume to continue it or choose a new --out")
    return _Plan(spec, pipeline, method, config, policy, cache_dir, write, doc)


# ----------------------------------------------------------------- files
def _jsonable(v: Any) -> Any:
    """NaN/inf -> None, NumPy -> Python, recursively (strict JSON)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _atomic_write_json(path: str, doc: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append_line(path: str, record: dict) -> dict:
    """Append ``record`` as one fsynced JSON line; returns it as it reads back."""
    record = _jsonable(record)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return record


def read_trials(path: str, *, repair: bool = False) -> list[dict]:
    """The finished trials of a run, in order.

    Args:
        path: ``trials.jsonl``.
        repair: drop a half-written last line (a kill during the write) from
            the file; otherwise it is only ignored.

    Raises:
        RunConfigError: a complete line is unreadable or indices are not
            ``0, 1, 2, ...`` (the file was edited or damaged).
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        raw = f.read()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) < len(raw):
        logger.warning("%s ends with a half-written line (a trial interrupted while being recorded); dropping it", path)
        if repair:
            with open(path, "r+b") as f:
                f.truncate(len(complete))
                f.flush()
                os.fsync(f.fileno())
    records = []
    for i, line in enumerate(complete.decode("utf-8").splitlines()):
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise RunConfigError(f"{path} line {i + 1} is not valid JSON: {e}") from None
        if rec.get("index") != i:
            raise RunConfigError(f"{path} line {i + 1} has index {rec.get('index')!r}, expected {i}")
        records.append(rec)
    return records


def _nan(v) -> float:
    return math.nan if v is None else float(v)


# ----------------------------------------------------------- checkpoints
def _checkpoint_dirs(run_dir: str) -> list[tuple[int, str]]:
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        if name.isdigit():  # orbax's in-progress directories carry a suffix
            out.append((int(name), os.path.join(root, name)))
    return sorted(out)


def _save_checkpoint(run_dir: str, state, key) -> None:
    n = int(state.n)
    path = os.path.join(run_dir, "checkpoints", f"{n:08d}")
    if os.path.exists(path):  # a resumed run re-saving the same step
        shutil.rmtree(path)
    save_state(path, state, key)
    for m, old in _checkpoint_dirs(run_dir)[:-2]:
        shutil.rmtree(old)


def _restore_checkpoint(run_dir: str, like):
    """The newest readable checkpoint's ``(state, key)``, or ``None``.

    Also removes checkpoints a killed process left half-written (orbax's
    temporary directories; never restored). The caller holds the run's lock.
    """
    root = os.path.join(run_dir, "checkpoints")
    for name in os.listdir(root) if os.path.isdir(root) else ():
        if not name.isdigit():
            shutil.rmtree(os.path.join(root, name))
    for n, path in reversed(_checkpoint_dirs(run_dir)):
        try:
            return restore_state(path, like, with_key=True)
        except Exception as e:  # an unreadable checkpoint: fall back to an older one
            logger.warning("checkpoint %s is unreadable (%s: %s); trying an older one", path, type(e).__name__, e)
    return None


@contextlib.contextmanager
def _lock(run_dir: str):
    fh = open(os.path.join(run_dir, ".lock"), "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise RunConfigError(f"--out {run_dir!r} is in use by another process") from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


# ------------------------------------------------------------------ run
def _tell_record(state, rec: dict):
    return bo.tell(
        state,
        np.asarray(rec["x"], np.float32),
        _nan(rec["y"]),
        np.asarray([_nan(c) for c in rec["stage_costs"]]),
        int(rec["memo_depth"]),
        float(rec["charged"]),
    )


def _start_or_resume(plan: _Plan, trials_path: str):
    """``(state, key, records)`` of a fresh run, or of the run being resumed."""
    spec, config = plan.spec, plan.config
    run_dir = os.path.abspath(spec.out)
    config_path = os.path.join(run_dir, "config.json")
    fresh = bo.init(config, spec.budget, epsilon=spec.epsilon)
    if not spec.resume:
        if os.path.exists(config_path) or os.path.exists(trials_path):
            raise RunConfigError(
                f"--out {run_dir!r} already holds a run; pass --resume to continue it or choose a new --out"
            )
        _atomic_write_json(config_path, plan.config_doc)
        return fresh, jax.random.key(spec.seed), []

    if not os.path.exists(config_path):
        raise RunConfigError(f"--resume: no run to resume in {run_dir!r} (config.json missing)")
    try:
        with open(config_path, encoding="utf-8") as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise ValueError(f"it holds a {type(saved).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise RunConfigError(f"--resume: {config_path} is unreadable ({e}); the run directory was altered") from None
    diffs = [
        f"{k}: run has {saved.get(k)!r}, this command has {v!r}"
        for k, v in plan.config_doc.items()
        if saved.get(k) != v
    ]
    if diffs:
        raise RunConfigError("--resume: settings differ from the run's config.json: " + "; ".join(diffs))
    records = read_trials(trials_path, repair=True)
    got = _restore_checkpoint(run_dir, fresh)
    state, key = got if got is not None else (fresh, jax.random.key(spec.seed))
    n = int(state.n)
    if len(records) < n:
        raise RunConfigError(
            f"{trials_path} has {len(records)} trials but the checkpoint has {n}: the run directory was altered"
        )
    # Trials recorded after the last checkpoint: replay their asks (same key
    # splits, same GP warm starts) and tell what was recorded; nothing reruns.
    for rec in records[n:]:
        key, k_ask = jax.random.split(key)
        prop, state = bo.ask(k_ask, state, config)
        if not np.allclose(np.asarray(prop.x), np.asarray(rec["x"], np.float32), atol=1e-6):
            logger.warning("replayed proposal %d differs from the recorded one; telling the recorded trial", rec["index"])
        state = _tell_record(state, rec)
    if len(records) > n:
        logger.info("re-told %d trial(s) recorded after the last checkpoint", len(records) - n)
        _save_checkpoint(run_dir, state, key)
    return state, key, records


def _best(records: list[dict]) -> dict | None:
    ok = [r for r in records if r["status"] == "ok"]
    return max(ok, key=lambda r: r["y"]) if ok else None


def run_tuning(spec: RunSpec) -> dict:
    """Run (or resume) a tuning run; returns its summary (also in ``summary.json``).

    Raises:
        RunConfigError: invalid settings (before any compute), or a resume
            that does not match the run directory.
    """
    plan = _validate(spec)
    try:
        enable_compilation_cache(os.path.abspath(spec.jax_cache_dir) if spec.jax_cache_dir else None)
    except OSError as e:  # e.g. $EEIPU_JAX_XLA_CACHE names a place that cannot be created
        raise RunConfigError(f"--jax-cache-dir / $EEIPU_JAX_XLA_CACHE: cannot use the compilation cache: {e}") from None
    run_dir = os.path.abspath(spec.out)
    trials_path = os.path.join(run_dir, "trials.jsonl")
    try:
        os.makedirs(run_dir, exist_ok=True)
        os.makedirs(plan.cache_dir, exist_ok=True)
    except OSError as e:
        raise RunConfigError(f"--out/--cache-dir: cannot create the directory: {e}") from None
    with _lock(run_dir):
        state, key, records = _start_or_resume(plan, trials_path)
        return _loop(plan, state, key, records, run_dir, trials_path)


def _loop(plan: _Plan, state, key, records: list[dict], run_dir: str, trials_path: str) -> dict:
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    spec, config, pipeline = plan.spec, plan.config, plan.pipeline
    space = pipeline.space
    cache = StageCache(plan.cache_dir, plan.policy)
    for rec in records:
        cache.record_trial(_nan(rec["y"]), rec["cache_keys"], prune=False)
    cache.prune()
    runner = Runner(
        pipeline, seed=spec.seed, cache=cache, restore=plan.method.memoize, write=plan.write,
        stage_timeout=spec.stage_timeout,
    )
    stats_path = os.path.join(run_dir, "cache_stats.json")
    hits = sum(1 for r in records if r["memo_depth"] > 0)
    fails = sum(1 for r in records if r["status"] != "ok")
    best = _best(records)
    started = len(records)
    bar = tqdm(
        total=float(spec.budget),
        initial=min(float(state.spent), float(spec.budget)),
        unit="s",
        disable=not spec.progress,
        dynamic_ncols=True,
        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
        desc=f"{pipeline.name}/{plan.method.name}",
    )

    def postfix():
        bar.set_postfix(
            trial=len(records),
            spent=f"{float(state.spent):.1f}/{spec.budget:g}s",
            best=f"{best['y']:.4g}" if best else "-",
            hits=hits,
            failed=fails,
            refresh=False,
        )

    postfix()
    with bar, logging_redirect_tqdm():
        while float(state.spent) < spec.budget and (spec.max_trials is None or len(records) - started < spec.max_trials):
            i = int(state.n)
            key, k_ask = jax.random.split(key)
            prop, state = bo.ask(k_ask, state, config)
            x = np.array(prop.x, np.float32)
            params = space.from_unit(x)
            proposed_depth, source = int(prop.memo_depth), int(prop.source)
            if proposed_depth > 0 and source >= 0:
                # Reuse the source trial's exact raw values so cache keys match bit for bit.
                for stage in pipeline.stages[:proposed_depth]:
                    params[stage.name] = dict(records[source]["params"][stage.name])
                mask = space.prefix_mask(proposed_depth)
                x[mask] = np.asarray(state.X[source])[mask]
            result = runner.run(params)
            state = bo.tell(state, x, result.objective, result.stage_costs, result.memo_depth, result.charged)
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
                "charged": result.charged,
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
                "warmup": i < config.n_warmup,
                "time": time.time(),
            }
            records.append(_append_line(trials_path, record))
            logger.info(
                "trial %d %s: y=%s memo_depth=%d charged=%.3fs spent=%.1f/%gs%s",
                i, result.status, f"{result.objective:.6g}", result.memo_depth, result.charged,
                float(state.spent), spec.budget, f" ({result.error})" if result.error else "",
            )
            _save_checkpoint(run_dir, state, key)
            cache.record_trial(result.objective, result.cache_keys)
            _atomic_write_json(stats_path, cache.stats.to_dict())  # counters only: no directory scan per trial
            hits += result.memo_depth > 0
            fails += not result.ok
            best = _best(records)
            postfix()
            bar.update(max(0.0, min(result.charged, bar.total - bar.n)))  # the last trial may overshoot

    io = sum(r["restore_seconds"] + r["save_seconds"] for r in records)
    spent = float(state.spent)
    summary = {
        "pipeline": pipeline.name,
        "method": plan.method.name,
        "seed": spec.seed,
        "budget": float(spec.budget),
        "spent": spent,
        "n_trials": len(records),
        "n_failed": fails,
        "n_memoized": hits,
        "best": None if best is None else {k: best[k] for k in ("index", "y", "params", "metrics")},
        "cache_io_seconds": io,
        "cache_io_fraction": io / spent if spent > 0 else 0.0,
        "cache": cache.summary(),
    }
    _atomic_write_json(os.path.join(run_dir, "summary.json"), _jsonable(summary))
    return summary


# -------------------------------------------------------------------- CLI
def _bo_option(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _byte_size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    methods = ", ".join(f"{m.name} ({m.description})" for m in acqlib.METHODS.values())
    parser = argparse.ArgumentParser(
        prog="python -m experiments.run",
        description=(
            "Tune a multi-stage pipeline with memoization-aware, cost-aware Bayesian optimization. "
            "Each trial's stage outputs are cached (orbax) so that a candidate sharing a "
            "hyperparameter prefix with an earlier one restarts from the cached stage."
        ),
        epilog=(
            f"Pipelines: {', '.join(available_pipelines())} (or any 'module:attribute' path to a "
            f"Pipeline or a zero-argument factory). Methods: {methods}. "
            "Results: <out>/trials.jsonl (one JSON line per trial), <out>/summary.json."
        ),
    )
    p = parser.add_argument
    p("--pipeline", required=True, help="registered pipeline name or module:attribute")
    p("--method", default="eeipu", help="optimization method (registry name; default: %(default)s)")
    p("--budget", type=float, required=True, help="budget in wall seconds of trials (restores, stages, cache writes)")
    p("--seed", type=int, default=0, help="seed of the optimizer and of the pipeline's stage PRNG keys, 0..4294967295 (default: %(default)s)")
    p("--out", required=True, help="run directory (trials.jsonl, checkpoints, config.json, summary.json)")
    p("--cache-dir", default=None, help="stage cache directory, shareable between runs (default: <out>/cache)")
    p("--cache-policy", default="top_q", choices=["top_q", "all"],
      help="top_q: keep the stage outputs of the Q best trials' prefixes; all: keep every output (default: %(default)s)")
    p("--cache-q", type=int, default=5, help="Q of --cache-policy top_q (default: %(default)s)")
    p("--cache-max-bytes", type=_byte_size, default=None,
      help="size limit of the cache, e.g. 500MB or 2GiB; least recently used entries are evicted (default: none)")
    p("--cache-writes", default="auto", choices=list(_CACHE_WRITES),
      help="auto: write stage outputs only for memoizing methods (the only ones that restore); "
           "always: also for baselines (e.g. to fill a shared cache); never (default: %(default)s)")
    p("--n-warmup", type=int, default=10,
      help="random initial trials before Bayesian optimization, at least 2 (default: %(default)s)")
    p("--stage-timeout", type=float, default=None,
      help="per-stage time limit in seconds; a stage over it fails the trial (charged, run continues; default: none)")
    p("--epsilon", type=float, default=0.1, help="price of a memoized stage in the acquisition (default: %(default)s)")
    p("--bo", type=_bo_option, action="append", default=[], metavar="NAME=VALUE",
      help="set another BOConfig field, e.g. --bo n_random=256 --bo top_q=5 (repeatable)")
    p("--max-trials", type=int, default=None, help="stop after this many trials in this invocation")
    p("--jax-cache-dir", default=None,
      help="JAX persistent compilation cache directory (a resumed run skips recompiling); default "
           "$EEIPU_JAX_XLA_CACHE or ~/.cache/eeipu_jax/xla ('off' in that variable disables it)")
    p("--resume", action="store_true",
      help="continue the run in --out (same settings; finished trials are kept, the interrupted one rerun)")
    p("--no-progress", action="store_true", help="no progress bar")
    p("-v", "--verbose", action="store_true", help="log each trial")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # importing orbax installs a root handler first
    )
    spec = RunSpec(
        pipeline=args.pipeline,
        method=args.method,
        budget=args.budget,
        seed=args.seed,
        out=args.out,
        cache_dir=args.cache_dir,
        cache_policy=args.cache_policy,
        cache_q=args.cache_q,
        cache_max_bytes=args.cache_max_bytes,
        cache_writes=args.cache_writes,
        n_warmup=args.n_warmup,
        stage_timeout=args.stage_timeout,
        epsilon=args.epsilon,
        bo_options=tuple(args.bo),
        max_trials=args.max_trials,
        progress=not args.no_progress,
        resume=args.resume,
        jax_cache_dir=args.jax_cache_dir,
    )
    try:
        summary = run_tuning(spec)
    except RunConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; finished trials are in {spec.out}; continue with --resume", file=sys.stderr)
        return 130
    best = summary["best"]
    best_text = "-" if best is None else f"{best['y']:.6g} (trial {best['index']})"
    print(
        f"{summary['n_trials']} trials ({summary['n_failed']} failed, {summary['n_memoized']} memoized), "
        f"spent {summary['spent']:.1f}/{summary['budget']:.1f} s, best {best_text}, "
        f"cache I/O {100 * summary['cache_io_fraction']:.1f}% of spend -> {os.path.join(spec.out, 'summary.json')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

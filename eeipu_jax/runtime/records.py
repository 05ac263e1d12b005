"""A study's records on disk: ``trials.jsonl``, strict JSON files, and the typed :class:`Trial`.

A trial counts as finished once its line in ``trials.jsonl`` is written,
flushed and fsynced (:func:`append_line`); a kill during the write leaves a
half-written last line, which :func:`read_trials` drops (and, when asked,
truncates from the file). Other files of a run directory (``config.json``,
``summary.json``, cache statistics) are replaced atomically
(:func:`atomic_write_json`: a temporary file, fsynced, renamed over the old
one). Everything is strict JSON: NaN and infinities are written as ``null``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from eeipu_jax.runtime.settings import ConfigError, StorageError

__all__ = ["Trial", "jsonable", "atomic_write_json", "append_line", "read_trials", "optimizer_seconds",
           "float_or_nan", "best_record", "record_problem", "writing",
           "ensure_free_space", "FREE_SPACE_MARGIN"]

logger = logging.getLogger(__name__)


def jsonable(v: Any) -> Any:
    """NaN/inf -> ``None``, NumPy -> Python, tuples -> lists, recursively (strict JSON)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def float_or_nan(v: Any) -> float:
    """A recorded number as a float: ``None`` (how strict JSON writes NaN) -> NaN."""
    return math.nan if v is None else float(v)


def best_record(records: list[dict]) -> dict | None:
    """The ``ok`` record with the highest objective (the first of equals); ``None`` if none is ok."""
    ok = [r for r in records if r["status"] == "ok"]
    return max(ok, key=lambda r: r["y"]) if ok else None


def optimizer_seconds(records: list[dict]) -> tuple[float, float]:
    """``(optimizer, wall)``: the seconds of ``ask`` (with the tell before it)
    over a run's records, and those plus the trials' own seconds. Records
    written before ``ask_seconds`` was recorded count in neither."""
    timed = [r for r in records if "ask_seconds" in r]
    optimizer = sum(r["ask_seconds"] for r in timed)
    return optimizer, optimizer + sum(r.get("trial_seconds", r["charged"]) for r in timed)


@contextlib.contextmanager
def writing(what: str):
    """Raise an ``OSError`` of the block (a full disk, a quota, a read-only file system) as a
    :class:`~eeipu_jax.runtime.settings.StorageError` naming ``what`` was being written, on one line."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(f"could not write {what}: {e.strerror or e}", e.errno) from None


#: Free bytes a write must leave on its file system, beyond its own size (:func:`ensure_free_space`).
FREE_SPACE_MARGIN = 1 << 20


def ensure_free_space(path: str, nbytes: int) -> None:
    """Refuse a write of about ``nbytes`` under ``path`` that the file system has no room for.

    Orbax fails a write on a full disk from its background threads, which
    print their own tracebacks; checking first turns the common case into one
    ``OSError``. The margin (a tenth of the size plus
    :data:`FREE_SPACE_MARGIN`) covers the metadata and block rounding of an
    orbax checkpoint's many small files.

    Raises:
        OSError: ``ENOSPC``, naming the bytes needed and free.
    """
    where = path
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    free = shutil.disk_usage(where).free
    needed = int(nbytes) + int(nbytes) // 10 + FREE_SPACE_MARGIN
    if free < needed:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free} bytes free, about {needed} needed)", path)


def atomic_write_json(path: str, doc: Any) -> None:
    """Replace ``path`` with ``doc`` as strict JSON (temporary file, fsync, rename).

    A failed write (a full disk) removes its temporary file and leaves
    ``path`` as it was.
    """
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def append_line(path: str, record: dict) -> dict:
    """Append ``record`` as one fsynced JSON line; returns it as it reads back.

    A failed write (a full disk) cuts the file back to where it was, so no
    half-written line is left behind.
    """
    record = jsonable(record)
    data = (json.dumps(record, allow_nan=False) + "\n").encode("utf-8")
    with open(path, "ab", buffering=0) as f:
        start = f.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[f.write(view):]
            os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(f.fileno(), start)
            raise
    return record


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _seconds(v: Any) -> bool:
    return _number(v) and math.isfinite(v) and v >= 0


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _list_of(check):
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


_SECONDS = "a finite number >= 0"
#: The fields of a ``trials.jsonl`` line: ``name: (required, check, what it must be)``. Records
#: written before a field existed lack the optional ones; every reader copes with their absence.
_FIELDS = {
    "status": (True, lambda v: v in ("ok", "failed"), '"ok" or "failed"'),
    "x": (True, _list_of(lambda v: _number(v) and math.isfinite(v)), "a list of finite numbers"),
    "params": (True, lambda v: isinstance(v, dict) and all(isinstance(p, dict) for p in v.values()),
               "an object {stage: {name: value}}"),
    "memo_depth": (True, _count, "an integer >= 0"),
    "stage_costs": (True, _list_of(lambda v: v is None or _number(v)), "a list of numbers or null"),
    "charged": (True, _seconds, _SECONDS),
    "spent": (True, _seconds, _SECONDS),
    "restore_seconds": (True, _seconds, _SECONDS),
    "save_seconds": (True, _seconds, _SECONDS),
    "cache_keys": (True, _list_of(lambda v: isinstance(v, str)), "a list of strings"),
    "trial_seconds": (False, _seconds, _SECONDS),
    "ask_seconds": (False, _seconds, _SECONDS),
    "compile_seconds": (False, _seconds, _SECONDS),
    "saved_keys": (False, _list_of(lambda v: isinstance(v, str)), "a list of strings"),
    "metrics": (False, lambda v: v is None or isinstance(v, dict), "an object"),
    "error": (False, lambda v: v is None or isinstance(v, str), "a string or null"),
    "proposed_depth": (False, _count, "an integer >= 0"),
    "source": (False, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "failed_stage": (False, lambda v: v is None or _count(v), "an integer >= 0 or null"),
    "warmup": (False, lambda v: isinstance(v, bool), "true or false"),
}


def record_problem(rec: Any, index: int) -> str | None:
    """What is wrong with ``rec`` as line ``index`` of ``trials.jsonl``, or ``None``.

    Checks what every reader of the records relies on (the summary, the
    :class:`Trial` records, a resume): an object with ``index == index``, each
    field of :data:`_FIELDS` of its type, and ``y`` a finite number when the
    status is ``"ok"`` (``null`` or a number when ``"failed"``).
    """
    if not isinstance(rec, dict):
        return f"holds a JSON {type(rec).__name__}, not an object"
    got = rec.get("index")
    if not (isinstance(got, int) and not isinstance(got, bool) and got == index):
        return f"has index {got!r}, expected {index}"

    def shown(v):
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "..."

    for name, (required, check, what) in _FIELDS.items():
        if name not in rec:
            if required:
                return f"{name!r} is missing (expected {what})"
        elif not check(rec[name]):
            return f"{name!r} is {shown(rec[name])}, expected {what}"
    y = rec.get("y")
    if rec["status"] == "ok" and not (_number(y) and math.isfinite(y)):
        return f"'y' is {shown(y)}, expected a finite number (status \"ok\")"
    if rec["status"] == "failed" and not (y is None or _number(y)):
        return f"'y' is {shown(y)}, expected null or a number (status \"failed\")"
    return None


def read_trials(path: str, *, repair: bool = False) -> list[dict]:
    """The finished trials of a run, in order, as the dicts of their lines.

    Reads only, unless ``repair``: a run directory on a read-only file
    system can be summarized.

    Args:
        path: ``trials.jsonl``.
        repair: drop a half-written last line (a kill during the write) from
            the file; otherwise it is only ignored.

    Raises:
        ConfigError: the file cannot be read, or a complete line is not UTF-8
            JSON of a trial record (:func:`record_problem`: fields missing or
            of the wrong type, indices not ``0, 1, 2, ...``); the message names
            the file and the line.
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) < len(raw):
        logger.warning("%s ends with a half-written line (a trial interrupted while being recorded); dropping it", path)
        if repair:
            with open(path, "r+b") as f:
                f.truncate(len(complete))
                f.flush()
                os.fsync(f.fileno())
    records = []
    damaged = "(the file was edited or damaged)"
    for i, line in enumerate(complete.split(b"\n")[:-1]):
        where = f"{path} line {i + 1}"
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where} is not UTF-8 text (byte {line[e.start]:#04x} at column {e.start + 1}) "
                              f"{damaged}") from None
        except ValueError as e:
            raise ConfigError(f"{where} is not valid JSON: {e} {damaged}") from None
        problem = record_problem(rec, i)
        if problem is not None:
            raise ConfigError(f"{where}: {problem} {damaged}")
        records.append(rec)
    return records


def _floats(values) -> tuple[float, ...]:
    return tuple(math.nan if v is None else float(v) for v in values or ())


@dataclasses.dataclass(frozen=True)
class Trial:
    """One finished trial of a study, as recorded in ``trials.jsonl``.

    Attributes:
        index: position in the run (0, 1, 2, ...).
        status: ``"ok"`` or ``"failed"``.
        y: the objective (``None`` for a failed trial).
        params: raw hyperparameters, ``{stage: {name: value}}``.
        memo_depth: leading stages restored from the stage cache.
        charged: seconds the trial cost the budget: its ``trial_seconds``,
            plus its ``ask_seconds`` in a study that charges the optimizer.
        spent: the budget spent after this trial.
        warmup: whether it was one of the initial random trials.
        stage_costs: compute seconds per stage (restored stages: their
            original cost; NaN: the stage never ran).
        stage_seconds: wall seconds spent per stage in this trial.
        proposed_depth: the memo depth the optimizer proposed (the runner may
            restore less, if an entry was evicted, or more).
        source: the earlier trial whose prefix was reused (-1: none).
        metrics: the other entries the last stage returned (scalars, strings, JSON
            values: :func:`~eeipu_jax.runtime.pipeline.objective_of`).
        error: what failed (``None`` if ok).
        x: the point in the optimizer's unit cube.
        eta: cost-cooling exponent of the ask.
        score: acquisition value of the proposal (NaN during warm-up).
        time: Unix time when the trial was recorded.
        trial_seconds: wall seconds of the trial itself (restore, stages,
            cache writes), less its ``compile_seconds``.
        compile_seconds: wall seconds JAX spent tracing and compiling in the
            trial's stages (a worker's first trial, new shapes): set-up, not
            charged; 0 in records written before they were recorded.
        ask_seconds: the optimizer's wall seconds before the trial (the
            previous trial's tell in this process and the ask that proposed
            it); NaN in records written before they were recorded.
    """

    index: int
    status: str
    y: float | None
    params: dict
    memo_depth: int
    charged: float
    spent: float
    warmup: bool = False
    stage_costs: tuple = ()
    stage_seconds: tuple = ()
    proposed_depth: int = 0
    source: int = -1
    metrics: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    x: tuple = ()
    eta: float = math.nan
    score: float = math.nan
    time: float = math.nan
    trial_seconds: float = math.nan
    ask_seconds: float = math.nan
    compile_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the trial finished with an objective."""
        return self.status == "ok"

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> "Trial":
        """A :class:`Trial` from one line of ``trials.jsonl``."""

        def num(v):
            return math.nan if v is None else float(v)

        return cls(
            index=int(rec["index"]),
            status=str(rec["status"]),
            y=None if rec.get("y") is None or rec["status"] != "ok" else float(rec["y"]),
            params={s: dict(p) for s, p in (rec.get("params") or {}).items()},
            memo_depth=int(rec.get("memo_depth", 0)),
            charged=float(rec["charged"]),
            spent=float(rec["spent"]),
            warmup=bool(rec.get("warmup", False)),
            stage_costs=_floats(rec.get("stage_costs")),
            stage_seconds=_floats(rec.get("stage_seconds")),
            proposed_depth=int(rec.get("proposed_depth", 0)),
            source=int(rec.get("source", -1)),
            metrics=dict(rec.get("metrics") or {}),
            error=rec.get("error"),
            x=_floats(rec.get("x")),
            eta=num(rec.get("eta")),
            score=num(rec.get("score")),
            time=num(rec.get("time")),
            trial_seconds=num(rec.get("trial_seconds", rec["charged"])),
            ask_seconds=num(rec.get("ask_seconds")),
            compile_seconds=float(rec.get("compile_seconds", 0.0)),
        )

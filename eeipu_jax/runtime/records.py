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

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from eeipu_jax.runtime.settings import ConfigError

__all__ = ["Trial", "jsonable", "atomic_write_json", "append_line", "read_trials", "optimizer_seconds",
           "float_or_nan", "best_record"]

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
    return optimizer, optimizer + sum(r["trial_seconds"] for r in timed)


def atomic_write_json(path: str, doc: Any) -> None:
    """Replace ``path`` with ``doc`` as strict JSON (temporary file, fsync, rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_line(path: str, record: dict) -> dict:
    """Append ``record`` as one fsynced JSON line; returns it as it reads back."""
    record = jsonable(record)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return record


def read_trials(path: str, *, repair: bool = False) -> list[dict]:
    """The finished trials of a run, in order, as the dicts of their lines.

    Args:
        path: ``trials.jsonl``.
        repair: drop a half-written last line (a kill during the write) from
            the file; otherwise it is only ignored.

    Raises:
        ConfigError: a complete line is unreadable or indices are not
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
            raise ConfigError(f"{path} line {i + 1} is not valid JSON: {e}") from None
        if not isinstance(rec, dict) or rec.get("index") != i:
            got = rec.get("index") if isinstance(rec, dict) else rec
            raise ConfigError(f"{path} line {i + 1} has index {got!r}, expected {i}")
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
        metrics: other scalars the last stage returned.
        error: what failed (``None`` if ok).
        x: the point in the optimizer's unit cube.
        eta: cost-cooling exponent of the ask.
        score: acquisition value of the proposal (NaN during warm-up).
        time: Unix time when the trial was recorded.
        trial_seconds: wall seconds of the trial itself (restore, stages,
            cache writes).
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
        )

"""The stage-cache store: entries on disk, their trust, the policy applied, LRU, statistics.

This module owns everything on disk under a cache directory (keys come from
:mod:`eeipu_jax.runtime.cache.keys`, the pytree encoding from
:mod:`~eeipu_jax.runtime.cache.codec`, the metadata checks from
:mod:`~eeipu_jax.runtime.cache.meta`, the keep rules from
:mod:`~eeipu_jax.runtime.cache.policy`):

* **Entries.** ``<root>/entries/<key>/`` holds ``data/`` (an orbax PyTree
  checkpoint of the output's array leaves), ``meta.json`` (the key's inputs,
  the output's structure, the dtype/shape/kind of every leaf, the size and
  SHA-256 of every data file, and the original compute cost of stages
  ``0 .. j``) and ``last_access`` (the LRU clock). An entry is written under
  ``<root>/tmp/<key>.<nonce>.<pid>@<host>`` and renamed into ``entries/`` only
  when complete, so a half-written entry is never visible. A half-written
  folder whose writer process is gone (same host, same PID namespace) is
  removed when a cache opens, another host's once older than
  ``stale_tmp_seconds``. A rename that loses a race against another writer of
  the same key is discarded. Deletion renames the entry into
  ``<root>/trash/`` first, so readers see a whole entry or none.
* **Trust.** ``meta.json`` carries its own SHA-256 and the SHA-256 of every
  data file, so the checksums cover the whole entry; every restore checks the
  metadata's checksum and values (:mod:`eeipu_jax.runtime.cache.meta`: costs
  finite and non-negative, leaf shapes and pack offsets consistent, the key
  recomputed from the recorded pipeline, stage, seed and parameters, ...),
  re-hashes the data files and refuses files it does not list. A missing,
  truncated or altered file, an altered or unreadable ``meta.json``, or any
  error while restoring marks the entry corrupted: it is logged with
  :func:`logging.warning`, deleted, and the caller recomputes the stage. The
  checksums are also why entries are not fsynced: a crash of the process
  leaves written pages to the kernel, and a crash of the machine that loses
  them is caught by the hash.
* **Policy applied.** Under ``"top_q"`` (:class:`CachePolicy`) a trial's
  outputs are written only once its objective places it among the top ``q``
  (:meth:`StageCache.admits`), and :meth:`StageCache.record_trial` deletes the
  entries of this run's trials that drop out of the top ``q``. A
  :class:`~eeipu_jax.runtime.study.Study` replaces "top ``q``" by its
  optimizer's prefix pool (:func:`eeipu_jax.loop.prefix_pool`, through
  :meth:`StageCache.set_keep` and the runner's ``admit``): one definition of
  what is proposed and what is kept. A byte limit
  with least-recently-used eviction applies on top of either policy.
* **Statistics** (:class:`CacheStats`): hits per memo depth, misses, bytes
  written and read, seconds spent saving and restoring, compute seconds saved,
  evictions, corrupted entries.

The directory can be any local or shared POSIX path (several workers may share
one: writes are atomic renames and reads verify checksums).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from eeipu_jax.runtime.cache.codec import decode, encode, to_device
from eeipu_jax.runtime.cache.keys import stage_cache_key
from eeipu_jax.runtime.cache.meta import (
    FORMAT_VERSION, CorruptEntry, check_meta, check_prefix_costs, pack_totals, seal_meta,
)
from eeipu_jax.runtime.cache.policy import CachePolicy
from eeipu_jax.runtime.records import ensure_free_space
from eeipu_jax.utils import interrupts_deferred

__all__ = ["CacheStats", "StageCache"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 22  # bytes per read when hashing files

@dataclasses.dataclass
class CacheStats:
    """Counters of one :class:`StageCache` (this process only)."""

    lookups: int = 0
    misses: int = 0
    hits_per_depth: dict = dataclasses.field(default_factory=dict)
    entries_written: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    save_seconds: float = 0.0
    restore_seconds: float = 0.0
    compute_seconds_restored: float = 0.0  # original compute cost of restored prefixes
    evictions: int = 0
    pruned: int = 0
    corrupted: int = 0
    save_errors: int = 0
    skipped_too_large: int = 0

    @property
    def hits(self) -> int:
        return int(sum(self.hits_per_depth.values()))

    @property
    def seconds_saved(self) -> float:
        """Compute seconds not spent thanks to hits, net of restore time."""
        return self.compute_seconds_restored - self.restore_seconds

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hits_per_depth"] = {str(k): v for k, v in sorted(self.hits_per_depth.items())}
        d["hits"] = self.hits
        d["seconds_saved"] = self.seconds_saved
        return d


def _digest_dir(path: str) -> dict[str, dict]:
    """``{relative file path: {"size", "sha256"}}`` of every file under ``path``."""
    out = {}
    if not os.path.isdir(path):
        return out
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            h = hashlib.sha256()
            size = 0
            with open(full, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
            out[os.path.relpath(full, path)] = {"size": size, "sha256": h.hexdigest()}
    return dict(sorted(out.items()))


def _host_id() -> str:
    """This host (and PID namespace) as it appears in the names of half-written entries.

    The PID namespace is part of it because containers on one machine may share
    a host name but not their process tables: a PID is only meaningful inside
    its namespace.
    """
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:100] or "host"
    try:
        host += f"-ns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        pass
    return host


def _tmp_name(key: str) -> str:
    """``<key>.<nonce>.<pid>@<host>``: who is writing this entry (see :func:`_writer_of`)."""
    return f"{key}.{uuid.uuid4().hex}.{os.getpid()}@{_host_id()}"


def _writer_of(name: str) -> tuple[int, str] | None:
    """``(pid, host)`` of a half-written entry's writer, ``None`` if its name does not say."""
    parts = name.split(".", 2)
    if len(parts) != 3:
        return None
    pid, sep, host = parts[2].partition("@")
    if not sep or not pid.isdigit() or int(pid) <= 0:
        return None
    return int(pid), host


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this PID namespace exists (when unsure: yes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process: it exists
    return True


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ------------------------------------------------------------------- cache
@dataclasses.dataclass
class _Entry:
    key: str
    bytes: int
    last_access: int
    pipeline: str
    version: str
    seed: int
    stage: int


class StageCache:
    """An orbax-backed store of stage outputs with a keep policy and a byte limit.

    Args:
        root: cache directory (created if missing).
        policy: what to keep (:class:`CachePolicy`).
        verify: ``"sha256"`` (hash every data file on restore, default) or
            ``"size"`` (check file sizes only: detects truncation, not
            altered bytes; faster for very large entries).
        use_ocdbt: orbax's OCDBT format (fewer files per entry).
        stale_tmp_seconds: half-written entries whose writer cannot be checked
            (another host) are removed when the cache opens if they are older
            than this; those of a writer process on this host that is gone are
            removed at once.

    Example:
        >>> cache = StageCache("/tmp/cache", CachePolicy("all"))       # doctest: +SKIP
        >>> cache.save(key, {"w": w}, meta)                              # doctest: +SKIP
        >>> out, meta = cache.restore(key)                               # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike,
        policy: CachePolicy = CachePolicy(),
        *,
        verify: str = "sha256",
        use_ocdbt: bool = True,
        stale_tmp_seconds: float = 6 * 3600.0,
    ):
        if not isinstance(policy, CachePolicy):
            raise TypeError(f"policy must be a CachePolicy, got {type(policy).__name__}")
        if verify not in ("sha256", "size"):
            raise ValueError(f"verify must be 'sha256' or 'size', got {verify!r}")
        self.root = os.path.abspath(os.fspath(root))
        self.policy = policy
        self.verify = verify
        self.stats = CacheStats()
        self._entries_dir = os.path.join(self.root, "entries")
        self._tmp_dir = os.path.join(self.root, "tmp")
        self._trash_dir = os.path.join(self.root, "trash")
        for d in (self._entries_dir, self._tmp_dir, self._trash_dir):
            os.makedirs(d, exist_ok=True)
        self._use_ocdbt = use_ocdbt
        self._checkpointer = None
        # Ranking of this run's finished trials (policy "top_q").
        self._trials: list[tuple[float, tuple[str, ...]]] = []
        self._run_keys: set[str] = set()
        # Keys to keep under "top_q" when the optimizer says so (set_keep): the
        # prefixes of its pool (eeipu_jax.loop.prefix_pool), one definition for
        # what it proposes and what is kept.
        self._keep: set[str] | None = None
        self._clean_leftovers(stale_tmp_seconds)

    # ------------------------------------------------------------ plumbing
    @property
    def checkpointer(self):
        if self._checkpointer is None:
            import orbax.checkpoint as ocp

            handler = ocp.PyTreeCheckpointHandler(
                use_ocdbt=self._use_ocdbt, use_zarr3=True, use_compression=False
            )
            self._checkpointer = ocp.Checkpointer(handler)
        return self._checkpointer

    def entry_path(self, key: str) -> str:
        """Directory of entry ``key`` (whether or not it exists)."""
        return os.path.join(self._entries_dir, key)

    def __contains__(self, key: str) -> bool:
        return os.path.isfile(os.path.join(self.entry_path(key), "meta.json"))

    def _clean_leftovers(self, stale_seconds: float) -> None:
        now = time.time()
        host = _host_id()
        for name in os.listdir(self._tmp_dir):
            path = os.path.join(self._tmp_dir, name)
            writer = _writer_of(name)
            if writer is not None and writer[1] == host:
                if _pid_alive(writer[0]):
                    continue  # still being written (or its PID was reused: the next opening decides)
                reason = f"its writer, process {writer[0]}, is gone"
            else:  # another host's writer, or a name without one: only the age tells
                try:
                    age = now - os.path.getmtime(path)
                except FileNotFoundError:
                    continue  # finished (renamed) by its writer meanwhile
                if age <= stale_seconds:
                    continue
                reason = f"{age:.0f} s old"
            logger.info("removing a half-written cache entry (%s): %s", reason, path)
            shutil.rmtree(path, onerror=_log_rm_error)
        for name in os.listdir(self._trash_dir):
            shutil.rmtree(os.path.join(self._trash_dir, name), onerror=_log_rm_error)

    def _touch(self, key: str) -> None:
        path = os.path.join(self.entry_path(key), "last_access")
        tmp = f"{path}.{uuid.uuid4().hex}"
        try:
            _write_text(tmp, f"{time.time_ns():020d}")
            os.replace(tmp, path)  # readers never see a half-written clock
        except FileNotFoundError:
            pass  # the entry was deleted meanwhile (evicted by another worker)
        except OSError as e:  # a full disk: the entry stands, only its LRU clock is not refreshed
            logger.warning("could not refresh the LRU clock of cache entry %s: %s", key, e.strerror or e)
            with contextlib.suppress(OSError):
                os.remove(tmp)

    def _remove(self, key: str) -> bool:
        """Delete an entry (rename into trash first, so readers never see half of it)."""
        src = self.entry_path(key)
        dst = os.path.join(self._trash_dir, f"{key}.{uuid.uuid4().hex}")
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return False
        shutil.rmtree(dst, onerror=_log_rm_error)
        return True

    def discard(self, key: str, reason: str) -> None:
        """Drop a corrupted or unreadable entry with a warning."""
        logger.warning("discarding cache entry %s (%s); the stage will be recomputed", key, reason)
        self.stats.corrupted += 1
        self._remove(key)

    # ------------------------------------------------------------- listing
    def entries(self) -> list[_Entry]:
        """All complete entries on disk (a fresh scan of the directory)."""
        out = []
        for key in os.listdir(self._entries_dir):
            path = self.entry_path(key)
            try:
                meta = self._meta(key)
                size = (
                    int(meta["data_bytes"])
                    + os.path.getsize(os.path.join(path, "meta.json"))
                    + os.path.getsize(os.path.join(path, "last_access"))
                )
                with open(os.path.join(path, "last_access"), encoding="utf-8") as f:
                    last = int(f.read().strip() or 0)
                out.append(
                    _Entry(key, size, last, meta["pipeline"], meta["version"], int(meta["seed"]), int(meta["stage"]))
                )
            except FileNotFoundError:
                if os.path.isdir(path) and not os.path.exists(os.path.join(path, "meta.json")):
                    self.discard(key, "no meta.json")
                continue  # otherwise removed by another worker during the scan
            except (OSError, ValueError, CorruptEntry) as e:
                self.discard(key, f"{type(e).__name__}: {e}")
        return out

    def total_bytes(self) -> int:
        """Bytes of all entries on disk (data + metadata files)."""
        return sum(e.bytes for e in self.entries())

    # ---------------------------------------------------------------- save
    def save(self, key: str, output: Any, meta: Mapping[str, Any]) -> int:
        """Store ``output`` under ``key`` (no-op if present; refreshes its LRU clock).

        Args:
            key: :func:`stage_cache_key` of the output.
            output: the stage output pytree.
            meta: JSON-able description; must hold ``pipeline``, ``version``,
                ``stage``, ``seed``, ``params`` (the prefix) and
                ``prefix_costs`` (original compute seconds of stages 0..j).

        Returns:
            Bytes written (0 if the entry existed or was too large to keep).

        Raises:
            TypeError: the output holds a node or leaf the cache cannot store.
            OSError: the entry could not be written (``ENOSPC`` before
                anything is written when the disk has no room for it).
            ValueError: bad ``prefix_costs``, or ``key`` is not the
                :func:`stage_cache_key` of ``meta``'s pipeline, version,
                stage, params and seed.
        """
        for field in ("pipeline", "version", "stage", "seed", "params", "prefix_costs"):
            if field not in meta:
                raise KeyError(f"cache entry metadata lacks {field!r}")
        try:
            check_prefix_costs(list(meta["prefix_costs"]), int(meta["stage"]))
        except CorruptEntry as e:
            raise ValueError(f"cache entry metadata: {e}") from None
        own = stage_cache_key(meta["pipeline"], meta["version"], meta["stage"], meta["params"], meta["seed"])
        if own != key:  # every restore checks this too: an entry holds what its key names
            raise ValueError(f"cache key {key} is not the key of the metadata's pipeline, stage, seed and "
                             f"parameters ({own})")
        if key in self:
            self._touch(key)
            return 0
        t0 = time.perf_counter()
        structure, arrays, leaves = encode(output)
        raw = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays.values())
        if self.policy.max_bytes is not None and raw > self.policy.max_bytes:
            logger.warning(
                "stage output of %d bytes exceeds the cache limit of %d bytes; not cached", raw, self.policy.max_bytes
            )
            self.stats.skipped_too_large += 1
            return 0
        tmp = os.path.join(self._tmp_dir, _tmp_name(key))
        ensure_free_space(self._tmp_dir, raw)  # a full disk: one OSError, not orbax's thread tracebacks
        os.makedirs(tmp)
        try:
            import orbax.checkpoint as ocp

            data = os.path.join(tmp, "data")
            if arrays:
                with interrupts_deferred():  # orbax's threads would outlive an interrupted save
                    self.checkpointer.save(data, args=ocp.args.PyTreeSave(arrays))
            files = _digest_dir(data)
            record = dict(meta)
            record["prefix_costs"] = [float(c) for c in meta["prefix_costs"]]
            record.update(
                key=key,
                format=FORMAT_VERSION,
                structure=structure,
                leaves=leaves,
                files=files,
                data_bytes=sum(f["size"] for f in files.values()),
                created=time.time(),
            )
            record = seal_meta(record)
            _write_text(os.path.join(tmp, "meta.json"), json.dumps(record, allow_nan=False))
            _write_text(os.path.join(tmp, "last_access"), f"{time.time_ns():020d}")
            try:
                os.rename(tmp, self.entry_path(key))
            except OSError:
                if key not in self:
                    raise
                # Another writer stored the same key first: identical content by construction.
                shutil.rmtree(tmp, onerror=_log_rm_error)
                return 0
        except BaseException:
            shutil.rmtree(tmp, onerror=_log_rm_error)
            raise
        written = record["data_bytes"]
        self.stats.entries_written += 1
        self.stats.bytes_written += written
        self.stats.save_seconds += time.perf_counter() - t0
        self.enforce_limit(protect=(key,))
        return written

    # ------------------------------------------------------------- restore
    def _meta(self, key: str) -> dict:
        """The checked ``meta.json`` of an entry.

        Raises:
            FileNotFoundError: no ``meta.json`` (the entry is absent or broken).
            CorruptEntry: unreadable, altered or inconsistent metadata.
        """
        path = os.path.join(self.entry_path(key), "meta.json")
        with open(path, "rb") as f:
            raw = f.read()
        try:
            meta = json.loads(raw.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
            raise CorruptEntry(f"unreadable meta.json: {e}") from None
        return check_meta(meta, key)

    def read_meta(self, key: str) -> dict | None:
        """The checked ``meta.json`` of an entry, ``None`` if absent (discarded if it fails the checks)."""
        try:
            return self._meta(key)
        except FileNotFoundError:
            if os.path.isdir(self.entry_path(key)):
                self.discard(key, "no meta.json")
            return None
        except (OSError, CorruptEntry) as e:
            self.discard(key, f"{type(e).__name__}: {e}")
            return None

    def _verify(self, key: str, meta: Mapping) -> int:
        data = os.path.join(self.entry_path(key), "data")
        expected = meta["files"]
        present = sorted(
            os.path.relpath(os.path.join(root, f), data) for root, _, files in os.walk(data) for f in files
        )
        unlisted = [rel for rel in present if rel not in expected]
        if unlisted:
            raise CorruptEntry(f"data file(s) not listed in meta.json: {unlisted[:3]}")
        total = 0
        for rel, info in expected.items():
            full = os.path.join(data, rel)
            try:
                size = os.path.getsize(full)
            except FileNotFoundError:
                raise CorruptEntry(f"missing data file {rel}") from None
            if size != info["size"]:
                raise CorruptEntry(f"data file {rel} has {size} bytes, expected {info['size']}")
            total += size
        if self.verify == "sha256":
            actual = _digest_dir(data)
            for rel, info in expected.items():
                if actual.get(rel, {}).get("sha256") != info["sha256"]:
                    raise CorruptEntry(f"checksum mismatch in data file {rel}")
        return total

    def restore(self, key: str) -> tuple[Any, dict] | None:
        """Load entry ``key``.

        Returns:
            ``(output, meta)``, or ``None`` if the entry is absent or was found
            corrupted (then it is deleted, with a warning, and the caller
            recomputes).
        """
        t0 = time.perf_counter()
        if not os.path.isdir(self.entry_path(key)):
            return None
        try:
            meta = self._meta(key)
            nbytes = self._verify(key, meta)
            output = self._load(key, meta)
        except Exception as e:  # any failure means the entry cannot be trusted
            if not os.path.isdir(self.entry_path(key)):
                return None  # evicted by another worker while we read it
            self.discard(key, f"{type(e).__name__}: {e}")
            return None
        self._touch(key)
        self.stats.bytes_read += nbytes
        self.stats.restore_seconds += time.perf_counter() - t0
        return output, meta

    def _load(self, key: str, meta: Mapping) -> Any:
        import orbax.checkpoint as ocp

        leaves = meta["leaves"]
        totals = pack_totals(leaves)
        stored = sorted({lf.get("pack", lf["name"]) for lf in leaves if not lf["empty"]})
        restored: dict[str, Any] = {}
        if stored:
            # Everything is read to host memory first, then placed like the saved
            # leaf: an uncommitted JAX array (as stage code creates them) is
            # recreated uncommitted, so jitted code of the next stage hits the
            # same compilation cache entry as after a fresh computation.
            restore_args = {name: ocp.RestoreArgs(restore_type=np.ndarray) for name in stored}
            restored = self.checkpointer.restore(
                os.path.join(self.entry_path(key), "data"),
                args=ocp.args.PyTreeRestore(restore_args=restore_args),
            )
        values = []
        for lf in leaves:
            shape, dtype = tuple(lf["shape"]), jax.numpy.dtype(lf["dtype"])
            if lf["empty"]:
                arr = np.zeros(shape, dtype)
            elif "pack" in lf:
                packed = restored[lf["pack"]]
                size = int(np.prod(shape))
                if packed.shape != (totals[lf["pack"]],):
                    raise CorruptEntry(
                        f"pack {lf['pack']} holds {packed.shape} elements, its leaves {totals[lf['pack']]}"
                    )
                arr = packed[lf["offset"] : lf["offset"] + size].reshape(shape)
                if lf["kind"] in ("numpy", "npscalar"):
                    arr = arr.copy()  # its own memory, as it was saved
            else:
                arr = restored[lf["name"]]
            if tuple(arr.shape) != shape or arr.dtype != dtype:
                raise CorruptEntry(
                    f"leaf {lf['name']} restored as {arr.dtype}{list(arr.shape)}, expected {lf['dtype']}{lf['shape']}"
                )
            if lf["kind"] == "npscalar":
                arr = arr[()]
            values.append(arr)
        on_device = [i for i, lf in enumerate(leaves) if lf["kind"] in ("jax", "key")]
        placed = to_device([values[i] for i in on_device], [bool(leaves[i].get("committed")) for i in on_device])
        for i, arr in zip(on_device, placed):
            lf = leaves[i]
            values[i] = jax.random.wrap_key_data(arr, impl=lf["impl"]) if lf["kind"] == "key" else arr
        return decode(meta["structure"], values)

    # ------------------------------------------------------- policy / LRU
    def restore_longest(self, keys: Sequence[str]) -> tuple[int, Any, dict | None]:
        """Restore the deepest cached prefix among ``keys``.

        Args:
            keys: prefix keys of stages ``0 .. K-2`` (:func:`prefix_keys`).

        Returns:
            ``(depth, output, meta)``: ``depth`` stages are restored and
            ``output`` is stage ``depth - 1``'s output; ``(0, None, None)`` on a
            miss. A corrupted entry is discarded and the next shorter prefix
            tried.
        """
        self.stats.lookups += 1
        for depth in range(len(keys), 0, -1):
            got = self.restore(keys[depth - 1])
            if got is not None:
                output, meta = got
                self.stats.hits_per_depth[depth] = self.stats.hits_per_depth.get(depth, 0) + 1
                self.stats.compute_seconds_restored += float(sum(meta["prefix_costs"]))
                return depth, output, meta
        self.stats.misses += 1
        return 0, None, None

    def admits(self, objective: float) -> bool:
        """Whether a trial with ``objective`` gets its outputs written.

        ``"all"``: always. ``"top_q"``: if the objective is finite and would
        rank among the ``q`` best finished trials recorded so far.
        """
        if self.policy.kind == "all":
            return True
        if not math.isfinite(objective):
            return False
        ranked = sorted((y for y, _ in self._trials), reverse=True)
        return len(ranked) < self.policy.q or objective > ranked[self.policy.q - 1]

    def set_keep(self, keys) -> None:
        """Keep exactly ``keys`` under ``"top_q"`` from now on (applied at the
        next :meth:`prune` or :meth:`record_trial`).

        A :class:`~eeipu_jax.runtime.study.Study` passes the prefix keys of
        :func:`eeipu_jax.loop.prefix_pool`, the pool its optimizer proposes
        from, so every memoized proposal is a cache hit; without it the cache
        keeps the prefixes of the ``q`` best recorded trials.
        """
        self._keep = set(keys)

    def keep_set(self) -> set[str]:
        """Keys to keep: those of :meth:`set_keep` if given, else the prefixes
        of the ``q`` best recorded trials."""
        if self._keep is not None:
            return set(self._keep)
        ranked = sorted(self._trials, key=lambda t: t[0], reverse=True)[: self.policy.q]
        return {k for _, keys in ranked for k in keys}

    def record_trial(self, objective: float, keys: Sequence[str], *, prune: bool = True) -> int:
        """Add a finished trial to this run's ranking and apply the policy.

        Args:
            objective: the trial's objective (non-finite for a failed trial).
            keys: its prefix keys (:func:`prefix_keys`).
            prune: under ``"top_q"``, delete entries of this run's trials that
                are no longer among the top ``q`` (pass ``False`` while
                replaying a run's history, then call :meth:`prune`).

        Returns:
            The number of entries deleted.
        """
        keys = tuple(keys)
        self._run_keys.update(keys)
        if math.isfinite(objective):
            self._trials.append((float(objective), keys))
        return self.prune() if prune else 0

    def prune(self) -> int:
        """Under ``"top_q"``, delete this run's entries outside the top ``q``."""
        if self.policy.kind != "top_q":
            return 0
        removed = 0
        for key in sorted(self._run_keys - self.keep_set()):
            if self._remove(key):
                removed += 1
        self._run_keys &= self.keep_set()
        self.stats.pruned += removed
        return removed

    def enforce_limit(self, protect: Iterable[str] = ()) -> int:
        """Evict least-recently-used entries until the byte limit holds.

        Args:
            protect: keys evicted only if nothing else is left (the entry just
                written).

        Returns:
            The number of entries evicted.
        """
        limit = self.policy.max_bytes
        if limit is None:
            return 0
        protect = set(protect)
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        order = sorted(entries, key=lambda e: (e.key in protect, e.last_access, e.key))
        evicted = 0
        for e in order:
            if total <= limit:
                break
            if self._remove(e.key):
                evicted += 1
            total -= e.bytes
        self.stats.evictions += evicted
        return evicted

    def summary(self) -> dict:
        """Statistics plus the current size of the directory."""
        entries = self.entries()
        d = self.stats.to_dict()
        d.update(entries=len(entries), bytes=sum(e.bytes for e in entries), policy=dataclasses.asdict(self.policy))
        return d


def _log_rm_error(func, path, exc_info) -> None:
    # A concurrent worker may remove the same tree; anything else is worth a line.
    if not isinstance(exc_info[1], FileNotFoundError):
        logger.warning("could not remove %s: %s", path, exc_info[1])

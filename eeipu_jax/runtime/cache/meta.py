"""The ``meta.json`` of a stage-cache entry: its checksum and the checks of its values.

An entry's ``meta.json`` (written by :meth:`eeipu_jax.runtime.cache.StageCache.save`)
says how to rebuild the output from the data files: the tree structure, each
leaf's shape, dtype and offset in a pack, the size and SHA-256 of every data
file, and the original compute cost of the stages it holds. Every number in it
is trusted by the restore, so a single edited number (an offset, a shape, a
cost) would silently restore wrong data or feed wrong costs to the optimizer.
This module owns the two defences:

* **Checksum.** ``meta_sha256`` is the SHA-256 of the canonical JSON text
  (``sort_keys=True, separators=(",", ":")``) of the document without that
  field. Together with the per-file hashes it lists, it covers the whole
  entry: metadata and data.
* **Value checks** (:func:`check_meta`), run on every read whatever the
  checksum says (a writer bug, or a document rewritten with a fresh checksum,
  must still not restore inconsistent data): types and ranges of every field,
  ``prefix_costs`` finite and ``>= 0`` with one cost per stored stage, leaf
  shapes and dtypes well formed, the leaves of each pack tiling it from offset
  0 without gap or overlap, the structure referencing every leaf exactly once,
  ``data_bytes`` the sum of the listed file sizes, file names inside ``data/``,
  and the entry's key recomputed from its ``pipeline``, ``version``,
  ``stage``, ``seed`` and ``params`` (:func:`~eeipu_jax.runtime.cache.keys.stage_cache_key`):
  an entry directory swapped for another's, its ``meta.json`` re-sealed under
  this key, would otherwise restore the other parameters' output.

Any failure raises :class:`CorruptEntry`; the cache then discards the entry
and the stage is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from eeipu_jax.runtime.cache.keys import stage_cache_key

__all__ = ["CorruptEntry", "FORMAT_VERSION", "CHECKSUM_FIELD", "meta_digest", "seal_meta", "check_meta",
           "pack_totals"]

#: Version of the entry layout; entries of another version are discarded.
#: 2: ``meta.json`` carries ``meta_sha256``.
FORMAT_VERSION = 2
CHECKSUM_FIELD = "meta_sha256"
LEAF_KINDS = ("jax", "key", "numpy", "npscalar")
_NODE_TYPES = ("leaf", "none", "bool", "int", "float", "str", "dict", "list", "tuple", "namedtuple")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_F32_MAX = float(np.finfo(np.float32).max)


class CorruptEntry(Exception):
    """A cache entry that fails verification (missing/truncated/altered data or metadata)."""


def _canonical_text(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)


def meta_digest(meta: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``meta`` without its checksum field.

    The document is first passed through JSON once, so the digest of what is
    written equals the digest of what is read back (tuples become lists,
    NumPy scalars Python numbers).
    """
    body = json.loads(json.dumps({k: v for k, v in meta.items() if k != CHECKSUM_FIELD}, allow_nan=False))
    return hashlib.sha256(_canonical_text(body).encode("utf-8")).hexdigest()


def seal_meta(meta: Mapping[str, Any]) -> dict:
    """``meta`` with its checksum field set (what ``save`` writes)."""
    out = dict(meta)
    out[CHECKSUM_FIELD] = meta_digest(out)
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_prefix_costs(costs: Any, stage: int) -> None:
    """``stage + 1`` finite, non-negative seconds (raises :class:`CorruptEntry`)."""
    if not isinstance(costs, list) or len(costs) != stage + 1:
        raise CorruptEntry(f"prefix_costs must list {stage + 1} cost(s) for stage {stage}, got {costs!r}")
    for c in costs:
        if not (_is_number(c) and math.isfinite(c) and 0 <= c <= _F32_MAX):
            raise CorruptEntry(f"prefix_costs must be finite and >= 0 (seconds the optimizer stores in float32), "
                               f"got {costs!r}")


def _check_leaf(i: int, lf: Any) -> int:
    """Check one leaf's description; returns its number of elements."""
    if not isinstance(lf, dict):
        raise CorruptEntry(f"leaf {i} is not an object")
    if lf.get("name") != f"{i:06d}":
        raise CorruptEntry(f"leaf {i} is named {lf.get('name')!r}, expected {i:06d}")
    if lf.get("kind") not in LEAF_KINDS:
        raise CorruptEntry(f"leaf {i} has kind {lf.get('kind')!r}")
    shape = lf.get("shape")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise CorruptEntry(f"leaf {i} has shape {shape!r}")
    if not isinstance(lf.get("dtype"), str):
        raise CorruptEntry(f"leaf {i} has dtype {lf.get('dtype')!r}")
    try:
        import jax.numpy as jnp

        dtype = jnp.dtype(lf["dtype"])
    except TypeError:
        raise CorruptEntry(f"leaf {i} has unknown dtype {lf['dtype']!r}") from None
    if dtype.kind in "OUS" or str(dtype) != lf["dtype"]:
        raise CorruptEntry(f"leaf {i} has dtype {lf['dtype']!r}, which the cache never writes")
    size = math.prod(shape)
    if lf.get("empty") is not (size == 0):
        raise CorruptEntry(f"leaf {i}: 'empty' is {lf.get('empty')!r} for shape {shape}")
    if lf["kind"] == "key" and not isinstance(lf.get("impl"), str):
        raise CorruptEntry(f"leaf {i} is a PRNG key without an implementation name")
    if lf["kind"] == "npscalar" and shape:
        raise CorruptEntry(f"leaf {i} is a NumPy scalar with shape {shape}")
    if "pack" in lf:
        if size == 0:
            raise CorruptEntry(f"leaf {i} is empty but packed")
        if lf["pack"] != f"pack_{lf['dtype']}":
            raise CorruptEntry(f"leaf {i} of dtype {lf['dtype']} is in pack {lf['pack']!r}")
        if not (_is_int(lf.get("offset")) and lf["offset"] >= 0):
            raise CorruptEntry(f"leaf {i} has offset {lf.get('offset')!r}")
    elif "offset" in lf:
        raise CorruptEntry(f"leaf {i} has an offset but no pack")
    return size


def pack_totals(leaves: list[dict]) -> dict[str, int]:
    """Elements in each pack, for leaves that passed :func:`check_meta`."""
    totals: dict[str, int] = {}
    for lf in leaves:
        if "pack" in lf:
            totals[lf["pack"]] = totals.get(lf["pack"], 0) + math.prod(lf["shape"])
    return totals


def _check_structure(structure: Any, n_leaves: int) -> None:
    """Every node well formed and every leaf referenced exactly once."""
    seen = np.zeros(n_leaves, np.int64)
    stack = [structure]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or node.get("t") not in _NODE_TYPES:
            raise CorruptEntry(f"malformed structure node {str(node)[:80]!r}")
        t = node["t"]
        if t == "leaf":
            i = node.get("i")
            if not (_is_int(i) and 0 <= i < n_leaves):
                raise CorruptEntry(f"structure references leaf {i!r} of {n_leaves}")
            seen[i] += 1
        elif t in ("dict", "list", "tuple", "namedtuple"):
            children = node.get("v")
            if not isinstance(children, list):
                raise CorruptEntry(f"structure node {t!r} has no children list")
            if t == "dict" and (not isinstance(node.get("k"), list) or len(node["k"]) != len(children)):
                raise CorruptEntry("structure dict node has mismatched keys")
            if t == "namedtuple" and not isinstance(node.get("cls"), str):
                raise CorruptEntry("structure namedtuple node has no class path")
            stack.extend(children)
    if n_leaves and not (seen == 1).all():
        bad = [int(i) for i in np.flatnonzero(seen != 1)[:5]]
        raise CorruptEntry(f"structure references leaves {bad} other than exactly once")


def check_meta(meta: Any, key: str) -> dict:
    """Check a ``meta.json`` document read for entry ``key``.

    Args:
        meta: the parsed document.
        key: the entry's key (its directory name).

    Returns:
        ``meta``, unchanged.

    Raises:
        CorruptEntry: what is wrong, first problem only.
    """
    if not isinstance(meta, dict):
        raise CorruptEntry(f"meta.json holds a {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT_VERSION:
        raise CorruptEntry(f"entry format {meta.get('format')!r}, this code reads {FORMAT_VERSION}")
    if meta.get("key") != key:
        raise CorruptEntry("metadata names another key")
    if meta.get(CHECKSUM_FIELD) != meta_digest(meta):
        raise CorruptEntry("metadata checksum mismatch (meta.json was altered)")
    for field, ok in (("pipeline", isinstance(meta.get("pipeline"), str)),
                      ("version", isinstance(meta.get("version"), str)),
                      ("stage", _is_int(meta.get("stage")) and meta["stage"] >= 0),
                      ("seed", _is_int(meta.get("seed")) and meta["seed"] >= 0),
                      ("params", isinstance(meta.get("params"), dict)),
                      ("data_bytes", _is_int(meta.get("data_bytes")) and meta["data_bytes"] >= 0)):
        if not ok:
            raise CorruptEntry(f"metadata field {field!r} is {meta.get(field)!r}")
    check_prefix_costs(meta.get("prefix_costs"), meta["stage"])
    try:  # the key is the hash of what the entry says it holds: another entry's directory under this name fails
        own = stage_cache_key(meta["pipeline"], meta["version"], meta["stage"], meta["params"], meta["seed"])
    except (TypeError, ValueError, AttributeError) as e:
        raise CorruptEntry(f"metadata parameters have no cache key ({type(e).__name__}: {e})") from None
    if own != key:
        raise CorruptEntry(
            f"the entry's pipeline, stage, seed and parameters hash to key {own[:12]}..., not to its own key "
            "(another entry's files under this key)"
        )

    files = meta.get("files")
    if not isinstance(files, dict):
        raise CorruptEntry("metadata 'files' is not an object")
    total = 0
    for rel, info in files.items():
        norm = os.path.normpath(rel)
        if os.path.isabs(rel) or norm != rel or norm.startswith(".."):
            raise CorruptEntry(f"data file name {rel!r} is not a plain path inside data/")
        if not (isinstance(info, dict) and _is_int(info.get("size")) and info["size"] >= 0
                and isinstance(info.get("sha256"), str) and _HEX64.fullmatch(info["sha256"])):
            raise CorruptEntry(f"data file {rel!r} has description {info!r}")
        total += info["size"]
    if total != meta["data_bytes"]:
        raise CorruptEntry(f"data_bytes is {meta['data_bytes']}, the listed files hold {total}")

    leaves = meta.get("leaves")
    if not isinstance(leaves, list):
        raise CorruptEntry("metadata 'leaves' is not a list")
    packs: dict[str, list[tuple[int, int]]] = {}
    for i, lf in enumerate(leaves):
        size = _check_leaf(i, lf)
        if "pack" in lf:
            packs.setdefault(lf["pack"], []).append((lf["offset"], size))
    for pack, spans in packs.items():
        end = 0
        for offset, size in sorted(spans):
            if offset != end:
                raise CorruptEntry(f"leaves of {pack} do not tile it: offset {offset} where {end} was expected")
            end = offset + size
    if any(not lf["empty"] for lf in leaves) != bool(files):
        raise CorruptEntry("stored leaves and listed data files disagree (one is empty, the other not)")
    _check_structure(meta.get("structure"), len(leaves))
    return meta

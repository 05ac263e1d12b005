"""The stage-cache codec: a stage output pytree <-> a JSON structure plus arrays.

:func:`encode` splits an output into a JSON-able structure (dicts, lists,
tuples, NamedTuples, ``None`` and Python scalars, written exactly: floats as
hex), the arrays to save, and one metadata record per array leaf (kind,
shape, dtype, committed or not). Leaves under :data:`PACK_BYTES` are packed,
per dtype, into one flat host array: orbax's cost is per array, so a model's
hundreds of small parameter arrays are written and read as a few.
:func:`decode` rebuilds the output from the structure and the restored leaves,
and :func:`to_device` places restored host arrays as they were saved.

Stage outputs may be any nesting of ``dict`` / ``list`` / ``tuple`` /
``NamedTuple`` / ``None`` with leaves that are JAX arrays (typed PRNG keys
included), NumPy arrays or scalars, or Python ``bool``/``int``/``float``/``str``.
Each leaf comes back with the type it was saved with (a NumPy array stays
NumPy, a JAX array is restored onto the default device), and array bytes are
bit-identical. Other pytree node types (e.g. ``flax.struct`` dataclasses) are
refused with a clear error; convert them with ``flax.serialization.to_state_dict``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from eeipu_jax.runtime.cache.meta import CorruptEntry
from eeipu_jax.runtime.registry import import_object

__all__ = ["PACK_BYTES", "encode", "decode", "to_device"]

PACK_BYTES = 1 << 20  # leaves smaller than this are packed together (per dtype)


def _class_path(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _is_namedtuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def encode(tree: Any) -> tuple[Any, dict[str, Any], list[dict]]:
    """Split a stage output into a JSON structure, arrays to save and leaf metadata.

    Leaves under :data:`PACK_BYTES` are packed, per dtype, into one flat host
    array: orbax's cost is per array, so a model's hundreds of small
    parameter arrays are written and read as a few.
    """
    arrays: dict[str, Any] = {}
    leaves: list[dict] = []
    packs: dict[str, list] = {}
    pack_sizes: dict[str, int] = {}

    def leaf(x, kind: str, where: str) -> dict:
        i = len(leaves)
        name = f"{i:06d}"
        if kind == "key":
            impl = str(jax.random.key_impl(x))
            data = jax.random.key_data(x)
            info = {"name": name, "kind": kind, "impl": impl, "shape": list(data.shape), "dtype": str(data.dtype)}
            arr = data
        else:
            arr = np.asarray(x) if kind == "npscalar" else x
            info = {"name": name, "kind": kind, "shape": list(arr.shape), "dtype": str(arr.dtype)}
        if kind in ("jax", "key"):
            info["committed"] = bool(x.committed)
        if arr.dtype.kind in "OUS":  # objects and strings have no array encoding
            raise TypeError(f"stage output leaf at {where} has dtype {arr.dtype}, which cannot be cached")
        size = int(np.prod(arr.shape))
        info["empty"] = size == 0  # nothing to store (orbax refuses zero-size arrays)
        if size and size * arr.dtype.itemsize < PACK_BYTES:
            pack = f"pack_{arr.dtype}"
            info.update(pack=pack, offset=pack_sizes.get(pack, 0))
            packs.setdefault(pack, []).append(np.asarray(arr).reshape(-1))
            pack_sizes[pack] = info["offset"] + size
        elif size:
            arrays[name] = arr
        leaves.append(info)
        return {"t": "leaf", "i": i}

    def enc(x, where: str):
        if x is None:
            return {"t": "none"}
        if isinstance(x, jax.Array):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return leaf(x, "key", where)
            return leaf(x, "jax", where)
        if isinstance(x, np.ndarray):
            return leaf(x, "numpy", where)
        if isinstance(x, np.generic):
            return leaf(x, "npscalar", where)
        if isinstance(x, bool):
            return {"t": "bool", "v": x}
        if isinstance(x, int):
            return {"t": "int", "v": x}
        if isinstance(x, float):
            return {"t": "float", "v": float.hex(x)}  # exact, NaN/inf included
        if isinstance(x, str):
            return {"t": "str", "v": x}
        if isinstance(x, dict):
            keys = list(x.keys())
            for k in keys:
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise TypeError(f"stage output dict at {where} has a key {k!r}; only str/int keys can be cached")
            return {"t": "dict", "k": keys, "v": [enc(x[k], f"{where}[{k!r}]") for k in keys]}
        if _is_namedtuple(x):
            cls = type(x)
            path = _class_path(cls)
            try:
                ok = import_object(path) is cls
            except ValueError:
                ok = False
            if not ok:
                raise TypeError(f"NamedTuple {cls.__qualname__} at {where} is not importable as {path}")
            return {"t": "namedtuple", "cls": path, "v": [enc(v, f"{where}.{f}") for f, v in zip(cls._fields, x)]}
        if isinstance(x, (list, tuple)):
            return {"t": type(x).__name__, "v": [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        raise TypeError(
            f"stage output node at {where} has type {type(x).__name__}, which the cache cannot store; "
            "use dicts/lists/tuples/NamedTuples of arrays (flax.serialization.to_state_dict converts flax states)"
        )

    structure = enc(tree, "output")
    for pack, parts in packs.items():
        arrays[pack] = np.concatenate(parts)
    return structure, arrays, leaves


def decode(structure: Any, values: list) -> Any:
    t = structure["t"]
    if t == "leaf":
        return values[structure["i"]]
    if t == "none":
        return None
    if t in ("bool", "int", "str"):
        return structure["v"]
    if t == "float":
        return float.fromhex(structure["v"])
    if t == "dict":
        return {k: decode(v, values) for k, v in zip(structure["k"], structure["v"])}
    if t == "list":
        return [decode(v, values) for v in structure["v"]]
    if t == "tuple":
        return tuple(decode(v, values) for v in structure["v"])
    if t == "namedtuple":
        return import_object(structure["cls"])(*[decode(v, values) for v in structure["v"]])
    raise CorruptEntry(f"unknown node type {t!r} in entry structure")


def _aligned(arr: np.ndarray) -> np.ndarray:
    """``arr`` in a 64-byte-aligned buffer (copied only if it is not aligned)."""
    if not arr.size or arr.ctypes.data % 64 == 0:
        return arr
    raw = np.empty(arr.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    aligned = raw[start : start + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    np.copyto(aligned, arr)
    return aligned


def to_device(arrays: list[np.ndarray], committed: list[bool]) -> list[jax.Array]:
    """Restored host arrays as JAX arrays, committed to a device or not as they were saved.

    Uncommitted arrays (what stage code creates) come back uncommitted, so the
    next stage's jitted code hits the compilation cache entry a fresh
    computation would. On the CPU backend a 64-byte-aligned host array
    becomes a JAX array without a copy; tensorstore's buffers are not aligned,
    so each is copied once into an aligned one (cheaper than an unaligned
    transfer). Transfers are batched: one ``device_put`` per placement.
    """
    if jax.default_backend() == "cpu":
        arrays = [_aligned(a) for a in arrays]
    out: list = [None] * len(arrays)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for flag in (False, True):
        idx = [i for i, c in enumerate(committed) if c == flag]
        if idx:
            placed = jax.device_put([arrays[i] for i in idx], device if flag else None)
            for i, a in zip(idx, placed):
                out[i] = a
    return out

"""Stage cache: keys, exact round trips, atomicity, corruption, LRU, top-Q policy."""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eeipu_jax.runtime.cache import PACK_BYTES, CachePolicy, StageCache, parse_bytes, prefix_keys, stage_cache_key
from pipelines.toy import make_toy_small

Pair = collections.namedtuple("Pair", "left right")


def _params(j, tag):
    return {f"s{i}": {"tag": tag} for i in range(j + 1)}


def _meta(j=0, costs=(1.0,), tag="x"):
    """Metadata of a stage-``j`` entry; its key is ``K(tag, j)`` (an entry holds what its key names)."""
    return {"pipeline": "p", "version": "1", "stage": j, "seed": 0, "params": _params(j, tag),
            "prefix_costs": list(costs)}


def K(tag="x", j=0):
    return stage_cache_key("p", "1", j, _params(j, tag), 0)


def _disk_bytes(root):
    total = 0
    for dirpath, _, files in os.walk(os.path.join(root, "entries")):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def _data_files(cache, key):
    data = os.path.join(cache.entry_path(key), "data")
    files = [os.path.join(r, f) for r, _, fs in os.walk(data) for f in fs]
    return sorted(files, key=os.path.getsize)


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ------------------------------------------------------------------ keys
def test_key_is_sha256_of_documented_json():
    params = {"prep": {"lr": 0.1, "n": 3, "kind": "a"}, "train": {"wd": 1e-5}}
    doc = '{"params":{"prep":{"kind":"a","lr":0.1,"n":3},"train":{"wd":1e-05}},"pipeline":"pipe","seed":7,"stage":1,"version":"2"}'
    assert stage_cache_key("pipe", "2", 1, params, 7) == hashlib.sha256(doc.encode()).hexdigest()


def test_key_changes_exactly_with_the_prefix():
    pipe = make_toy_small()
    space = pipe.space
    base = space.from_unit(np.full(space.dim, 0.3))
    keys = prefix_keys(pipe, base, seed=0)
    assert len(keys) == pipe.n_stages - 1 and len(set(keys)) == len(keys)
    other = space.from_unit(np.full(space.dim, 0.7))
    for k, stage in enumerate(pipe.stages):
        for p in stage.params:
            changed = {s: dict(v) for s, v in base.items()}
            changed[stage.name][p.name] = other[stage.name][p.name]
            assert changed[stage.name][p.name] != base[stage.name][p.name]
            new = prefix_keys(pipe, changed, seed=0)
            for j in range(pipe.n_stages - 1):
                # stage j's key depends on stages 0..j only
                assert (new[j] != keys[j]) == (k <= j), (stage.name, p.name, j)
    # The last bit of a float is a different key (keys are exact).
    nudged = {s: dict(v) for s, v in base.items()}
    nudged["features"]["lengthscale"] = np.nextafter(base["features"]["lengthscale"], 10.0)
    assert prefix_keys(pipe, nudged, seed=0)[0] != keys[0]
    # Seed, name and version are part of every key.
    assert not set(prefix_keys(pipe, base, seed=1)) & set(keys)
    assert not set(prefix_keys(make_toy_small(data_seed=1), base, seed=0)) & set(keys)
    assert not set(prefix_keys(make_toy_small(name="toy-other"), base, seed=0)) & set(keys)


def test_key_rejects_values_without_a_stable_encoding():
    with pytest.raises(TypeError, match="'x'"):
        stage_cache_key("p", "1", 0, {"s": {"x": [1, 2]}}, 0)
    with pytest.raises(ValueError, match="non-finite"):
        stage_cache_key("p", "1", 0, {"s": {"x": float("nan")}}, 0)
    with pytest.raises(ValueError, match="2 stage"):
        stage_cache_key("p", "1", 1, {"s": {"x": 1}}, 0)


def test_parse_bytes():
    assert parse_bytes("500MB") == 500 * 10**6
    assert parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes("1e6") == 10**6
    for bad in ("-1", "12 parsecs", "0"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_policy_validation_names_the_field():
    with pytest.raises(ValueError, match="policy"):
        CachePolicy("lru")
    with pytest.raises(ValueError, match="q"):
        CachePolicy("top_q", q=0)
    with pytest.raises(ValueError, match="max_bytes"):
        CachePolicy("all", max_bytes=-5)


# ------------------------------------------------------------ round trip
def test_round_trip_preserves_structure_types_and_bits(tmp_path):
    cache = StageCache(tmp_path, CachePolicy("all"))
    rng = np.random.default_rng(0)
    committed = jax.device_put(jnp.arange(4.0), jax.devices()[0])
    tree = {
        "f32": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
        "bf16": jnp.asarray(rng.normal(size=7), jnp.bfloat16),
        "np64": rng.normal(size=(2, 2)),
        "np_nan": np.array([np.nan, -0.0, np.inf]),
        "scalar": np.float32(2.5),
        "ints": jnp.arange(6, dtype=jnp.int8).reshape(2, 3),
        "empty": np.zeros((0, 3), np.float32),
        "key": jax.random.key(5),
        "committed": committed,
        "py": [1, 2.5, float("nan"), "text", None, True],
        "tuple": (jnp.ones(2), Pair(jnp.zeros(1), np.ones(1))),
        "nested": {"x": {"y": jnp.full((2,), 3.0)}},
        # Leaves over PACK_BYTES are stored on their own, the others packed per dtype.
        "big_jax": jnp.asarray(rng.normal(size=(600, 600)), jnp.float32),
        "big_np": rng.normal(size=200_000),
    }
    assert tree["big_jax"].nbytes >= PACK_BYTES and tree["big_np"].nbytes >= PACK_BYTES
    key = K()
    assert cache.save(key, tree, _meta()) > 0
    out, meta = cache.restore(key)

    assert meta["prefix_costs"] == [1.0]
    assert list(out) == list(tree)
    for name in ("f32", "bf16", "np64", "np_nan", "ints", "empty", "committed", "big_jax", "big_np"):
        assert _same_bits(out[name], tree[name]), name
        assert type(out[name]) is type(tree[name]), name
    assert isinstance(out["np64"], np.ndarray) and isinstance(out["f32"], jax.Array)
    assert out["np64"].base is None or out["np64"].base.size == out["np64"].size  # not a view of a pack
    assert out["committed"].committed and not out["f32"].committed
    assert type(out["scalar"]) is np.float32 and out["scalar"] == tree["scalar"]
    assert _same_bits(jax.random.key_data(out["key"]), jax.random.key_data(tree["key"]))
    assert jax.random.key_impl(out["key"]) == jax.random.key_impl(tree["key"])
    assert out["py"][:2] == [1, 2.5] and np.isnan(out["py"][2]) and out["py"][3:] == ["text", None, True]
    assert isinstance(out["tuple"], tuple) and isinstance(out["tuple"][1], Pair)
    assert isinstance(out["tuple"][1].right, np.ndarray)
    assert _same_bits(out["nested"]["x"]["y"], tree["nested"]["x"]["y"])


def test_unsupported_node_is_refused_with_its_path(tmp_path):
    cache = StageCache(tmp_path, CachePolicy("all"))

    class Box:
        pass

    with pytest.raises(TypeError, match=r"output\['a'\]\[1\]"):
        cache.save(K(), {"a": [jnp.ones(1), Box()]}, _meta())
    with pytest.raises(TypeError, match="dtype"):
        cache.save(K(), {"s": np.array(["x"])}, _meta())
    assert os.listdir(os.path.join(tmp_path, "entries")) == []
    assert os.listdir(os.path.join(tmp_path, "tmp")) == []  # nothing half-written left behind


def test_existing_key_is_not_rewritten(tmp_path):
    cache = StageCache(tmp_path, CachePolicy("all"))
    assert cache.save(K(), {"x": jnp.ones(3)}, _meta()) > 0
    assert cache.save(K(), {"x": jnp.zeros(3)}, _meta()) == 0
    assert _same_bits(cache.restore(K())[0]["x"], jnp.ones(3))


# ------------------------------------------------------- atomicity, trust
def test_half_written_entry_is_invisible_and_cleaned(tmp_path):
    cache = StageCache(tmp_path, CachePolicy("all"))
    key = "b" * 64
    partial = os.path.join(tmp_path, "tmp", f"{key}.deadbeef")
    os.makedirs(os.path.join(partial, "data"))
    with open(os.path.join(partial, "data", "chunk"), "wb") as f:
        f.write(b"\0" * 100)
    assert key not in cache and cache.restore(key) is None and cache.entries() == []
    StageCache(tmp_path, CachePolicy("all"), stale_tmp_seconds=0.0)  # reopening cleans leftovers
    assert os.listdir(os.path.join(tmp_path, "tmp")) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_damaged_entry_is_discarded_with_a_warning(tmp_path, caplog, damage):
    cache = StageCache(tmp_path, CachePolicy("all"))
    key = K()
    x = jnp.asarray(np.random.default_rng(1).normal(size=20_000), jnp.float32)
    cache.save(key, {"x": x}, _meta())
    biggest = _data_files(cache, key)[-1]
    if damage == "truncate":
        with open(biggest, "r+b") as f:
            f.truncate(os.path.getsize(biggest) // 2)
    elif damage == "flip":  # same size, one byte altered: only the checksum sees it
        with open(biggest, "r+b") as f:
            f.seek(os.path.getsize(biggest) // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xFF]))
    elif damage == "delete":
        os.remove(biggest)
    else:
        with open(os.path.join(cache.entry_path(key), "meta.json"), "w") as f:
            f.write("{not json")
    with caplog.at_level(logging.WARNING, logger="eeipu_jax.runtime.cache.store"):
        assert cache.restore(key) is None
    assert any("discarding cache entry" in r.message for r in caplog.records)
    assert not os.path.exists(cache.entry_path(key))
    assert cache.stats.corrupted == 1
    # The slot can be filled again and then restores correctly.
    cache.save(key, {"x": x}, _meta())
    assert _same_bits(cache.restore(key)[0]["x"], x)


# ------------------------------------------------------------------- LRU
def test_lru_eviction_keeps_the_byte_limit(tmp_path):
    x = {"x": jnp.asarray(np.random.default_rng(2).normal(size=25_000), jnp.float32)}  # ~100 kB
    probe = StageCache(tmp_path / "probe", CachePolicy("all"))
    probe.save(K(), x, _meta())
    one = _disk_bytes(probe.root)
    limit = int(2.5 * one)
    cache = StageCache(tmp_path / "c", CachePolicy("all", max_bytes=limit))
    a, b, c, d = map(K, "abcd")
    cache.save(a, x, _meta(tag="a"))
    cache.save(b, x, _meta(tag="b"))
    assert cache.restore(a) is not None  # a is now more recent than b
    cache.save(c, x, _meta(tag="c"))  # over the limit: the least recently used (b) goes
    assert {e.key for e in cache.entries()} == {a, c}
    assert _disk_bytes(cache.root) <= limit
    assert cache.total_bytes() == _disk_bytes(cache.root)
    cache.save(d, x, _meta(tag="d"))  # now a is the oldest access
    assert {e.key for e in cache.entries()} == {c, d}
    assert _disk_bytes(cache.root) <= limit
    assert cache.stats.evictions == 2


def test_output_larger_than_the_limit_is_not_written(tmp_path):
    cache = StageCache(tmp_path, CachePolicy("all", max_bytes=1000))
    assert cache.save(K(), {"x": jnp.zeros(10_000)}, _meta()) == 0
    assert cache.entries() == [] and cache.stats.skipped_too_large == 1


# ---------------------------------------------------------------- top-Q
def test_top_q_admits_and_prunes_only_this_runs_entries(tmp_path):
    cache = StageCache(tmp_path, CachePolicy("top_q", q=2))
    x = {"x": jnp.ones(4)}
    foreign = K("f")  # written by another run sharing the directory
    cache.save(foreign, x, _meta(tag="f"))
    trials = {1.0: ("a1", "a2"), 3.0: ("b1", "b2"), 2.0: ("c1", "b2")}
    for y, tags in trials.items():
        assert cache.admits(y)
        for t in tags:
            cache.save(K(t), x, _meta(tag=t))
        cache.record_trial(y, tuple(map(K, tags)))
    # Top two are 3.0 and 2.0; trial 1.0's entries are gone, the shared b2 stays.
    assert {e.key for e in cache.entries()} == {foreign, K("b1"), K("b2"), K("c1")}
    assert not cache.admits(1.5) and cache.admits(2.5) and not cache.admits(float("nan"))
    cache.record_trial(float("nan"), (K("d1"), K("d2")))  # failed trials never rank
    assert cache.keep_set() == {K("b1"), K("b2"), K("c1")}
    assert cache.stats.pruned == 2


def test_all_policy_admits_everything(tmp_path):
    cache = StageCache(tmp_path, CachePolicy("all"))
    cache.save(K(), {"x": jnp.ones(2)}, _meta())
    cache.record_trial(-1e9, (K(),))
    assert cache.admits(-1e10) and cache.admits(float("nan"))
    assert len(cache.entries()) == 1


def test_summary_is_json(tmp_path):
    cache = StageCache(tmp_path, CachePolicy("all"))
    cache.save(K(), {"x": jnp.ones(2)}, _meta(costs=(2.0,)))
    cache.restore_longest((K(),))
    s = json.loads(json.dumps(cache.summary()))
    assert s["hits_per_depth"] == {"1": 1} and s["compute_seconds_restored"] == 2.0
    assert s["entries"] == 1 and s["bytes"] == _disk_bytes(cache.root)


# ------------------------------------------------- metadata is not trusted
def _reseal(meta):
    """The documented checksum of ``meta.json``, computed here independently of the cache."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return {**body, "meta_sha256": hashlib.sha256(text.encode()).hexdigest()}


def _edit_meta(cache, key, edit, *, reseal=False):
    path = os.path.join(cache.entry_path(key), "meta.json")
    with open(path) as f:
        meta = json.load(f)
    edit(meta)
    with open(path, "w") as f:
        json.dump(_reseal(meta) if reseal else meta, f)


def _toy_runs(tmp_path):
    """A fresh toy-small trial with every stage output cached, and a second configuration's."""
    from eeipu_jax.runtime.runner import Runner

    pipe = make_toy_small()
    cache = StageCache(tmp_path / "cache", CachePolicy("all"))
    runner = Runner(pipe, seed=0, cache=cache)
    params = pipe.space.from_unit(np.full(pipe.space.dim, 0.4))
    fresh = runner.run(params)
    other = {s: dict(v) for s, v in params.items()}
    other["train"]["steps"] = params["train"]["steps"] + 7  # same shapes, other values
    other_result = runner.run(other)
    assert fresh.ok and other_result.ok and fresh.objective != other_result.objective
    return pipe, params, fresh, other_result


def _offset_plus_one(meta):
    leaf = next(lf for lf in meta["leaves"] if lf.get("offset", 0) > 0)
    leaf["offset"] += 1


def _shape_transposed(meta):
    leaf = next(lf for lf in meta["leaves"] if len(lf["shape"]) == 2 and lf["shape"][0] != lf["shape"][1])
    leaf["shape"] = leaf["shape"][::-1]


@pytest.mark.parametrize("edit", ["offset", "prefix_costs", "files_and_data", "shape"])
def test_edited_metadata_is_discarded_and_the_stage_recomputed(tmp_path, caplog, edit):
    """One edited number in a valid meta.json must not restore wrong data or costs."""
    from eeipu_jax.runtime.runner import Runner

    pipe, params, fresh, other = _toy_runs(tmp_path)
    cache = StageCache(tmp_path / "cache", CachePolicy("all"))
    target = fresh.cache_keys[1]
    if edit == "offset":
        _edit_meta(cache, target, _offset_plus_one)
    elif edit == "prefix_costs":
        _edit_meta(cache, target, lambda m: m.update(prefix_costs=[-5.0, 1e9]))
    elif edit == "shape":
        _edit_meta(cache, target, _shape_transposed)
    else:  # another configuration's (valid, loadable) data under this key, and no file list to check it
        data = os.path.join(cache.entry_path(target), "data")
        shutil.rmtree(data)
        shutil.copytree(os.path.join(cache.entry_path(other.cache_keys[1]), "data"), data)
        _edit_meta(cache, target, lambda m: m.update(files={}))
    with caplog.at_level(logging.WARNING):
        again = Runner(pipe, seed=0, cache=cache).run(params)
    assert again.ok, again.error
    assert again.objective == fresh.objective  # bit-identical to the fresh run, not the edited entry's
    assert again.memo_depth == 1  # stage 0 restored, stage 1 recomputed
    assert np.all(np.isfinite(again.stage_costs)) and np.all(again.stage_costs >= 0)
    assert again.stage_costs[1] < 1e3
    assert cache.stats.corrupted == 1
    assert any("discarding cache entry" in r.getMessage() and target in r.getMessage() for r in caplog.records)
    # The recomputed output was cached again; later runs restore it and agree.
    later = Runner(pipe, seed=0, cache=StageCache(tmp_path / "cache", CachePolicy("all"))).run(params)
    assert later.ok and later.memo_depth == 2 and later.objective == fresh.objective


def test_an_entry_swapped_for_another_ones_is_discarded_and_the_stage_recomputed(tmp_path, caplog):
    """Another configuration's whole entry under this key, its meta.json naming this key and re-sealed:
    every file checks out, but its parameters do not hash to the key it sits under."""
    from eeipu_jax.runtime.runner import Runner

    pipe, params, fresh, other = _toy_runs(tmp_path)
    cache = StageCache(tmp_path / "cache", CachePolicy("all"))
    target, source = fresh.cache_keys[1], other.cache_keys[1]
    shutil.rmtree(cache.entry_path(target))
    shutil.copytree(cache.entry_path(source), cache.entry_path(target))
    _edit_meta(cache, target, lambda m: m.update(key=target), reseal=True)
    with caplog.at_level(logging.WARNING):
        again = Runner(pipe, seed=0, cache=cache).run(params)
    assert again.ok and again.objective == fresh.objective != other.objective  # not the other trial's output
    assert again.memo_depth == 1 and cache.stats.corrupted == 1
    assert any("discarding cache entry" in r.getMessage() and target in r.getMessage() and "hash to key" in
               r.getMessage() for r in caplog.records)
    later = Runner(pipe, seed=0, cache=StageCache(tmp_path / "cache", CachePolicy("all"))).run(params)
    assert later.memo_depth == 2 and later.objective == fresh.objective  # recomputed and cached again


def test_save_refuses_a_key_that_is_not_the_metadatas(tmp_path):
    cache = StageCache(tmp_path, CachePolicy("all"))
    with pytest.raises(ValueError, match="is not the key of the metadata"):
        cache.save(K("a"), {"x": jnp.ones(2)}, _meta(tag="b"))
    assert cache.entries() == []


def _entry(tmp_path, tree=None):
    cache = StageCache(tmp_path, CachePolicy("all"))
    key = K("x", 1)
    tree = tree or {"w": jnp.arange(12.0).reshape(3, 4), "b": np.arange(5, dtype=np.int32), "p": Pair(jnp.ones(2), 3)}
    assert cache.save(key, tree, _meta(1, (1.0, 2.0))) > 0
    return cache, key


@pytest.mark.parametrize(
    "edit",
    [
        "negative_cost", "nan_cost", "missing_cost", "offset_gap", "offset_overlap", "shape_size",
        "no_files", "data_bytes", "unknown_dtype", "leaf_twice", "class_path", "key", "format",
    ],
)
def test_inconsistent_metadata_is_discarded_even_with_a_valid_checksum(tmp_path, edit):
    """Values are checked whatever the checksum says (a writer bug, a resealed edit)."""
    cache, key = _entry(tmp_path)

    def change(m):
        leaves = m["leaves"]
        packed = [lf for lf in leaves if "pack" in lf]
        if edit == "negative_cost":
            m["prefix_costs"] = [-5.0, 1e9]
        elif edit == "nan_cost":
            m["prefix_costs"] = [1.0, float("inf")]
        elif edit == "missing_cost":
            m["prefix_costs"] = [1.0]
        elif edit == "offset_gap":
            packed[-1]["offset"] += 1
        elif edit == "offset_overlap":
            packed[-1]["offset"] -= 1
        elif edit == "shape_size":
            next(lf for lf in packed if len(lf["shape"]) == 2)["shape"] = [3, 3]
        elif edit == "no_files":
            m["files"] = {}
            m["data_bytes"] = 0
        elif edit == "data_bytes":
            m["data_bytes"] += 1
        elif edit == "unknown_dtype":
            packed[0]["dtype"] = "float99"
        elif edit == "leaf_twice":
            m["structure"]["v"][1] = m["structure"]["v"][0]
        elif edit == "class_path":
            m["structure"]["v"][2]["cls"] = "tests.test_cache:NoSuchTuple"
        elif edit == "key":
            m["key"] = "0" * 64
        elif edit == "format":
            m["format"] = 1

    if edit in ("nan_cost",):  # JSON has no inf: write the document by hand
        path = os.path.join(cache.entry_path(key), "meta.json")
        meta = json.load(open(path))
        change(meta)
        body = {k: v for k, v in meta.items() if k != "meta_sha256"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        meta["meta_sha256"] = hashlib.sha256(text.encode()).hexdigest()
        with open(path, "w") as f:
            json.dump(meta, f)
    else:
        _edit_meta(cache, key, change, reseal=True)
    assert cache.restore(key) is None
    assert not os.path.exists(cache.entry_path(key))
    assert cache.stats.corrupted == 1


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "null", "{}", b"\xff\xfe"])
def test_any_unreadable_meta_is_discarded_not_raised(tmp_path, content):
    cache, key = _entry(tmp_path)
    with open(os.path.join(cache.entry_path(key), "meta.json"), "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())
    assert cache.restore_longest(("0" * 64, key)) == (0, None, None)
    assert not os.path.exists(cache.entry_path(key))


def test_data_files_not_listed_are_refused(tmp_path):
    cache, key = _entry(tmp_path)
    with open(os.path.join(cache.entry_path(key), "data", "extra"), "wb") as f:
        f.write(b"not part of the entry")
    assert cache.restore(key) is None and cache.stats.corrupted == 1
    cache, key = _entry(tmp_path / "size", None)
    cache.verify = "size"  # listing is checked in either verify mode
    with open(os.path.join(cache.entry_path(key), "data", "extra"), "wb") as f:
        f.write(b"x")
    assert cache.restore(key) is None


def test_an_entry_that_fails_while_listing_is_discarded(tmp_path):
    cache, key = _entry(tmp_path)
    _edit_meta(cache, key, lambda m: m.update(prefix_costs=[3.0, 4.0]))  # checksum no longer matches
    assert cache.entries() == [] and not os.path.exists(cache.entry_path(key))


def test_save_refuses_bad_costs(tmp_path):
    cache = StageCache(tmp_path, CachePolicy("all"))
    for costs in ((-1.0,), (float("nan"),), (1.0, 2.0)):
        with pytest.raises(ValueError, match="prefix_costs"):
            cache.save(K(), {"x": jnp.ones(2)}, _meta(0, costs))
    assert cache.entries() == [] and os.listdir(os.path.join(tmp_path, "tmp")) == []


# ------------------------------------------------------- killed writers
_KILLED_WRITER = """
import os, sys
import jax.numpy as jnp
import eeipu_jax.runtime.cache.store as c

real = c._write_text
def die(path, text):  # the process is killed while the entry is half-written
    if path.endswith("meta.json"):
        os._exit(17)
    real(path, text)
c._write_text = die
cache = c.StageCache(sys.argv[1], c.CachePolicy("all"))
meta = dict(pipeline="p", version="1", stage=0, seed=0, params={"s0": {"tag": "d"}}, prefix_costs=[1.0])
cache.save(c.stage_cache_key("p", "1", 0, meta["params"], 0), {"x": jnp.ones(3)}, meta)
"""


def test_half_written_entries_of_dead_writers_are_removed_at_once(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], cwd=repo, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 17, err.decode()[-2000:]
    tmp = os.path.join(tmp_path, "tmp")
    (left,) = os.listdir(tmp)  # the killed writer's folder, minutes (not hours) old
    key, _, writer = left.split(".", 2)
    pid, host = writer.split("@", 1)
    assert key == K("d") and int(pid) == proc.pid
    # Other folders: this (live) process on this host, a writer on another host, a name without a writer.
    alive = f"{'e' * 64}.{'1' * 32}.{os.getpid()}@{host}"
    foreign = f"{'f' * 64}.{'2' * 32}.{proc.pid}@some-other-host"
    anonymous = f"{'9' * 64}.deadbeef"
    for name in (alive, foreign, anonymous):
        os.makedirs(os.path.join(tmp, name, "data"))
    StageCache(tmp_path, CachePolicy("all"))  # default age limit: 6 hours
    assert sorted(os.listdir(tmp)) == sorted([alive, foreign, anonymous])
    StageCache(tmp_path, CachePolicy("all"), stale_tmp_seconds=0.0)  # other hosts: by age only
    assert os.listdir(tmp) == [alive]

"""Cache overhead: stage-cache save/restore time against the disk's raw speed, and in a real run.

Part 1, for stage outputs of 1, 10 and 100 MB (one float32 array of random
values, so compression could not help): seconds of

* ``raw write``: writing the same bytes to one file, then ``fsync`` (the
  physical limit of a durable write); ``raw write (no fsync)``: to the page
  cache only (what the cache's own write amounts to: it relies on checksums,
  not fsync, for integrity);
* ``raw read (cold)``: reading the file back into memory after evicting it
  from the page cache (``posix_fadvise(DONTNEED)``); ``raw read (hot)``;
* ``cache save``: :meth:`eeipu_jax.runtime.cache.StageCache.save` (orbax write,
  SHA-256 of the files, metadata, atomic rename);
* ``cache restore``: :meth:`~eeipu_jax.runtime.cache.StageCache.restore` (SHA-256
  verification, orbax read, array placement), hot and cold;
* ``orbax save`` / ``orbax restore``: the orbax calls alone (no hashing), to
  show where the time goes.

Medians over ``--repeats``; the raw baselines run in the same process on the
same directory, so the ratios are the overhead of the cache on this machine.

Part 2: a short real tuning run (:class:`eeipu_jax.Study`) of the
demo pipeline with EEIPU, reporting the fraction of its budget spent on cache
I/O (restores + writes) per cache policy.

Usage::

    PYTHONPATH=. python benchmarks/cache_overhead.py            # full (about 6 minutes)
    PYTHONPATH=. python benchmarks/cache_overhead.py --skip-run # part 1 only

Writes ``benchmarks/results/cache_overhead.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pipelines.registry  # noqa: E402,F401  (registers "toy")
from eeipu_jax.cpu import pin_xla_threads  # noqa: E402
from eeipu_jax.runtime.cache import CachePolicy, StageCache  # noqa: E402
from eeipu_jax.runtime.cache.store import _digest_dir  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _evict(path: str) -> None:
    """Drop a file's (or a directory's files') pages from the page cache."""
    files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_size(root: str, megabytes: int, repeats: int) -> dict:
    n = megabytes * 10**6 // 4
    x = jax.random.normal(jax.random.key(megabytes), (n,), jnp.float32)
    host = np.asarray(x)
    nbytes = host.nbytes
    times: dict[str, list[float]] = {}

    def add(name, secs):
        times.setdefault(name, []).append(secs)

    raw = os.path.join(root, "raw.bin")
    buf = np.empty_like(host)
    for r in range(repeats):
        def write(sync):
            with open(raw, "wb") as f:
                f.write(memoryview(host).cast("B"))
                f.flush()
                if sync:
                    os.fsync(f.fileno())

        add("raw write", _timed(lambda: write(True)))
        add("raw write (no fsync)", _timed(lambda: write(False)))

        def read():
            with open(raw, "rb") as f:
                f.readinto(memoryview(buf).cast("B"))

        _evict(raw)
        add("raw read (cold)", _timed(read))
        add("raw read (hot)", _timed(read))
        os.remove(raw)

        cache = StageCache(os.path.join(root, f"cache{r}"), CachePolicy("all"))
        key = f"{megabytes:04d}{r:04d}".ljust(64, "0")
        meta = {"pipeline": "bench", "version": "1", "stage": 0, "seed": 0, "params": {}, "prefix_costs": [1.0]}
        add("cache save", _timed(lambda: cache.save(key, {"x": x}, meta)))
        _evict(cache.entry_path(key))
        add("cache restore (cold)", _timed(lambda: jax.block_until_ready(cache.restore(key))))
        got = cache.restore(key)
        add("cache restore (hot)", _timed(lambda: jax.block_until_ready(cache.restore(key))))
        assert np.asarray(got[0]["x"]).tobytes() == host.tobytes()
        add("sha256 of entry", _timed(lambda: _digest_dir(os.path.join(cache.entry_path(key), "data"))))

        import orbax.checkpoint as ocp

        path = os.path.join(root, f"orbax{r}")
        add("orbax save", _timed(lambda: cache.checkpointer.save(path, args=ocp.args.PyTreeSave({"x": x}))))
        args = ocp.args.PyTreeRestore(restore_args={"x": ocp.RestoreArgs(restore_type=np.ndarray)})
        add("orbax restore (hot)", _timed(lambda: cache.checkpointer.restore(path, args=args)))
        shutil.rmtree(path)
        shutil.rmtree(cache.root)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"megabytes": megabytes, "bytes": nbytes, "repeats": repeats, "median_seconds": med}


def bench_run(root: str, budget: float, policy: str, seed: int) -> dict:
    from eeipu_jax import Study

    out = os.path.join(root, f"run-{policy}")
    t = time.perf_counter()
    summary = Study.create(out, "toy", "eeipu", budget, seed, cache_policy=policy).optimize()
    wall = time.perf_counter() - t
    trials = [json.loads(line) for line in open(os.path.join(out, "trials.jsonl"))]
    restore = sum(r["restore_seconds"] for r in trials if r["memo_depth"] > 0)
    save = sum(r["save_seconds"] for r in trials)
    return {
        "pipeline": "toy",
        "method": "eeipu",
        "policy": policy,
        "budget": budget,
        "spent": summary["spent"],
        "wall_seconds": wall,
        "trials": summary["n_trials"],
        "memoized_trials": summary["n_memoized"],
        "restore_seconds": restore,
        "save_seconds": save,
        "cache_io_seconds": summary["cache_io_seconds"],
        "cache_io_fraction": summary["cache_io_fraction"],
        "compute_seconds_restored": summary["cache"]["compute_seconds_restored"],
        "entries_written": summary["cache"]["entries_written"],
        "bytes_written": summary["cache"]["bytes_written"],
        "best": summary["best"]["y"] if summary["best"] else None,
    }


def _markdown(results: dict) -> str:
    cols = ["raw write", "raw write (no fsync)", "cache save", "orbax save", "raw read (cold)", "cache restore (cold)",
            "raw read (hot)", "cache restore (hot)", "orbax restore (hot)", "sha256 of entry"]
    lines = [
        f"Machine: {results['machine']}; directory: {results['directory']}; medians of seconds.",
        "",
        "| size | " + " | ".join(cols) + " | save / raw write | restore / raw read (cold) |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for r in results["sizes"]:
        m = r["median_seconds"]
        lines.append(
            f"| {r['megabytes']} MB | " + " | ".join(f"{m[c]:.4f}" for c in cols)
            + f" | {m['cache save'] / m['raw write']:.2f}x | {m['cache restore (cold)'] / m['raw read (cold)']:.2f}x |"
        )
    if results.get("runs"):
        lines += ["", "| run | policy | budget s | spent s | trials | memoized | restore s | save s | cache I/O share |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results["runs"]:
            lines.append(
                f"| {r['pipeline']}/{r['method']} | {r['policy']} | {r['budget']:g} | {r['spent']:.1f} | {r['trials']} "
                f"| {r['memoized_trials']} | {r['restore_seconds']:.2f} | {r['save_seconds']:.2f} "
                f"| {100 * r['cache_io_fraction']:.1f}% |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100], help="output sizes in MB")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions per size (median reported)")
    parser.add_argument("--dir", default=None, help="directory to benchmark (default: a temporary one)")
    parser.add_argument("--run-budget", type=float, default=60.0, help="budget of each real run, seconds")
    parser.add_argument("--policies", nargs="+", default=["top_q", "all"], help="cache policies of the real runs")
    parser.add_argument("--skip-run", action="store_true", help="only part 1")
    parser.add_argument("--out", default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    pin_xla_threads()  # the scripts' CPU set-up, before the first JAX computation

    root = tempfile.mkdtemp(prefix="cache-bench-", dir=args.dir)
    results = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()})",
        "directory": root,
        "sizes": [],
        "runs": [],
    }
    try:
        for mb in args.sizes:
            r = bench_size(root, mb, args.repeats)
            results["sizes"].append(r)
            print(f"{mb} MB: " + ", ".join(f"{k} {v:.4f}s" for k, v in r["median_seconds"].items()), flush=True)
        if not args.skip_run:
            for policy in args.policies:
                r = bench_run(root, args.run_budget, policy, seed=0)
                results["runs"].append(r)
                print(f"run {policy}: {r}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cache_overhead.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = _markdown(results)
    with open(os.path.join(args.out, "cache_overhead.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

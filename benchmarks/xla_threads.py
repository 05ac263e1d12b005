"""Does a two-thread XLA CPU pool speed up ``ask``, and does it hang?

Importing eeipu_jax creates the JAX CPU backend with a one-thread intra-op pool
(eeipu_jax/cpu.py, which the scripts opt in to): jaxlib < 0.11 splits a batched LAPACK call
(Cholesky, triangular solve: the stacked GP fits) over the pool and blocks a
pool thread until the chunks finish, so several such calls at once can wait
on each other forever. ``EEIPU_JAX_NO_PIN=1`` skips the pinning: the pool then
has one thread per CPU of the process (2 here). This script runs the same
work in child processes, each under a hard timeout, pinned ("1 thread") and
unpinned ("2 threads"), and reports times and hangs:

* ``asks``: cold and warm ``loop.ask`` at each size (bo_step_problem.py's
  EEIPU problem; median of ``--repeats``), the single-run path;
* ``threads``: two Python threads calling ``ask`` at the same time on the
  largest size (two batched LAPACK calls in flight at once: the pattern that
  can deadlock);
* ``vmap``: ``simulate.run_jitted`` of the synthetic3 pipeline over 4 seeds with
  ``batching="vmap"`` (the vmapped BO loop where the hang was first seen).

Each (mode, pool) child runs ``--rounds`` times; a child still running after
``--timeout`` seconds is killed, after recording the CPU time it uses in 5 s
and (where gdb is installed) which threads wait inside jaxlib's batched LAPACK
dispatch (``ParallelBatchMap``), in which kernel, and whether blocked or
computing: "deadlock" if every XLA pool thread is blocked there and the
process uses no CPU, "timeout" otherwise. The XLA pool
size each child actually got is read from its thread names (``tf_XLAEigen``).

Usage:
    python benchmarks/xla_threads.py [--sizes 200 800] [--repeats 5] [--rounds 3] [--timeout 600]
        [--modes asks threads vmap]

Writes benchmarks/results/xla_threads.{json,md}. On a shared 2-core machine
the two-thread figures compete with other jobs for the second core: they are
indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODES = ("asks", "threads", "vmap")


def _xla_pool_threads() -> int:
    """Threads of XLA's intra-op pool in this process (by their thread name)."""
    names = []
    for t in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{t}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return sum(n.startswith("tf_XLAEigen") for n in names)


def child(mode: str, sizes: list[int], repeats: int) -> dict:
    """Run one mode in this process and return its measurements."""
    sys.path.insert(0, HERE)
    import threading

    import jax
    import numpy as np

    from bo_step_problem import filled_state, make_space, time_ask_kinds
    from eeipu_jax import loop

    out = dict(mode=mode)
    space = make_space()
    cfg = loop.BOConfig.from_space(space, method="eeipu")
    if mode == "asks":
        out["sizes"] = []
        for n in sizes:
            first, cold, warm, held, _ = time_ask_kinds(cfg, filled_state(cfg, space, n), repeats)
            out["sizes"].append(dict(n=n, first_s=first, cold_s=cold, warm_s=warm, held_s=held))
    elif mode == "threads":
        state = filled_state(cfg, space, max(sizes))
        jax.block_until_ready(loop.ask(jax.random.key(0), state, cfg))  # compile once
        errors = []

        def work(i):
            try:
                for r in range(repeats):  # n_bo = 0: cold, the longest batched LAPACK work
                    jax.block_until_ready(loop.ask(jax.random.key(1000 * i + r), state, cfg))
            except Exception as e:  # reported to the parent, which fails the row
                errors.append(repr(e))

        t0 = time.perf_counter()
        ths = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        out.update(n=max(sizes), asks=2 * repeats, wall_s=time.perf_counter() - t0, errors=errors)
    elif mode == "vmap":
        from eeipu_jax import simulate
        from pipelines.synthetic import get_pipeline

        problem = get_pipeline("synthetic3")
        scfg = loop.BOConfig.from_space(problem.space, method="eeipu")
        keys = jax.random.split(jax.random.key(0), 4)
        t0 = time.perf_counter()
        res = simulate.run_jitted(keys, problem, scfg, batching="vmap", max_trials=40)
        out.update(seeds=4, max_trials=40, wall_s=time.perf_counter() - t0,
                   best=[float(np.max(r.best)) for r in res])
    else:
        raise ValueError(f"unknown mode {mode!r}")
    out["xla_pool_threads"] = _xla_pool_threads()
    return out


def run_child(mode: str, pool: int, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("EEIPU_JAX_NO_PIN", "EEIPU_JAX_CPU")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if pool == 2:
        env["EEIPU_JAX_NO_PIN"] = "1"
    cmd = [sys.executable, __file__, "--child", mode, "--sizes", *map(str, args.sizes),
           "--repeats", str(args.repeats)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        cpu = cpu_seconds_over(proc.pid, 5.0)  # ~0 for a process whose threads all wait
        blocked, pool_threads = blocked_frames(proc.pid)  # before the kill: where the threads wait
        proc.kill()
        proc.communicate()
        # A deadlock: every XLA pool thread inside a batched LAPACK call, waiting for chunks
        # that no free pool thread can run, and no CPU used; otherwise merely slow.
        dead = (bool(blocked) and sum(w for _, _, w in blocked) >= pool_threads > 0 and cpu < 0.05)
        return dict(mode=mode, pool=pool, status="deadlock" if dead else "timeout",
                    elapsed_s=time.perf_counter() - t0, blocked_in=blocked, cpu_s_in_5s=cpu)
    if proc.returncode != 0:
        return dict(mode=mode, pool=pool, status=f"failed (rc {proc.returncode})", stderr=stderr[-2000:],
                    elapsed_s=time.perf_counter() - t0)
    res = json.loads(stdout.strip().splitlines()[-1])
    status = "ok" if not res.get("errors") else "errors"
    return dict(res, pool=pool, status=status, elapsed_s=time.perf_counter() - t0)


def cpu_seconds_over(pid: int, seconds: float) -> float:
    """CPU seconds process ``pid`` used during the next ``seconds`` (from /proc)."""

    def used():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    before = used()
    time.sleep(seconds)
    return used() - before


def blocked_frames(pid: int):
    """For a child past its timeout: ``(in_batch_map, pool_threads)``.

    ``in_batch_map`` lists each thread inside jaxlib's batched LAPACK dispatch
    (``ParallelBatchMap``) as ``(name, kernel, waiting)``: its thread name, the
    LAPACK kernel it dispatches and whether it is blocked (its innermost frames
    wait on a futex) rather than computing; ``pool_threads`` counts XLA's pool
    threads. ``(None, 0)`` where gdb is not available.
    """
    try:
        bt = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 40"],
                            capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None, 0
    out, pool = [], 0
    for thread in bt.split("\nThread ")[1:]:
        name = re.search(r'"([^"]+)"', thread)
        name = name.group(1) if name else "?"
        pool += name.startswith("tf_XLAEigen")
        if "ParallelBatchMap" in thread:
            kernels = re.findall(r"in (lapack_\w+)", thread)
            top = thread.split("ParallelBatchMap")[0]  # the frames inside the batch map
            waiting = "BlockingCounter::Wait" in top or ("futex" in top and "lapack_" not in top)
            out.append((name, kernels[0] if kernels else "?", waiting))
    return out, pool


def summary(r: dict) -> str:
    if r["status"] in ("deadlock", "timeout"):
        b = r.get("blocked_in")
        where = ("no gdb for a backtrace" if b is None else
                 "; ".join(f"{n}: {k} {'blocked' if w else 'running'} in ParallelBatchMap" for n, k, w in b)
                 or "no thread in batched LAPACK")
        return (f"not finished after {r['elapsed_s']:.0f} s, {r['cpu_s_in_5s']:.2f} CPU s in 5 s, "
                f"killed ({where})")
    if r["status"] not in ("ok", "errors"):
        return r["status"]
    if r["mode"] == "asks":
        return ", ".join(f"n={s['n']}: cold {s['cold_s']:.3f} s warm {s['warm_s']:.3f} s held {s['held_s']:.3f} s" for s in r["sizes"])
    if r["mode"] == "threads":
        return f"{r['asks']} cold asks at n={r['n']} on 2 Python threads: {r['wall_s']:.2f} s wall ({r['status']})"
    return f"run_jitted vmap, {r['seeds']} seeds x {r['max_trials']} trials: {r['wall_s']:.1f} s (incl. compile)"


def main():
    sys.path.insert(0, HERE)
    from bo_step_problem import arg_parser

    ap = arg_parser(__doc__, "xla_threads", [200, 800], 5, "timed asks per size and kind (median)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a child counts as hung")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.sizes, args.repeats)))
        return

    runs = []
    for mode in args.modes:
        for rnd in range(args.rounds):
            for pool in (1, 2):  # alternate, so slow phases of the shared machine hit both
                r = run_child(mode, pool, args)
                r["round"] = rnd
                runs.append(r)
                print(f"  {mode} round {rnd} pool {pool} (got {r.get('xla_pool_threads', '?')}): {summary(r)}",
                      flush=True)
    load = [round(v, 2) for v in os.getloadavg()]
    lines = [f"| {'mode':<7} | {'pool':>4} | {'got':>3} | {'round':>5} | {'status':<8} | result |",
             "|---------|------|-----|-------|----------|--------|"]
    for r in runs:
        lines.append(f"| {r['mode']:<7} | {r['pool']:>4} | {r.get('xla_pool_threads', '?'):>3} | {r['round']:>5} "
                     f"| {r['status'][:8]:<8} | {summary(r)} |")
    head = (f"XLA CPU pool 1 thread (pinned, the default) vs 2 threads (EEIPU_JAX_NO_PIN=1), {os.cpu_count()} cores, "
            f"load average at the end {load} (shared machine: indicative), timeout {args.timeout:.0f} s per child")
    print(head)
    print("\n".join(lines))
    from bo_step_problem import write_results

    write_results(args.out, dict(cpu_count=os.cpu_count(), load_average=load, timeout_s=args.timeout, runs=runs),
                  "XLA CPU thread pool: 1 vs 2 threads", [f"{head}.", "", *lines])

if __name__ == "__main__":
    main()

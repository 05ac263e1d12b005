"""CPU set-up: the compile options of the library's programs, and (opt-in, for
scripts) XLA's thread pool on one core and host BLAS on one thread.

**Compile options.** The library's jitted programs (``loop.ask``, the
simulators, the sweeps) are built with :func:`jit`, which passes
:func:`compiler_options` to ``jax.jit``: on a CPU, XLA's classic loop
emitters instead of its MLIR fusion emitters and LLVM's ``-O1`` instead of
``-O2``. That halves the compilation of the BO step (``ask`` at capacity 128:
12.4 s -> 5.8 s with its first call, benchmarks/ask_overhead.py) and leaves
its run time as it was: its time goes to LAPACK calls and matrix products,
which XLA calls in libraries whatever the options. Only these programs get the
options (a user's own ``jax.jit`` is untouched). Numbers change at float
rounding only (the two emitters round transcendental functions differently).
Set ``EEIPU_JAX_FAST_COMPILE=0`` for XLA's defaults; an option the user sets
in ``XLA_FLAGS`` is left to the user's setting. Nothing is set where JAX runs
on an accelerator. An option the installed XLA no longer has is not passed:
jaxlib 0.11.1 removed the classic emitters' switch (XLA rejects the unknown
option, and aborts the process on an unknown ``XLA_FLAGS`` entry), so from that
version on the library's programs get ``-O1`` only.

**Thread pool (scripts).**

Importing :mod:`eeipu_jax` changes nothing in the process. A script that runs
many BO steps on a CPU calls :func:`pin_xla_threads` once, before its first
JAX computation (the experiment scripts, benchmarks and the test suite do):

    from eeipu_jax.cpu import pin_xla_threads
    pin_xla_threads()      # -> {"xla_cpu": 1, "host_blas_threads": 1, "reason": "pinned"}

Why:

jaxlib < 0.11 runs batched LAPACK calls (Cholesky, triangular solves: the
core of every GP fit) by splitting the batch over XLA's intra-op thread pool
and blocking a pool thread until the chunks finish. When several such calls
run at once they can occupy every pool thread and wait on each other forever
(seen here: vmapped BO runs hanging in ``block_until_ready`` with all threads
idle), and on a loaded machine the scheduling alone made batched solves 60x
slower. With a one-thread pool that path is never taken (jaxlib runs the
batch inline when the pool has a single thread).

The pool is sized from the CPU affinity of the thread that creates the CPU
backend, so we create the backend while this thread is pinned to one CPU and
restore the affinity afterwards: XLA's threads stay on one core, Python
threads are free. Parallelism comes from processes instead (the experiment
scripts run one job per core). The CPU used is ``$EEIPU_JAX_CPU`` if set,
else the pytest-xdist worker number, else the process id, modulo the
available CPUs.

Host-side BLAS gets one thread too (``OPENBLAS_NUM_THREADS`` defaults to 1 for
libraries loaded later, and threadpoolctl limits those already loaded): the
BO step runs in XLA and host BLAS calls are tiny, but an idle OpenBLAS worker
thread busy-waits, and SciPy's (which the Sobol points loaded at the time) was measured
taking half of the core that XLA computes on for a whole vmapped run.

Skipped when ``EEIPU_JAX_NO_PIN=1`` (so the scripts' set-up can be turned
off from outside), when a GPU plugin is installed or ``JAX_PLATFORMS`` names
no CPU, when the platform has no ``sched_setaffinity``, or when the JAX
backend already exists (then a warning says so: the pool cannot be resized).
"""

from __future__ import annotations

import importlib.util
import os
import warnings

__all__ = ["pin_xla_threads", "limit_host_blas_threads", "compiler_options", "known_options", "jit"]

_DONE: dict | None = None  # what pin_xla_threads did in this process, once it pinned

# Options that XLA removed, with the first jaxlib release without them: passing one
# fails every compilation ("No such compile option"), naming one in XLA_FLAGS aborts.
REMOVED_IN = {"xla_cpu_use_fusion_emitters": (0, 11, 1)}


def _jaxlib_version() -> tuple[int, ...]:
    """The installed jaxlib's release as integers, e.g. ``(0, 10, 2)`` (read from its
    metadata or its version module: this does not start JAX's backend)."""
    import re

    try:
        from importlib.metadata import version

        text = version("jaxlib")
    except Exception:  # no distribution metadata (a source build): ask jax (imports it, no backend)
        import jax.lib

        text = jax.lib.__version__
    return tuple(int(m.group()) for m in (re.match(r"\d+", p) for p in text.split(".")[:3]) if m)


def known_options(options: dict) -> dict:
    """``options`` less those the installed XLA no longer has (``REMOVED_IN``)."""
    have = _jaxlib_version()
    return {k: v for k, v in options.items() if k not in REMOVED_IN or have < REMOVED_IN[k]}


# XLA's CPU compile options for the library's programs (see the module doc), as far
# as the installed XLA has them.
FAST_CPU_COMPILE = known_options({"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1})
# XLA's own values of the same options: passed as ``compiler_options`` they give XLA's
# defaults whatever ``XLA_FLAGS`` says (explicit options override the flags).
XLA_CPU_DEFAULTS = known_options({"xla_cpu_use_fusion_emitters": True, "xla_backend_optimization_level": 2})


def _cpu_index(n: int) -> int:
    if os.environ.get("EEIPU_JAX_CPU", "").strip().lstrip("-").isdigit():
        return int(os.environ["EEIPU_JAX_CPU"]) % n
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:]) % n
    return os.getpid() % n


def _has_gpu_plugin() -> bool:
    return any(
        importlib.util.find_spec(name) is not None
        for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")
    )


def limit_host_blas_threads() -> bool:
    """One thread for host BLAS libraries (see module doc); ``OPENBLAS_NUM_THREADS``
    / ``OMP_NUM_THREADS`` set by the user are respected.

    Returns:
        Whether the limit was set (``False``: the user's setting was kept).
    """
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if var in os.environ:
            return False
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        import threadpoolctl
    except ImportError:  # optional: only libraries loaded from now on are limited
        return True
    threadpoolctl.threadpool_limits(1, user_api="blas")
    return True


def _on_accelerator() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    return bool((platforms and "cpu" not in platforms.split(",")) or (not platforms and _has_gpu_plugin()))


def compiler_options() -> dict | None:
    """The XLA compile options of the library's programs (module doc), read
    from the environment when a module defines its programs (at import).

    Returns:
        ``FAST_CPU_COMPILE`` less the options named in ``XLA_FLAGS``, or
        ``None`` (XLA's defaults) when ``EEIPU_JAX_FAST_COMPILE`` is ``0`` /
        ``off`` / ``false`` or JAX runs on an accelerator.
    """
    if os.environ.get("EEIPU_JAX_FAST_COMPILE", "").strip().lower() in ("0", "off", "false", "no"):
        return None
    if _on_accelerator():
        return None
    user = os.environ.get("XLA_FLAGS", "")
    options = {k: v for k, v in FAST_CPU_COMPILE.items() if f"--{k}=" not in user and f"--{k} " not in f"{user} "}
    return options or None


def jit(fun, **kwargs):
    """``jax.jit`` with :func:`compiler_options`; same arguments, usable as
    ``functools.partial(jit, static_argnames=...)`` like ``jax.jit``."""
    import jax

    kwargs.setdefault("compiler_options", compiler_options())
    return jax.jit(fun, **kwargs)


def pin_xla_threads() -> dict:
    """Create the JAX CPU backend with a one-thread intra-op pool (see module doc).

    Must run before the first JAX computation of the process (anything that
    creates the backend: ``jax.devices()``, an array, a jitted call); later
    calls return what the first one did.

    Returns:
        What was done: ``{"xla_cpu": int | None, "host_blas_threads": 1 | None,
        "reason": str}``; ``xla_cpu`` is the CPU XLA's threads run on
        (``None``: not pinned, ``reason`` says why), ``host_blas_threads`` is
        1 when host BLAS was limited (``None`` when the user's
        ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` were kept or nothing
        was done).
    """
    global _DONE
    if _DONE is not None:  # already set up in this process: say what was done then
        return dict(_DONE)

    def skipped(reason, blas=None):
        return {"xla_cpu": None, "host_blas_threads": blas, "reason": reason}

    if os.environ.get("EEIPU_JAX_NO_PIN"):
        return skipped("EEIPU_JAX_NO_PIN is set")
    if not hasattr(os, "sched_setaffinity"):
        return skipped("this platform has no sched_setaffinity")
    if _on_accelerator():
        return skipped("JAX runs on an accelerator here")
    from jax._src import xla_bridge

    if getattr(xla_bridge, "_backends", None):
        warnings.warn(
            "pin_xla_threads() was called after the JAX backend started; XLA's CPU thread pool "
            "could not be limited to one thread (batched LAPACK calls may deadlock on "
            "jaxlib < 0.11). Call it before running any JAX computation.",
            RuntimeWarning,
            stacklevel=2,
        )
        return skipped("the JAX backend had already started")
    blas = 1 if limit_host_blas_threads() else None
    mask = os.sched_getaffinity(0)
    if len(mask) <= 1:
        _DONE = skipped("the process runs on one CPU already", blas)
        return dict(_DONE)
    cpus = sorted(mask)
    cpu = cpus[_cpu_index(len(cpus))]
    os.sched_setaffinity(0, {cpu})
    try:
        import jax

        jax.devices()
    finally:
        os.sched_setaffinity(0, mask)
    _DONE = {"xla_cpu": cpu, "host_blas_threads": blas, "reason": "pinned"}
    return dict(_DONE)

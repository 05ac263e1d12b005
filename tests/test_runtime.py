"""Process set-up: importing eeipu_jax changes nothing; eeipu_jax.cpu.pin_xla_threads does what it says."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a process looks like after creating the JAX backend: its environment, CPU
# affinity and thread count (XLA's intra-op pool is created with the backend).
_STATE = """
import json, os
def xla_pool_threads():
    names = []
    for t in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{t}/comm").read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return sum(n.startswith("tf_XLAEigen") for n in names)
def state():
    return dict(env=dict(os.environ), affinity=sorted(os.sched_getaffinity(0)), xla_threads=xla_pool_threads())
"""

_PLAIN = _STATE + """
before = state()
import jax
jax.devices()
print(json.dumps([before, state()]))
"""

_LIBRARY = _STATE + """
before = state()
import eeipu_jax, eeipu_jax.runtime, eeipu_jax.cpu
from eeipu_jax import loop
eeipu_jax.Study  # the engine too
import jax
jax.devices()
print(json.dumps([before, state()]))
"""

_PIN = _STATE + """
import json, os, jax, threadpoolctl
from eeipu_jax.cpu import pin_xla_threads
done = pin_xla_threads()
again = pin_xla_threads()
import scipy.stats  # loads SciPy's own OpenBLAS after the set-up
blas = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
print(json.dumps([done, again, sorted(os.sched_getaffinity(0)), blas, state()["xla_threads"]]))
"""


def _run(code, **env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "EEIPU_JAX_NO_PIN", "EEIPU_JAX_CPU")}
    out = subprocess.run([sys.executable, "-c", code], env=dict(base, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **env),
                         capture_output=True, text=True, check=True, timeout=300, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or not hasattr(os, "sched_getaffinity"),
                    reason="needs /proc and CPU affinity")
def test_importing_the_library_changes_no_environment_affinity_or_thread_pool():
    before, after = _run(_LIBRARY)
    assert after["env"] == before["env"]  # no variable set or changed (OPENBLAS_NUM_THREADS, XLA_FLAGS, ...)
    assert after["affinity"] == before["affinity"]
    plain_before, plain_after = _run(_PLAIN)
    # XLA's CPU pool as after a plain `import jax; jax.devices()`: not resized.
    assert after["xla_threads"] == plain_after["xla_threads"] >= 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and >= 2 CPUs")
def test_pin_xla_threads_pins_xla_and_limits_host_blas_but_leaves_python_threads_free():
    cpus = sorted(os.sched_getaffinity(0))
    done, again, affinity, blas, threads = _run(_PIN, EEIPU_JAX_CPU="1")
    assert done == {"xla_cpu": cpus[1 % len(cpus)], "host_blas_threads": 1, "reason": "pinned"}
    assert again == done  # a second call reports the first
    assert affinity == cpus  # the process keeps every CPU
    assert blas and set(blas) == {1}  # numpy's and scipy's OpenBLAS: one thread each
    _, plain = _run(_PLAIN)
    assert threads == 1 and plain["xla_threads"] == len(cpus)  # one XLA pool thread instead of one per CPU


def test_pin_opt_out_and_user_settings_are_respected():
    done = _run(_PIN, EEIPU_JAX_NO_PIN="1")[0]
    assert done["xla_cpu"] is None and "EEIPU_JAX_NO_PIN" in done["reason"]
    done, _, _, blas, _ = _run(_PIN, OPENBLAS_NUM_THREADS="2")
    assert done["host_blas_threads"] is None
    assert blas and max(blas) == min(2, os.cpu_count())


def test_pin_after_the_backend_started_warns_and_does_nothing():
    code = """
import json, warnings, jax
jax.devices()
from eeipu_jax.cpu import pin_xla_threads
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    done = pin_xla_threads()
print(json.dumps([done, [str(x.message) for x in w]]))
"""
    done, warned = _run(code)
    assert done["xla_cpu"] is None and "already started" in done["reason"]
    assert any("after the JAX backend started" in m for m in warned)


def test_interrupts_deferred_holds_one_ctrl_c_until_the_block_ends_and_restores_the_handler():
    """A Ctrl-C inside the block arrives when it ends (a write is never cut halfway); a second one
    arrives at once (a hung write can be stopped); the handler is Python's again afterwards."""
    import signal

    from eeipu_jax.utils import interrupts_deferred

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a user's process: Python's handler
    try:
        _check_interrupts_deferred(interrupts_deferred)
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_interrupts_deferred(interrupts_deferred):
    import signal

    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            done.append("not reached")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

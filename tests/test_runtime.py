"""The CPU runtime set-up done when eeipu_jax is imported (eeipu_jax/_runtime.py)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = """
import json, os, eeipu_jax, jax, threadpoolctl
import scipy.stats  # loads SciPy's own OpenBLAS after the import of eeipu_jax
blas = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
print(json.dumps([eeipu_jax.XLA_CPU, sorted(os.sched_getaffinity(0)), blas]))
"""


def _probe(**env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "EEIPU_JAX_NO_PIN", "EEIPU_JAX_CPU")}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=dict(base, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **env),
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and >= 2 CPUs")
def test_import_pins_xla_and_limits_host_blas_but_leaves_python_threads_free():
    cpus = sorted(os.sched_getaffinity(0))
    xla_cpu, affinity, blas = _probe(EEIPU_JAX_CPU="1")
    assert xla_cpu == cpus[1 % len(cpus)]
    assert affinity == cpus  # the process keeps every CPU
    assert blas and set(blas) == {1}  # numpy's and scipy's OpenBLAS: one thread each


def test_opt_out_and_user_settings_are_respected():
    assert _probe(EEIPU_JAX_NO_PIN="1")[0] is None
    blas = _probe(OPENBLAS_NUM_THREADS="2")[2]
    assert blas and max(blas) == min(2, os.cpu_count())

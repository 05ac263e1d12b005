"""The Sobol points every quasi-random draw starts from (eeipu_jax.costs.sobol_table),
computed from the direction numbers in eeipu_jax/_sobol_directions.py, against SciPy's
generator (an independent implementation) bit for bit, and without importing it."""

import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import qmc

from eeipu_jax import costs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("d", [1, 2, 3, 5, 10, 21, 64, 256])
@pytest.mark.parametrize("n", [1, 2, 7, 128, 1000, 2048])
def test_the_points_are_scipys_unscrambled_sobol_points(n, d):
    want = qmc.Sobol(d=d, scramble=False).random(n).astype(np.float32) if n & (n - 1) == 0 else None
    if want is None:  # SciPy warns about balance properties for n not a power of 2
        with pytest.warns(UserWarning):
            want = qmc.Sobol(d=d, scramble=False).random(n).astype(np.float32)
    costs.sobol_table.cache_clear()
    got = costs.sobol_table(n, d)
    assert got.dtype == np.float32 and got.shape == (n, d)
    np.testing.assert_array_equal(got, want)


def test_beyond_the_shipped_dimensions_scipy_computes_them():
    costs.sobol_table.cache_clear()
    got = costs.sobol_table(4, 257)
    np.testing.assert_array_equal(got, qmc.Sobol(d=257, scramble=False).random(4).astype(np.float32))


def test_the_points_need_no_scipy_stats():
    """SciPy's statistics package takes about half a second to import; the first BO
    step of a process computes its quasi-random base points without it."""
    code = ("import sys; from eeipu_jax import costs, candidates; costs.sobol_table(512, 10); "
            "costs.sobol_table(256, 3); print('scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"

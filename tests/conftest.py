"""Shared test settings: CPU, XLA's threads on one core (as the scripts set it up),
quiet logs, and a persistent XLA cache shared by the test workers (compiling the
BO step dominates test time on a CPU)."""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault(
    "EEIPU_JAX_XLA_CACHE",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "xla"),
)

from eeipu_jax.cpu import pin_xla_threads  # noqa: E402
from eeipu_jax.utils import enable_compilation_cache  # noqa: E402

pin_xla_threads()  # before any test creates the JAX backend (the scripts opt in the same way)
enable_compilation_cache()


@pytest.fixture(scope="module")
def module_data_dir(tmp_path_factory):
    """A fresh tfds data directory ($EEIPU_JAX_DATA_DIR) shared by one test module."""
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("tfds")
    mp.setenv("EEIPU_JAX_DATA_DIR", str(d))
    yield d
    mp.undo()

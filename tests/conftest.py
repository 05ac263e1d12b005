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


@pytest.fixture(autouse=True)
def _undo_tunes_sigint_handler():
    """Ray Tune's ``Tuner.fit()`` leaves its own SIGINT handler installed after it returns (it
    only sets a stop flag), so a later test of Ctrl-C in the same worker would see no
    ``KeyboardInterrupt``. Put Python's back after a test that ran Tune; any other handler a
    test leaves behind stays, so a leak of our own still shows."""
    import signal
    import threading

    yield
    if threading.current_thread() is threading.main_thread():
        h = signal.getsignal(signal.SIGINT)
        if "signal_interrupt_tune_run" in getattr(h, "__qualname__", ""):
            signal.signal(signal.SIGINT, signal.default_int_handler)

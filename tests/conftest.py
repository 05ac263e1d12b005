"""Shared test settings: CPU, XLA's threads on one core (as the scripts set it up),
quiet logs, a persistent XLA cache shared by the test workers, and the library's
fast CPU compile options for every program of the test processes.

Compiling dominates the suite's time on a CPU (about two thirds of it: the BO
step for each test's configuration, and the pipelines' own training steps,
which outside the tests keep XLA's defaults as user code does). ``XLA_FLAGS``
gets ``eeipu_jax.cpu.compiler_options()`` (the options the user's
``XLA_FLAGS`` does not name), so the pipelines' programs in tests, and in the Ray
workers and command-line runs the tests start, compile like the library's.
Tests that need XLA's defaults pass ``eeipu_jax.cpu.XLA_CPU_DEFAULTS`` as
``compiler_options`` (explicit options override the flags) or set
``XLA_FLAGS`` for a subprocess of their own."""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault(
    "EEIPU_JAX_XLA_CACHE",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "xla"),
)

from eeipu_jax.cpu import compiler_options, pin_xla_threads  # noqa: E402

# The library's options that XLA_FLAGS does not name already (none when the user
# sets EEIPU_JAX_FAST_COMPILE=0: then the tests run under XLA's defaults too).
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")] + [f"--{k}={str(v).lower()}" for k, v in (compiler_options() or {}).items()]
).strip()
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

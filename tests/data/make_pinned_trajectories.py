"""Write tests/data/pinned_trajectories.npz: the runs of tests/test_pinned.py made
with the code as it stands (stored in the file: its commit, with "-dirty" when
recorded from uncommitted changes to it, the library's compile options and jaxlib's
release: the test skips under other ones, whose XLA rounds differently). Record anew only when a change is meant to move the numbers
(say why in the commit); a restructuring must pass tests/test_pinned.py as it is.

Run from the repository root: python tests/data/make_pinned_trajectories.py
"""

import json
import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from eeipu_jax.cpu import compiler_options, pin_xla_threads  # noqa: E402

pin_xla_threads()

import jaxlib.version  # noqa: E402
import numpy as np  # noqa: E402
import test_pinned as pinned  # noqa: E402


def main():
    arrays = {}
    for name in pinned.RUNS:
        arrays |= pinned.python_run(name)
        print("python", name, flush=True)
    for m in pinned.JITTED:
        arrays |= pinned.jitted_runs(m)
        print("jitted", m, flush=True)
    for m in pinned.ASYNC:
        arrays |= pinned.async_run(m)
        print("async", m, flush=True)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    arrays["commit"] = np.asarray(commit)
    arrays["compiler_options"] = np.asarray(json.dumps(compiler_options()))
    arrays["jaxlib"] = np.asarray(jaxlib.version.__version__)
    np.savez_compressed(pinned.PATH, **arrays)
    print("wrote", pinned.PATH)


if __name__ == "__main__":
    main()

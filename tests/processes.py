"""Helpers for tests that run a study in a child process and kill it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_for_records(proc: subprocess.Popen, trials_path: Path, n: int, timeout: float, what: str,
                     poll: float = 0.02) -> None:
    """Wait until ``trials_path`` holds ``n`` records while ``proc`` is alive.

    Fails the test with the child's stderr if it exits first, or after ``timeout``
    seconds (a guard against a hang, not a timing check).
    """
    deadline = time.monotonic() + timeout
    while not (trials_path.exists() and trials_path.read_bytes().count(b"\n") >= n):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, f"{what} did not record its trials in time"
        time.sleep(poll)

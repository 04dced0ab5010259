"""Fault hooks the SIGKILL campaigns (`stream_crash.py`, `train_crash.py`) install through
`samplers.rundir.set_fault_hook`: count the file writes of an uninterrupted run, or kill this
process inside the k-th write at a given point of the atomic-write protocol."""

from __future__ import annotations

import os
import signal

from samplers import rundir


def count_writes() -> list[int]:
    """Install a hook counting started writes; the count is ``returned_list[0]``."""
    writes = [0]

    def count(point, path):
        writes[0] += point == "open"

    rundir.set_fault_hook(count)
    return writes


def kill_in_write(point: str, kth: int) -> None:
    """Install a hook that SIGKILLs this process when the ``kth`` write reaches ``point``."""
    calls = [0]

    def hook(p, path):
        if p == point:
            calls[0] += 1
            if calls[0] == kth:
                os.kill(os.getpid(), signal.SIGKILL)

    rundir.set_fault_hook(hook)

"""How many CPUs this process may use, torch's intra-op thread pool sized from it, and the
names the OS shows for the service's own threads.

Containers limit CPU by cgroup quota, not by the CPUs the kernel shows: a pod with a limit of
2 on a 64-core node sees 64 in ``os.cpu_count()``, and 64 torch threads there thrash.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may actually use: affinity mask and cgroup v2/v1 quota, whichever is lower."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def configure_torch_threads(requested: int) -> int:
    """Size torch's intra-op pool (``requested`` when > 0); returns the count.

    Auto leaves one usable CPU to the event loop (HTTP parsing, JSON), which runs alongside
    the model thread: on a 2-CPU box two intra-op threads plus the loop oversubscribe the
    CPUs and a single short request got ~3x slower in our measurements.
    """
    import torch  # here, not at the top: the offline scorer's reader counts CPUs without torch

    threads = requested or max(1, available_cpus() - 1)
    torch.set_num_threads(threads)
    return threads


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` (at most 15 bytes) where the OS shows threads (``top -H``,
    ``/proc/*/task/*/comm``, profilers): Python's thread names stay inside the interpreter.
    Linux only; elsewhere it does nothing."""
    try:
        _libc().prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass

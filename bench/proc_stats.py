"""CPU time of a server under test, read from /proc (Linux): its own and its model process's.

Since the model runs in a child process (service/model_process.py) a server's CPU cost per
request is the parent's plus the child's; reading only the parent would undercount it by
the whole forward pass.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(path: Path) -> list[str]:
    return path.read_text().rsplit(")", 1)[1].split()


def child_pids(pid: int) -> list[int]:
    """Live children of every thread of ``pid`` (a model process restarted by a worker thread too)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the thread ended, or the kernel lacks the file
            continue
    return found


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid``, its live children and the children it has reaped."""
    fields = _stat(Path(f"/proc/{pid}/stat"))
    total = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for child in child_pids(pid):
        try:
            child_fields = _stat(Path(f"/proc/{child}/stat"))
        except OSError:  # exited in between: counted in cutime once reaped
            continue
        total += int(child_fields[11]) + int(child_fields[12])
    return total / TICKS


def cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of the whole server (:func:`tree_cpu_s`) and of its main (event-loop) thread."""
    loop = _stat(Path(f"/proc/{pid}/task/{pid}/stat"))
    return tree_cpu_s(pid), (int(loop[11]) + int(loop[12])) / TICKS


def rss_kb(pid: int) -> int:
    """Resident memory of one process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def tree_rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` and its live children (the model process), in KiB."""
    total = rss_kb(pid)
    for child in child_pids(pid):
        try:
            total += rss_kb(child)
        except OSError:
            continue
    return total

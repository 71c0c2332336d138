"""A server's CPU time includes its model process, running or reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.proc_stats import cpu_s, rss_kb, tree_cpu_s, tree_rss_kb

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
# A parent that idles while its child burns 0.6 s of CPU; "reaped": it waits for the child first.
PARENT = """
import subprocess, sys, time
burn, state = sys.argv[1], sys.argv[2]
if state == "live":
    burn += "print('done', flush=True)\\ntime.sleep(60)\\n"
child = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE)
child.stdout.readline() if state == "live" else child.wait()
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("state", ["live", "reaped"])
def test_a_childs_cpu_counts_for_its_parent(state: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, BURN, state], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == b"ready\n"
        total, loop = cpu_s(parent.pid)
        assert total >= 0.55, f"{total} s: the child's 0.6 s is missing"
        assert loop < total - 0.5  # the main thread's own time only
        assert abs(tree_cpu_s(parent.pid) - total) < 0.05
        if state == "live":  # a second interpreter's memory is counted too
            assert tree_rss_kb(parent.pid) > 1.5 * rss_kb(parent.pid)
        else:
            assert tree_rss_kb(parent.pid) == pytest.approx(rss_kb(parent.pid), rel=0.05)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the child too
        parent.wait()

"""A rolling restart behind a real load balancer loses nothing (the contract Kubernetes relies on).

Three ``python -m service`` replicas on 127.0.0.1 behind HAProxy (Debian's package) running
deploy/haproxy/haproxy.cfg unchanged, under steady open-loop load. Each replica in turn gets
SIGTERM, must exit 0, and is started again on its port; the next one goes only when HAProxy
reports the new one UP (two passing /health/ready checks). Every request of the run must be
answered 200, at least 5,000 of them while the roll was going on, and the p99 latency during
the roll may be at most 3x the p99 before it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.loadgen import percentile
from tests.service.live_server import LiveServer, free_port

pytestmark = pytest.mark.resilience

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
ARTIFACTS = ROOT / "artifacts"
REPLICAS = 3
RATE = 300.0  # requests/s: steady, well below what 3 replicas serve on 2 CPUs, so latency reflects the roll
BEFORE_S = 10.0
MIN_DURING_ROLL = 5000
SERVER_ARGS = ("--torch-threads", "1", "--no-access-log", "--log-level", "warning")


def start_replica(port: int, log_dir: Path) -> LiveServer:
    log_path = log_dir / f"replica-{port}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--artifacts-dir", str(ARTIFACTS), "--port", str(port), *SERVER_ARGS],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(process, port, log_path)
    server.wait_ready(timeout=120)
    return server


def server_states(stats_socket: Path) -> dict[str, str]:
    """HAProxy's view of each backend server: ``{"replica1": "UP", ...}`` (stats socket, ``show stat``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == "replicas" and r["svname"].startswith("replica")}


def wait_state(stats_socket: Path, name: str, state: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := server_states(stats_socket).get(name)) != state:
        assert time.monotonic() < deadline, f"HAProxy never saw {name} {state} (last: {seen})"
        time.sleep(0.05)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:  # a failed test must leave nothing running
        if process.poll() is None:
            process.kill()
            process.wait()


def test_rolling_restart_behind_haproxy_fails_no_request(
    bodies_file: Path, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("haproxy not installed (.ci/run installs it; apt-get install haproxy)")
        pytest.skip("haproxy not installed (apt-get install haproxy)")
    ports = [free_port() for _ in range(REPLICAS)]
    lb_port = free_port()
    stats_socket = Path(tempfile.mkdtemp(prefix="hc-lb-")) / "stats.sock"  # short path: AF_UNIX limit
    replicas = []
    start_s = []
    for port in ports:  # one at a time: the slowest start sizes the load's duration
        began = time.monotonic()
        replicas.append(start_replica(port, tmp_path))
        processes.append(replicas[-1].process)
        start_s.append(time.monotonic() - began)

    env = {**os.environ, "HC_LB_BIND": f"127.0.0.1:{lb_port}", "HC_LB_STATS_SOCKET": str(stats_socket)}
    env |= {f"HC_REPLICA_{i + 1}": f"127.0.0.1:{port}" for i, port in enumerate(ports)}
    lb_log = (tmp_path / "haproxy.log").open("wb")
    balancer = subprocess.Popen([haproxy, "-db", "-f", str(CONFIG)], env=env, stdout=lb_log, stderr=subprocess.STDOUT)
    processes.append(balancer)
    deadline = time.monotonic() + 30
    while not stats_socket.exists() or set(server_states(stats_socket).values()) != {"UP"}:
        assert balancer.poll() is None, (tmp_path / "haproxy.log").read_text()
        assert time.monotonic() < deadline, "HAProxy never saw all replicas UP"
        time.sleep(0.1)

    # The roll takes about one start plus a drain per replica; the load runs past its end.
    roll_budget = max(REPLICAS * (max(start_s) + 5) * 2, 1.1 * MIN_DURING_ROLL / RATE + 2 * (max(start_s) + 5))
    duration = BEFORE_S + roll_budget
    load = subprocess.Popen(
        [sys.executable, "-m", "tests.resilience.paced_load", "--port", str(lb_port), "--rate", str(RATE),
         "--duration", str(duration), "--bodies", str(bodies_file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    processes.append(load)  # type: ignore[arg-type]
    time.sleep(BEFORE_S)

    # One full round at least, and more rounds (replica by replica) until the roll has lasted
    # long enough to carry MIN_DURING_ROLL requests: a fast machine rolls three replicas sooner.
    roll_start = time.time()
    exit_codes = []
    restarted = 0
    while restarted < REPLICAS or time.time() - roll_start < 1.1 * MIN_DURING_ROLL / RATE:
        i = restarted % REPLICAS
        old = replicas[i]
        old.process.send_signal(signal.SIGTERM)
        exit_codes.append(old.process.wait(timeout=60))
        new = start_replica(old.port, tmp_path)
        processes.append(new.process)
        replicas[i] = new
        wait_state(stats_socket, f"replica{i + 1}", "UP")
        restarted += 1
    roll_end = time.time()

    out, err = load.communicate(timeout=duration + 120)
    assert load.returncode == 0, err.decode()[-3000:]
    results = json.loads(out)["requests"]
    first_due = results[0][0]
    assert roll_end < first_due + duration, f"the roll ({roll_end - roll_start:.1f} s) outlasted the load"

    failed = [r for r in results if r[2] != "200"]
    before = [r[1] for r in results if first_due + 2 <= r[0] < roll_start]  # after the first 2 s of warm-up
    during = [r[1] for r in results if roll_start <= r[0] <= roll_end]
    p99_before, p99_during = percentile(before, 99) * 1000, percentile(during, 99) * 1000
    summary = (
        f"{len(results)} requests at {RATE:.0f}/s, {len(during)} during a {roll_end - roll_start:.1f} s roll; "
        f"failed {len(failed)}; p99 before {p99_before:.1f} ms, during {p99_during:.1f} ms; "
        f"{restarted} restarts; replica starts {', '.join(f'{s:.1f}' for s in start_s)} s"
    )
    print(summary)
    assert exit_codes == [0] * restarted, exit_codes
    assert not failed, f"{summary}; first failures: {failed[:5]}"
    assert len(during) >= MIN_DURING_ROLL, summary
    assert p99_during <= 3 * p99_before, summary

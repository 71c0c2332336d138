"""Hostile-client benchmark: what cheap attacks cost the real server, one source tree beside another.

Each attack runs against a fresh ``python -m service`` subprocess started from a source tree
(``--root``; give two to compare, e.g. a checkout of the old commit and this one) while a
probe measures what a normal client sees. Reported per attack and tree: server RSS (idle,
peak, after), the attack's outcome, and the probe's p99.

    python -m bench.hostile_bench --root /tmp/before --root .        # an older checkout beside this one
    python -m bench.hostile_bench --root . --only amplification        # one attack

The attack clients are also used by ``tests/resilience/test_hostile_clients.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import percentile

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PREDICT_BODY = b'{"text": "Stocks rally as oil prices fall"}'
AMPLIFY_ITEMS = 1_500_000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (less sensitive to a busy machine than req/s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def rss(self) -> float:
        return rss_mb(self.process.pid)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(root: Path, artifacts: Path, *args: str, ready_s: float = 90.0) -> Iterator[Server]:
    """``python -m service`` run from ``root`` (its own code), until ready; SIGTERM on exit."""
    port = _free_port()
    log = tempfile.NamedTemporaryFile(prefix="hc-hostile-", suffix=".log", delete=False)  # noqa: SIM115
    cmd = [sys.executable, "-m", "service", "--artifacts-dir", str(artifacts), "--port", str(port), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = Server(proc, port, Path(log.name))
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}: {server.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if request(port, "GET", "/health/ready", timeout=1.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("server not ready")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 10.0
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


class Sampler:
    """Background RSS peak and a normal client's latencies (one keep-alive connection)."""

    def __init__(self, server: Server, path: str = "/predict", interval_s: float = 0.01) -> None:
        self.server, self.path, self.interval_s = server, path, interval_s
        self.peak = server.rss()
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._rss, daemon=True),
            threading.Thread(target=self._probe, daemon=True),
        ]

    def __enter__(self) -> Sampler:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _rss(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.server.rss())

    def _probe(self) -> None:
        method, body = ("POST", PREDICT_BODY) if self.path == "/predict" else ("GET", None)
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, self.server.port, timeout=30)
                conn.request(method, self.path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok, conn = False, None
            elapsed = time.perf_counter() - started
            if ok:
                self.latencies.append(elapsed)
            else:
                self.failures += 1
                # a request that never came back counts as slow as it was
                self.latencies.append(elapsed)
            self._stop.wait(self.interval_s)

    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000


# -- attacks ---------------------------------------------------------------------------------
def amplification_body(items: int = AMPLIFY_ITEMS) -> bytes:
    return b'{"texts": [' + b",".join([b"1"] * items) + b"]}"


async def _raw_exchange(port: int, payload: bytes, timeout: float) -> tuple[int, int, float]:
    """Send ``payload``, read one whole response: (status, body bytes, seconds); status 0 = closed."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(payload)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await asyncio.wait_for(reader.readexactly(length), timeout)
        return status, len(body), time.perf_counter() - started
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        return 0, 0, time.perf_counter() - started
    finally:
        writer.close()


def post_head(length: int, path: str = "/predict") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    return head.encode()


def post_bytes(body: bytes, path: str = "/predict") -> bytes:
    return post_head(len(body), path) + body


def attack_amplification(port: int, concurrent: int, payload: bytes, timeout: float = 120.0) -> dict[str, Any]:
    async def run() -> list[tuple[int, int, float]]:
        return await asyncio.gather(*(_raw_exchange(port, payload, timeout) for _ in range(concurrent)))

    results = asyncio.run(run())
    return {
        "statuses": sorted({r[0] for r in results}),
        "max_body_bytes": max(r[1] for r in results),
        "max_seconds": round(max(r[2] for r in results), 2),
    }


def stalled_prefix(kind: str) -> bytes:
    """What a stalled connection sends before it stops."""
    if kind == "idle":
        return b""
    if kind == "slowloris":
        return b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: a"
    if kind == "dripbody":  # a complete head, then a body that drips in a byte at a time
        return post_head(1000) + b'{"text": "'
    if kind == "body":  # most of the largest body the old server accepted (3.1 MB), then nothing
        length = 3_000_000
        body = b'{"texts": ["' + b"a" * (length - 13) + b'"]'  # 2 bytes short of Content-Length
        return post_head(len(body) + 2) + body
    if kind == "bigbody":  # a complete 3 MB body (one over-long text: 422), then wait for the answer
        text = b"a" * 3_000_000
        return post_bytes(b'{"text": "' + text + b'"}')
    raise ValueError(kind)


async def hold_stalled(port: int, kind: str, count: int, hold_s: float, drip_s: float = 1.0) -> dict[str, Any]:
    """Open ``count`` connections that stall (slowloris ones send a byte every ``drip_s``); hold
    them ``hold_s`` seconds, then close; return how many the server closed and what it said."""
    prefix = stalled_prefix(kind)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    refused = 0
    for _ in range(count):
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            refused += 1
            continue
        if prefix:
            writer.write(prefix)
        conns.append((reader, writer))
    closed_by_server: dict[str, int] = {}
    first_close: list[float] = []
    started = time.monotonic()

    async def watch(reader: asyncio.StreamReader) -> None:
        try:
            data = await reader.read(4096)
        except ConnectionError:
            data = b""
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
        closed_by_server[status] = closed_by_server.get(status, 0) + 1
        first_close.append(time.monotonic() - started)

    watchers = [asyncio.ensure_future(watch(r)) for r, _ in conns]

    async def drip() -> None:
        while True:
            await asyncio.sleep(drip_s)
            for _, w in conns:
                if not w.is_closing():
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        w.write(b"a")

    dripper = asyncio.ensure_future(drip()) if kind in ("slowloris", "dripbody") else None
    await asyncio.sleep(hold_s)
    if dripper is not None:
        dripper.cancel()
    for w in watchers:
        w.cancel()
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.1)
    return {
        "opened": len(conns),
        "refused": refused,
        "closed_by_server": closed_by_server,
        "first_close_s": round(min(first_close), 1) if first_close else None,
    }


def attack_stalled(server: Server, kind: str, count: int, hold_s: float, settle_s: float = 5.0) -> dict[str, Any]:
    idle = server.rss()
    with Sampler(server) as sampler:
        outcome = asyncio.run(hold_stalled(server.port, kind, count, hold_s))
        time.sleep(settle_s)
    return {
        **outcome,
        "rss_idle_mb": round(idle),
        "rss_peak_mb": round(sampler.peak),
        "rss_after_mb": round(server.rss()),
        "predict_p99_ms": round(sampler.p99_ms(), 1),
        "predict_failures": sampler.failures,
    }


async def stream_endless(port: int, kind: str, duration_s: float, chunk: int = 4096) -> dict[str, Any]:
    """Stream a never-ending header value (or URL) for ``duration_s``, reconnecting when cut off."""
    start = b"GET /health/live?q=" if kind == "url" else b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Endless: "
    filler = b"a" * chunk
    outcomes: dict[str, int] = {}
    most_sent = 0
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection(HOST, port)
        sent = 0
        writer.write(start)
        status = "open at end"
        try:
            while time.monotonic() < deadline:
                writer.write(filler)
                sent += chunk
                await asyncio.wait_for(writer.drain(), max(0.01, deadline - time.monotonic()))
                if reader.at_eof() or writer.is_closing():
                    break
                await asyncio.sleep(0)
                if reader._buffer:  # type: ignore[attr-defined]  # the server answered: stop
                    break
            data = await asyncio.wait_for(reader.read(4096), 0.5) if time.monotonic() < deadline else b""
            if data.startswith(b"HTTP/"):
                status = data.split(b" ", 2)[1].decode()
            elif time.monotonic() < deadline:
                status = "closed"
        except (ConnectionError, TimeoutError):
            status = "closed" if time.monotonic() < deadline else "open at end"
        finally:
            writer.close()
        outcomes[status] = outcomes.get(status, 0) + 1
        most_sent = max(most_sent, sent)
    return {"outcomes": outcomes, "most_bytes_sent_on_one_connection": most_sent}


def attack_endless(server: Server, kind: str, duration_s: float) -> dict[str, Any]:
    idle = server.rss()
    with Sampler(server) as sampler:
        outcome = asyncio.run(stream_endless(server.port, kind, duration_s))
    return {
        **outcome,
        "rss_idle_mb": round(idle),
        "rss_peak_mb": round(sampler.peak),
        "predict_p50_ms": round(percentile(sampler.latencies, 50) * 1000, 1),
        "predict_p99_ms": round(sampler.p99_ms(), 1),
    }


def measure_amplification(server: Server, concurrent: int) -> dict[str, Any]:
    idle = server.rss()
    payload = post_bytes(amplification_body())  # built before the probe starts: it holds the GIL
    with Sampler(server, path="/health/live") as sampler:
        time.sleep(0.5)
        outcome = attack_amplification(server.port, concurrent, payload)
        time.sleep(0.5)
    return {
        **outcome,
        "rss_idle_mb": round(idle),
        "rss_peak_mb": round(sampler.peak),
        "live_p99_ms": round(sampler.p99_ms(), 1),
    }


def attack_drip(server: Server, kind: str, count: int, hold_s: float, drip_s: float = 9.0) -> dict[str, Any]:
    """``count`` connections dripping a byte every ``drip_s`` (head or body) while a client sends
    one request after another, each on a new connection: the longest it waited, and RSS."""
    idle = server.rss()
    waits: list[float] = []
    failures = 0
    stop = threading.Event()

    def client() -> None:
        nonlocal failures
        while not stop.is_set():
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
                conn.request("POST", "/predict", body=PREDICT_BODY, headers={"Content-Type": "application/json"})
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            waits.append(time.perf_counter() - started)
            failures += not ok
            time.sleep(0.05)

    thread = threading.Thread(target=client, daemon=True)
    with Sampler(server) as sampler:
        thread.start()
        outcome = asyncio.run(hold_stalled(server.port, kind, count, hold_s, drip_s=drip_s))
        stop.set()
        thread.join(60)
    return {
        **outcome,
        "client_requests": len(waits),
        "client_failures": failures,
        "client_max_wait_s": round(max(waits), 3) if waits else None,
        "rss_idle_mb": round(idle),
        "rss_peak_mb": round(sampler.peak),
    }


ATTACKS: dict[str, Callable[[Server, argparse.Namespace], dict[str, Any]]] = {
    "drip_head": lambda s, a: attack_drip(s, "slowloris", a.connections, a.hold),
    "drip_body": lambda s, a: attack_drip(s, "dripbody", a.connections, a.hold),
    "amplification": lambda s, a: measure_amplification(s, 1),
    "amplification_x4": lambda s, a: measure_amplification(s, 4),
    "stalled_idle": lambda s, a: attack_stalled(s, "idle", a.connections, a.hold),
    "stalled_slowloris": lambda s, a: attack_stalled(s, "slowloris", a.connections, a.hold),
    "stalled_body": lambda s, a: attack_stalled(s, "body", a.connections, a.hold),
    "big_bodies": lambda s, a: attack_stalled(s, "bigbody", a.connections, a.hold),
    "endless_header": lambda s, a: attack_endless(s, "header", a.endless),
    "endless_url": lambda s, a: attack_endless(s, "url", a.endless),
}


def compare_throughput(roots: list[Path], artifacts: Path, rounds: int, duration_s: float) -> dict[str, Any]:
    """/predict req/s at 64 clients for each tree, the trees' servers loaded in turn (A B A B ...)."""
    from bench.loadgen import run_load, write_bodies

    bodies = write_bodies([{"text": "Stocks rally as oil prices fall"}], Path(tempfile.mkdtemp()) / "one.jsonl")
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(serve(root.resolve(), artifacts.resolve())) for root in roots]
        rps: dict[str, list[float]] = {str(root): [] for root in roots}
        p99: dict[str, list[float]] = {str(root): [] for root in roots}
        cpu: dict[str, list[float]] = {str(root): [] for root in roots}
        for _ in range(rounds):
            for root, server in zip(roots, servers, strict=True):
                run_load(server.port, "/predict", bodies, 64, 1.0)  # warm-up
                cpu_before = cpu_seconds(server.process.pid)
                result = run_load(server.port, "/predict", bodies, 64, duration_s)
                cpu[str(root)].append((cpu_seconds(server.process.pid) - cpu_before) / result["requests"] * 1000)
                rps[str(root)].append(result["rps"])
                p99[str(root)].append(result["latency_ms"]["p99"])
    out: dict[str, Any] = {}
    for root in roots:
        key = str(root)
        out[key] = {
            "rps_per_round": [round(x) for x in rps[key]],
            "rps_median": round(statistics.median(rps[key])),
            "p99_ms": [round(x, 1) for x in p99[key]],
            "server_cpu_ms_per_request": [round(x, 3) for x in cpu[key]],
            "server_cpu_ms_per_request_median": round(statistics.median(cpu[key]), 3),
        }
    return out


LABELS = {
    "amplification": '`{"texts": [1, 1, ...]}`, 1.5M items (3 MB), 1 request',
    "amplification_x4": "the same, 4 at once",
    "stalled_idle": "1,000 connections that send nothing (held 15 s)",
    "stalled_slowloris": "1,000 slowloris connections (a header byte per second, 15 s)",
    "stalled_body": "1,000 connections that send 3 MB of a body and stall (15 s)",
    "big_bodies": "1,000 complete 3 MB bodies at once (no target)",
    "endless_header": "one client streaming an endless header value (10 s)",
    "endless_url": "one client streaming an endless URL (10 s)",
}


def _cell(name: str, r: dict[str, Any]) -> str:
    """One result in words: what the attacker got, memory, and what a normal client saw."""
    if name.startswith("amplification"):
        statuses = "/".join(str(x) if x else "no answer" for x in r["statuses"])
        return (
            f"{statuses}, body {r['max_body_bytes']:,} B, {r['max_seconds']} s; "
            f"RSS +{r['rss_peak_mb'] - r['rss_idle_mb']:,} MB; live p99 {r['live_p99_ms']:,} ms"
        )
    if name.startswith("endless"):
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(r["outcomes"].items()))
        return (
            f"{outcomes}; ≤ {r['most_bytes_sent_on_one_connection'] / 2**20:.1f} MiB sent on one connection; "
            f"RSS +{r['rss_peak_mb'] - r['rss_idle_mb']} MB; /predict p50 {r['predict_p50_ms']} ms, "
            f"p99 {r['predict_p99_ms']:,} ms"
        )
    closed = ", ".join(f"{k}: {v}" for k, v in sorted(r["closed_by_server"].items())) or "none"
    first = f" (first after {r['first_close_s']} s)" if r["first_close_s"] is not None else ""
    return (
        f"closed by server: {closed}{first}; RSS idle {r['rss_idle_mb']} → peak {r['rss_peak_mb']:,} → "
        f"after {r['rss_after_mb']:,} MB; /predict p99 {r['predict_p99_ms']:,} ms"
    )


def markdown(results: dict[str, Any], before: str, after: str) -> str:
    lines = [f"| Attack | Before (`{before}`) | Now (`{after}`) |", "|---|---|---|"]
    for name, label in LABELS.items():
        if name in results and before in results[name] and after in results[name]:
            lines.append(f"| {label} | {_cell(name, results[name][before])} | {_cell(name, results[name][after])} |")
    tp = results.get("throughput_64")
    if tp and before in tp and after in tp:
        b, a = tp[before], tp[after]
        lines.append(
            f"| /predict at 64 clients, rounds alternating between the two servers | "
            f"{b['rps_median']:,} req/s (rounds {b['rps_per_round']}); "
            f"{b['server_cpu_ms_per_request_median']} CPU ms/request | "
            f"{a['rps_median']:,} req/s (rounds {a['rps_per_round']}); "
            f"{a['server_cpu_ms_per_request_median']} CPU ms/request |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", action="append", type=Path, help="source tree to serve (repeat to compare)")
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--only", action="append", choices=sorted(ATTACKS), help="attacks to run (default: all)")
    parser.add_argument("--connections", type=int, default=1000, help="stalled connections per attack")
    parser.add_argument("--hold", type=float, default=15.0, help="seconds the stalled connections are held")
    parser.add_argument("--endless", type=float, default=10.0, help="seconds of endless header / URL")
    parser.add_argument("--throughput-rounds", type=int, default=0, help="also compare /predict req/s at 64 clients")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "hostile_bench.json")
    args = parser.parse_args(argv)
    roots = args.root or [ROOT]
    results: dict[str, dict[str, Any]] = {}
    for name in args.only if args.only is not None else ([] if args.throughput_rounds else list(ATTACKS)):
        for root in roots:
            with serve(root.resolve(), args.artifacts_dir.resolve()) as server:
                time.sleep(1.0)
                result = ATTACKS[name](server, args)
                result["alive_after"] = request(server.port, "GET", "/health/live")[0] == 200
            results.setdefault(name, {})[str(root)] = result
            print(json.dumps({"attack": name, "root": str(root), **result}), flush=True)
    if args.throughput_rounds:
        results["throughput_64"] = compare_throughput(roots, args.artifacts_dir, args.throughput_rounds, 5.0)
        print(json.dumps({"throughput_64": results["throughput_64"]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if len(roots) == 2:
        print(markdown(results, str(roots[0]), str(roots[1])))
    return results


if __name__ == "__main__":
    main()

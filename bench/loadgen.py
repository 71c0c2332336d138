"""Closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending back to back, for a fixed time.

Two engines with one result format (see :func:`summarize`):

- ``wrk`` (preferred; Debian ``apt-get install wrk``): C, epoll, a Lua script that cycles the
  request bodies and counts status codes and 503s without ``Retry-After``.
- ``async``: raw asyncio streams writing pre-encoded requests, optionally over several worker
  processes. Records every latency; used when wrk is missing and by the resilience tests.

Either way the generator runs as its own process (wrk, or ``python -m bench.loadgen``), so it
does not share an interpreter with the benchmark driver. Traffic goes to 127.0.0.1 only.

    python -m bench.loadgen --port 8000 --path /predict --bodies bodies.jsonl -c 64 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ERROR_KINDS = ("connect", "read", "write", "timeout")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (need not be sorted); NaN when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(
    latencies_s: Sequence[float],
    statuses: Counter[int] | dict[int, int],
    errors: Counter[str] | dict[str, int],
    duration_s: float,
    *,
    missing_retry_after: int = 0,
) -> dict[str, Any]:
    """The common result: throughput counts every answered request (any status); latency in ms."""
    answered = sum(statuses.values())
    ms = [x * 1000 for x in latencies_s]
    return {
        "requests": answered,
        "duration_s": round(duration_s, 3),
        "rps": answered / duration_s if duration_s > 0 else 0.0,
        "latency_ms": {
            "p50": percentile(ms, 50),
            "p95": percentile(ms, 95),
            "p99": percentile(ms, 99),
            "max": max(ms) if ms else math.nan,
            "mean": sum(ms) / len(ms) if ms else math.nan,
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": {kind: int(errors.get(kind, 0)) for kind in ERROR_KINDS},
        "missing_retry_after": missing_retry_after,
    }


# --------------------------------------------------------------------------- requests


def encode_request(method: str, path: str, body: bytes | None, port: int) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: hc-loadgen\r\n"
    if body is None:
        return (head + "\r\n").encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def read_bodies(path: str | os.PathLike[str] | None) -> list[bytes] | None:
    """One JSON body per line; ``None`` (no file) means GET without a body."""
    if path is None:
        return None
    bodies = [line.strip().encode() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not bodies:
        raise ValueError(f"{path}: no request bodies")
    return bodies


def write_bodies(bodies: Iterable[Any], path: str | os.PathLike[str]) -> Path:
    """Write JSON-serialisable bodies one per line (the format both engines read)."""
    target = Path(path)
    with target.open("w", encoding="utf-8") as fh:
        for body in bodies:
            fh.write(json.dumps(body, ensure_ascii=True) + "\n")
    return target


def single_headline_bodies(titles: Sequence[str], path: str | os.PathLike[str], count: int = 2000) -> Path:
    """``{"text": ...}`` bodies for ``count`` titles drawn with a fixed seed: every A/B arm
    and every run sends the same requests."""
    sample = random.Random(0).sample(list(titles), min(len(titles), count))
    return write_bodies(({"text": t} for t in sample), path)


def text_groups(titles: Sequence[str], size: int, most: int = 40) -> list[list[str]]:
    """Consecutive full groups of ``size`` titles (at most ``most``): the bodies of a many-texts point."""
    return [list(titles[i : i + size]) for i in range(0, len(titles) - size + 1, size)][:most]


# --------------------------------------------------------------------------- async engine


@dataclass
class Recorder:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    missing_retry_after: int = 0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers


async def _connection(
    port: int, requests: list[bytes], offset: int, deadline: float, timeout: float, rec: Recorder
) -> None:
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    i = offset
    try:
        while time.monotonic() < deadline:
            if writer is None:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
                except (OSError, TimeoutError):
                    rec.errors["connect"] += 1
                    await asyncio.sleep(0.01)  # a refused connect returns at once: do not spin
                    continue
            assert reader is not None
            request = requests[i % len(requests)]
            i += 1
            started = time.perf_counter()
            try:
                writer.write(request)
                await writer.drain()
            except OSError:
                rec.errors["write"] += 1
                writer.close()
                writer = None
                continue
            try:
                status, headers = await asyncio.wait_for(_read_response(reader), timeout)
            except TimeoutError:
                rec.errors["timeout"] += 1
                writer.close()
                writer = None
                continue
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
                rec.errors["read"] += 1
                writer.close()
                writer = None
                continue
            rec.latencies.append(time.perf_counter() - started)
            rec.statuses[status] += 1
            if status == 503 and b"retry-after" not in headers:
                rec.missing_retry_after += 1
            if headers.get(b"connection", b"").lower() == b"close":
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


async def run_async(
    port: int,
    path: str,
    bodies: list[bytes] | None,
    concurrency: int,
    duration_s: float,
    *,
    timeout_s: float = 30.0,
    first_connection: int = 0,
) -> tuple[Recorder, float]:
    """``concurrency`` connections for ``duration_s``; returns the recorder and the elapsed time."""
    if bodies is None:
        requests = [encode_request("GET", path, None, port)]
    else:
        requests = [encode_request("POST", path, body, port) for body in bodies]
    rec = Recorder()
    started = time.monotonic()
    deadline = started + duration_s
    # Spread the connections over the bodies so they do not all send the same text.
    step = max(1, len(requests) // max(1, concurrency))
    await asyncio.gather(
        *(
            _connection(port, requests, (first_connection + c) * step, deadline, timeout_s, rec)
            for c in range(concurrency)
        )
    )
    return rec, time.monotonic() - started


def _worker(args: tuple[int, str, list[bytes] | None, int, float, float, int], queue: Any) -> None:
    port, path, bodies, concurrency, duration_s, timeout_s, first = args
    rec, elapsed = asyncio.run(
        run_async(port, path, bodies, concurrency, duration_s, timeout_s=timeout_s, first_connection=first)
    )
    queue.put((rec.latencies, dict(rec.statuses), dict(rec.errors), rec.missing_retry_after, elapsed))


def run_async_processes(
    port: int,
    path: str,
    bodies: list[bytes] | None,
    concurrency: int,
    duration_s: float,
    *,
    workers: int = 1,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """The async engine over ``workers`` processes (connections split evenly); the common result."""
    workers = max(1, min(workers, concurrency))
    if workers == 1:
        rec, elapsed = asyncio.run(run_async(port, path, bodies, concurrency, duration_s, timeout_s=timeout_s))
        result = summarize(
            rec.latencies, rec.statuses, rec.errors, elapsed, missing_retry_after=rec.missing_retry_after
        )
    else:
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        shares = [concurrency // workers + (1 if w < concurrency % workers else 0) for w in range(workers)]
        firsts = [sum(shares[:w]) for w in range(workers)]
        procs = [
            ctx.Process(target=_worker, args=((port, path, bodies, n, duration_s, timeout_s, f), queue))
            for n, f in zip(shares, firsts, strict=True)
        ]
        for proc in procs:
            proc.start()
        parts = [queue.get() for _ in procs]
        for proc in procs:
            proc.join()
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        errors: Counter[str] = Counter()
        missing = 0
        for lat, st, err, miss, _ in parts:
            latencies.extend(lat)
            statuses.update(st)
            errors.update(err)
            missing += miss
        result = summarize(latencies, statuses, errors, max(p[4] for p in parts), missing_retry_after=missing)
    result.update(engine="async", workers=workers)
    return result


# --------------------------------------------------------------------------- wrk engine

# Each wrk thread pre-formats every request once (init), cycles them (request), and counts
# statuses (response). done() runs in the main Lua state and gathers the threads' tables.
WRK_SCRIPT = r"""
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  requests = {}
  statuses = {}
  missing_retry_after = 0
  local path, body_file = args[1], args[2]
  if body_file == nil or body_file == "" then
    requests[1] = wrk.format("GET", path)
  else
    local headers = {["Content-Type"] = "application/json"}
    for line in io.lines(body_file) do
      if #line > 0 then
        requests[#requests + 1] = wrk.format("POST", path, headers, line)
      end
    end
  end
  index = (id * 7919) % #requests
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and headers["retry-after"] == nil and headers["Retry-After"] == nil then
    missing_retry_after = missing_retry_after + 1
  end
end

function done(summary, latency, requests)
  local total = {}
  local missing = 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
    missing = missing + thread:get("missing_retry_after")
  end
  local parts = {}
  for status, n in pairs(total) do
    parts[#parts + 1] = string.format('"%d": %d', status, n)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us": %d, "requests": %d, "statuses": {%s}, "missing_retry_after": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p95": %d, "p99": %d, "max": %d, "mean": %f}}\n',
    summary.duration, summary.requests, table.concat(parts, ", "), missing,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    port: int,
    path: str,
    body_file: str | os.PathLike[str] | None,
    concurrency: int,
    duration_s: float,
    *,
    threads: int = 2,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    threads = max(1, min(threads, concurrency))
    with tempfile.TemporaryDirectory(prefix="hc-wrk-") as tmp:
        script = Path(tmp) / "cycle.lua"
        script.write_text(WRK_SCRIPT, encoding="utf-8")
        cmd = [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            str(script),
            f"http://{HOST}:{port}{path}",
            "--",
            path,
            str(body_file or ""),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    raw = json.loads(line[len("WRKJSON ") :])
    duration = raw["duration_us"] / 1e6
    answered = sum(raw["statuses"].values())
    lat = raw["latency_us"]
    return {
        "requests": answered,
        "duration_s": round(duration, 3),
        "rps": answered / duration if duration > 0 else 0.0,
        "latency_ms": {k: lat[k] / 1000 for k in ("p50", "p95", "p99", "max", "mean")},
        "statuses": {str(k): v for k, v in sorted(raw["statuses"].items(), key=lambda kv: int(kv[0]))},
        "errors": raw["errors"],
        "missing_retry_after": raw["missing_retry_after"],
        "engine": "wrk",
        "workers": threads,
    }


# --------------------------------------------------------------------------- entry points


def run_load(
    port: int,
    path: str,
    body_file: str | os.PathLike[str] | None,
    concurrency: int,
    duration_s: float,
    *,
    engine: str = "auto",
    workers: int = 2,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Run one load point in a separate process and return the common result (plus the settings)."""
    if engine == "auto":
        engine = "wrk" if wrk_available() else "async"
    if engine == "wrk":
        result = run_wrk(port, path, body_file, concurrency, duration_s, threads=workers, timeout_s=timeout_s)
    elif engine == "async":
        cmd = [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--port",
            str(port),
            "--path",
            path,
            "-c",
            str(concurrency),
            "-d",
            str(duration_s),
            "--workers",
            str(workers),
            "--timeout",
            str(timeout_s),
        ]
        if body_file is not None:
            cmd += ["--bodies", str(body_file)]
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=duration_s + timeout_s + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr.strip()}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        raise ValueError(f"unknown engine {engine!r}")
    result.update(path=path, concurrency=concurrency)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="server port on 127.0.0.1")
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--bodies", default=None, help="file with one JSON body per line (none: GET)")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--workers", type=int, default=1, help="async engine: processes; wrk: threads")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--engine", choices=("async", "wrk"), default="async")
    args = parser.parse_args(argv)
    if args.engine == "wrk":
        result = run_wrk(
            args.port,
            args.path,
            args.bodies,
            args.concurrency,
            args.duration,
            threads=args.workers,
            timeout_s=args.timeout,
        )
    else:
        result = run_async_processes(
            args.port,
            args.path,
            read_bodies(args.bodies),
            args.concurrency,
            args.duration,
            workers=args.workers,
            timeout_s=args.timeout,
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

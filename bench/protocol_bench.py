"""The Open Inference Protocol and the shadow against ``/predict``, on the real server under
closed-loop load (bench/loadgen.py), each comparison interleaved slice by slice in one run so
the machine's other work hits both sides alike (see bench/serve_bench.py).

1. one server: ``POST /predict`` vs ``POST /v2/models/headline-classifier/infer`` with one
   headline per request at 64 clients (req/s), and with 256 headlines per request (headlines/s);
2. two servers, one with ``--shadow`` (a second version: the served weights, perturbed) and
   one without: ``/predict`` at 64 clients (req/s, p99), and how much the shadow scored and skipped;
3. (``--tracing``) three servers: tracing off, on at 100% sampling to the console (a file), and
   to an OTLP/HTTP sink in this process: ``/predict`` at 64 clients.

Prints a table per comparison with its ratio and the issue's target beside it.

    python -m bench.protocol_bench                # artifacts/, 3 rounds of 3 s slices
    python -m bench.protocol_bench --quick        # 1 round of 1 s slices
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.serve_bench import DEFAULT_DATA, ROOT, find_artifacts, launch, read_titles

NAME = "headline-classifier"
INFER = f"/v2/models/{NAME}/infer"
SHADOW_VERSION = "20261129T184059Z-5ad0a1"


def v2_body(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


def shadow_copy(artifacts_dir: Path, scratch: Path) -> Path:
    """A folder with the served version and a second one (its weights with seeded noise) to shadow it."""
    import shutil

    import torch

    from contract.artifact import load_artifact, resolve_version, write_artifact

    folder = resolve_version(artifacts_dir)
    root = scratch / "artifacts-shadow"
    root.mkdir()
    shutil.copytree(folder, root / folder.name)
    artifact = load_artifact(folder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in artifact.model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    write_artifact(
        root,
        model=artifact.model,
        vocab=artifact.vocab,
        labels=artifact.labels,
        preprocessing=artifact.preprocessing,
        metrics={},
        train_config={"note": "benchmark shadow: the served weights plus noise"},
        version=SHADOW_VERSION,
    )
    return root


def interleave(
    targets: dict[str, tuple[Any, str, Path]], clients: int, rounds: int, seconds: float, engine: str
) -> dict[str, list[dict[str, Any]]]:
    """``rounds`` slices per target, visiting the targets in turn."""
    from bench.loadgen import run_load

    slices: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (server, path, bodies) in targets.items():
            slices[name].append(run_load(server.port, path, bodies, clients, seconds, engine=engine, workers=1))
    return slices


def summary(results: list[dict[str, Any]], texts_per_request: int = 1) -> dict[str, Any]:
    ok = [r["statuses"].get("200", 0) / r["duration_s"] for r in results]
    return {
        "rps": statistics.median(r["rps"] for r in results),
        "ok_per_s": statistics.median(ok),
        "texts_per_s": statistics.median(o * texts_per_request for o in ok),
        "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in results),
        "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in results),
        "slices": [round(r["rps"]) for r in results],
        "statuses": results[-1]["statuses"],
    }


def metric(port: int, name: str) -> float:
    import httpx

    total = 0.0
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--texts-clients", type=int, default=2)
    parser.add_argument("--engine", choices=("auto", "async", "wrk"), default="auto")
    parser.add_argument("--skip-shadow", action="store_true")
    parser.add_argument("--skip-protocols", action="store_true")
    parser.add_argument("--tracing", action="store_true", help="also measure tracing's cost (needs the otel extra)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 1.0, 1

    from bench.loadgen import text_groups, write_bodies

    titles = read_titles(args.data)
    rng = random.Random(0)
    sample = rng.sample(titles, min(len(titles), 2000))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        artifacts_dir, described = find_artifacts(args.artifacts_dir, titles, scratch)
        print(f"model: {described}", flush=True)
        groups = text_groups(sample, 256)
        bodies = {
            "predict": write_bodies(({"text": t} for t in sample), scratch / "v1.jsonl"),
            "v2": write_bodies((v2_body([t]) for t in sample), scratch / "v2.jsonl"),
            "predict_256": write_bodies(({"texts": g} for g in groups), scratch / "v1-256.jsonl"),
            "v2_256": write_bodies((v2_body(g) for g in groups), scratch / "v2-256.jsonl"),
        }
        flags = ["--no-access-log", "--max-queue-size=4096"]
        if args.tracing:
            results["tracing"] = measure_tracing(args, artifacts_dir, scratch, bodies["predict"])
        if not args.skip_protocols:
            with launch(artifacts_dir, flags, scratch, "protocols") as server:
                for warm in ("predict", "v2"):
                    interleave(
                        {warm: (server, "/predict" if warm == "predict" else INFER, bodies[warm])},
                        64,
                        1,
                        1.0,
                        args.engine,
                    )
                single = interleave(
                    {"predict": (server, "/predict", bodies["predict"]), "v2": (server, INFER, bodies["v2"])},
                    args.clients,
                    args.rounds,
                    args.duration,
                    args.engine,
                )
                many = interleave(
                    {"predict": (server, "/predict", bodies["predict_256"]), "v2": (server, INFER, bodies["v2_256"])},
                    args.texts_clients,
                    args.rounds,
                    args.duration,
                    args.engine,
                )
            results["single"] = {name: summary(r) for name, r in single.items()}
            results["many"] = {name: summary(r, 256) for name, r in many.items()}
            s, m = results["single"], results["many"]
            print(f"\n1 headline/request, {args.clients} clients (req/s; target V2 >= 0.8x /predict)")
            for name, point in s.items():
                print(
                    f"  {name:<8} {point['rps']:>8.0f} req/s  p50 {point['p50_ms']:6.2f}  p99 {point['p99_ms']:6.2f} ms"
                    f"  {point['slices']} {point['statuses']}"
                )
            print(f"  ratio V2 / predict: {s['v2']['rps'] / s['predict']['rps']:.3f}")
            print(f"\n256 headlines/request, {args.texts_clients} clients (headlines/s; target V2 >= 0.9x /predict)")
            for name, point in m.items():
                print(
                    f"  {name:<8} {point['texts_per_s']:>8.0f} headlines/s  p99 {point['p99_ms']:6.2f} ms"
                    f"  {point['statuses']}"
                )
            print(f"  ratio V2 / predict: {m['v2']['texts_per_s'] / m['predict']['texts_per_s']:.3f}")

        if not args.skip_shadow:
            root = shadow_copy(artifacts_dir, scratch)
            with contextlib.ExitStack() as stack:
                plain = stack.enter_context(launch(root, [*flags, "--version", _served(root)], scratch, "plain"))
                shadowed = stack.enter_context(
                    launch(root, [*flags, "--version", _served(root), "--shadow", SHADOW_VERSION], scratch, "shadow")
                )
                interleave(
                    {
                        "plain": (plain, "/predict", bodies["predict"]),
                        "shadow": (shadowed, "/predict", bodies["predict"]),
                    },
                    64,
                    1,
                    1.0,
                    args.engine,
                )
                runs = interleave(
                    {
                        "plain": (plain, "/predict", bodies["predict"]),
                        "shadow": (shadowed, "/predict", bodies["predict"]),
                    },
                    args.clients,
                    args.rounds,
                    args.duration,
                    args.engine,
                )
                scored = metric(shadowed.port, "hc_shadow_texts_total")
                skipped = metric(shadowed.port, 'hc_shadow_skipped_total{reason="busy"}')
                failed = metric(shadowed.port, 'hc_shadow_skipped_total{reason="failed"}')
            results["shadow"] = {name: summary(r) for name, r in runs.items()}
            sh = results["shadow"]
            print(f"\n/predict with and without a shadow, {args.clients} clients (target: req/s >= 0.9x, p99 <= 1.2x)")
            for name, point in sh.items():
                print(
                    f"  {name:<8} {point['rps']:>8.0f} req/s  p50 {point['p50_ms']:6.2f}  p99 {point['p99_ms']:6.2f} ms"
                    f"  {point['slices']}"
                )
            print(
                f"  ratios: req/s {sh['shadow']['rps'] / sh['plain']['rps']:.3f}, "
                f"p99 {sh['shadow']['p99_ms'] / sh['plain']['p99_ms']:.3f}"
            )
            print(f"  shadow scored {scored:.0f} texts, skipped {skipped:.0f} (busy), {failed:.0f} failed")
            results["shadow_counts"] = {"scored": scored, "skipped_busy": skipped, "failed": failed}
    return results


@contextlib.contextmanager
def otlp_sink() -> Any:
    """An OTLP/HTTP endpoint on 127.0.0.1 that accepts every export (and counts the bytes)."""
    import http.server
    import threading

    received = [0]

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            received[0] += len(self.rfile.read(int(self.headers.get("content-length", 0))))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()


def measure_tracing(args: argparse.Namespace, artifacts_dir: Path, scratch: Path, bodies: Path) -> dict[str, Any]:
    """/predict at ``--clients`` with tracing off, to the console, and to an OTLP sink (100% sampled)."""
    import os

    flags = ["--no-access-log"]
    arms = {
        "off": {},
        "console": {"OTEL_TRACES_EXPORTER": "console"},
        "otlp": {"OTEL_TRACES_EXPORTER": "otlp"},
    }
    with otlp_sink() as (endpoint, received), contextlib.ExitStack() as stack:
        servers = {}
        for name, env in arms.items():
            saved = dict(os.environ)
            os.environ.update(env, OTEL_TRACES_SAMPLER="always_on", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
            if not env:
                os.environ.pop("OTEL_TRACES_EXPORTER", None)
            try:
                servers[name] = stack.enter_context(launch(artifacts_dir, flags, scratch, f"trace-{name}"))
            finally:
                os.environ.clear()
                os.environ.update(saved)
        targets = {name: (server, "/predict", bodies) for name, server in servers.items()}
        interleave(targets, 64, 1, 1.0, args.engine)
        runs = interleave(targets, args.clients, args.rounds, args.duration, args.engine)
        exported = received[0]
    out = {name: summary(r) for name, r in runs.items()}
    print(f"\n/predict with tracing off / console / OTLP (100% sampled), {args.clients} clients")
    for name, point in out.items():
        print(
            f"  {name:<8} {point['rps']:>8.0f} req/s  p50 {point['p50_ms']:6.2f}  p99 {point['p99_ms']:6.2f} ms"
            f"  {point['slices']}"
        )
    for name in ("console", "otlp"):
        print(
            f"  {name} / off: req/s {out[name]['rps'] / out['off']['rps']:.3f}, "
            f"p99 {out[name]['p99_ms'] / out['off']['p99_ms']:.3f}"
        )
    print(f"  OTLP sink received {exported / 1e6:.1f} MB of spans")
    out["otlp_bytes"] = exported
    return out


def _served(root: Path) -> str:
    return next(p.name for p in sorted(root.iterdir()) if p.name != SHADOW_VERSION)


if __name__ == "__main__":
    main()

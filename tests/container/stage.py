"""The container stage: build both images, run the API image, then the compose file, end to end.

Run by ``tests/container/run.sh`` (``make test-container``), which provides the engine. Every step
prints one ``container:`` line with what it checked and how long it took; the first failed check
ends the stage with ``FAIL: ...`` and exit status 1. Containers, the compose project and its
volume are removed on the way out, whatever happened.

Networking: the engine on the build machines has no bridge network, so images are built with
``--network host``, containers run with ``--network host`` and are reached on 127.0.0.1, and the
compose file is run through a generated copy with ``network_mode: host`` and no ``ports:``
(docker-compose 1.29 refuses the two together).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from contract.artifact import resolve_version
from tests.container.shutdown_load import run as run_load

ROOT = Path(__file__).resolve().parents[2]
TAG = os.environ.get("CONTAINER_TAG", "ci")
API_IMAGE = f"headline-classifier:{TAG}"
TRAIN_IMAGE = f"headline-classifier-train:{TAG}"
MAX_API_IMAGE_BYTES = 1_000_000_000
MAX_HEALTHY_AFTER_READY_S = 5.0
TOKEN = "container-stage-token"
NEWS_DATA = Path(os.environ.get("NEWS_DATA", ROOT.parent / "shared" / "data" / "news_10k.csv"))
STARTED = time.monotonic()
_cleanups: list[Callable[[], None]] = []


class StageFailure(Exception):
    pass


def say(message: str) -> None:
    print(f"container: [{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise StageFailure(message)


def sh(
    *argv: str, env: dict[str, str] | None = None, quiet: bool = True, check_rc: bool = True, timeout: float = 900
) -> str:
    """Run a command; its output is shown only when it fails (or when ``quiet`` is false)."""
    try:
        proc = subprocess.run(
            argv,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise StageFailure(f"`{shlex.join(argv)}` still running after {timeout:.0f} s") from exc
    if not quiet:
        print(proc.stdout, end="")
    if check_rc and proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise StageFailure(f"`{shlex.join(argv)}` exited {proc.returncode}:\n{tail}")
    return proc.stdout


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, probe: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Poll ``probe`` until true; the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return time.monotonic()
        time.sleep(interval)
    raise StageFailure(f"{what}: not within {timeout:.0f} s")


def ready(port: int) -> bool:
    try:
        return http("GET", f"http://127.0.0.1:{port}/health/ready")[0] == 200
    except OSError:
        return False


def health(container: str) -> str:
    status = "{{if .State.Health}}{{.State.Health.Status}}{{end}}"
    return sh("docker", "inspect", "-f", status, container, check_rc=False).strip()


# --- steps -----------------------------------------------------------------------------


def build_images() -> None:
    args = [f"--build-arg={k}={os.environ[k]}" for k in ("TORCH_INDEX_URL", "PYPI_INDEX_URL") if os.environ.get(k)]
    for image, dockerfile in ((API_IMAGE, "Dockerfile"), (TRAIN_IMAGE, "training/Dockerfile")):
        started = time.monotonic()
        sh("docker", "build", "--network", "host", "-f", dockerfile, *args, "-t", image, ".")
        say(f"built {image} from {dockerfile} in {time.monotonic() - started:.0f} s")


def check_api_image() -> None:
    size = int(sh("docker", "image", "inspect", "-f", "{{.Size}}", API_IMAGE))
    say(f"{API_IMAGE}: {size / 1e6:.0f} MB (limit {MAX_API_IMAGE_BYTES / 1e6:.0f} MB)")
    check(size <= MAX_API_IMAGE_BYTES, f"API image is {size / 1e6:.0f} MB, over {MAX_API_IMAGE_BYTES / 1e6:.0f} MB")
    probe = (
        "import importlib.util as u, torch; "
        "print(torch.__version__, [m for m in ('training', 'sklearn', 'nltk', 'matplotlib') if u.find_spec(m)])"
    )
    out = sh("docker", "run", "--rm", "--network", "host", "--entrypoint", "python", API_IMAGE, "-c", probe).split()
    check(out[0].endswith("+cpu"), f"API image torch is {out[0]}, not the CPU build")
    check(out[1:] == ["[]"], f"API image contains training-only packages: {' '.join(out[1:])}")
    say(f"API image: torch {out[0]}, no training package, sklearn, nltk or matplotlib")


def start_api(name: str, port: int) -> None:
    """The API image as a container on the host network, one torch thread; returns once healthy."""
    sh("docker", "run", "-d", "--name", name, "--network", "host", "-e", f"HC_PORT={port}",
       "-e", "HC_TORCH_THREADS=1", API_IMAGE)  # fmt: skip
    wait_ready_and_healthy(name, port)


def run_api_container() -> None:
    port = free_port()
    name = f"hc-container-stage-{os.getpid()}"
    _cleanups.append(lambda: sh("docker", "rm", "-f", name, check_rc=False))
    start_api(name, port)

    uid = sh("docker", "exec", name, "id", "-u").strip()
    check(uid not in ("", "0"), f"API runs as uid {uid}")
    base = f"http://127.0.0.1:{port}"
    status, body = http("POST", f"{base}/predict", {"text": "Stocks rally as oil prices fall"})
    check(status == 200, f"/predict answered {status}: {body[:200]!r}")
    label = json.loads(body)["predictions"][0]["label"]
    status, body = http("GET", f"{base}/model")
    default = resolve_version(ROOT / "artifacts").name
    check(status == 200 and json.loads(body)["version"] == default, f"/model: {status} {body[:200]!r}")
    status, page = http("GET", f"{base}/docs")
    check(status == 200 and b"cdn." not in page, f"/docs: {status}, or it loads assets from a CDN")
    say(f"API as uid {uid}: /predict -> {label}, /model -> {default}, /docs without a CDN")

    shutdown_under_load(name, port)
    for _ in range(1, int(os.environ.get("CONTAINER_SHUTDOWN_RUNS", "1"))):
        sh("docker", "rm", "-f", name)
        start_api(name, port)
        shutdown_under_load(name, port)


def wait_ready_and_healthy(name: str, port: int) -> None:
    started = time.monotonic()
    ready_at = wait_for("API ready", lambda: ready(port), 60)
    healthy_at = wait_for("API healthy", lambda: health(name) == "healthy", 60, interval=0.1)
    say(f"API ready {ready_at - started:.1f} s after start, healthy {healthy_at - ready_at:.1f} s after ready")
    check(
        healthy_at - ready_at <= MAX_HEALTHY_AFTER_READY_S,
        f"healthy {healthy_at - ready_at:.1f} s after ready (limit {MAX_HEALTHY_AFTER_READY_S} s)",
    )


def shutdown_under_load(name: str, port: int) -> None:
    """1,500 requests, 8 at a time, SIGTERM half-way: every accepted request answered, exit 0."""
    outcome = run_load("127.0.0.1", port, 1500, 8, lambda: sh("docker", "kill", "-s", "TERM", name), 750)
    code = sh("docker", "wait", name).strip()
    say(f"SIGTERM under load (1500 requests, 8 at a time): {outcome.summary()}; exit status {code}")
    check(outcome.lost == 0, f"{outcome.lost} accepted request(s) got no response")
    check(code == "0", f"API exited {code} after SIGTERM")


def host_network_compose(port: int, directory: Path) -> Path:
    """docker-compose.yml with host networking: ``network_mode: host``, no ``ports:``, the API on ``port``."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in spec["services"].items():
        service.pop("ports", None)
        service["network_mode"] = "host"
        service.setdefault("build", {})["network"] = "host"
        service["build"]["context"] = str(ROOT)
        if name == "api":
            service["environment"]["HC_PORT"] = str(port)
    path = directory / "docker-compose.host.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def compose_end_to_end() -> None:
    if not NEWS_DATA.exists():
        message = f"compose check needs the sample data at {NEWS_DATA} (set NEWS_DATA)"
        if os.environ.get("CI") == "true":
            raise StageFailure(message)
        say(f"SKIP compose: {message}")
        return
    v2 = sh("docker", "compose", "version", check_rc=False).startswith("Docker Compose")
    compose_bin = ["docker", "compose"] if v2 else ["docker-compose"]
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="hc-compose-"))
    _cleanups.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    compose_file = host_network_compose(port, tmp)
    project = f"hcstage{os.getpid()}"
    env = {"TAG": TAG, "HC_ADMIN_TOKEN": TOKEN, "COMPOSE_PROJECT_NAME": project}
    compose = [*compose_bin, "-f", str(compose_file), "--project-directory", str(ROOT)]
    _cleanups.append(
        lambda: sh(*compose, "--profile", "train", "down", "-v", "--remove-orphans", env=env, check_rc=False)
    )

    # Train before the API ever ran: a fresh volume must still get the committed default model.
    started = time.monotonic()
    sh(
        *compose,
        "run",
        "--rm",
        "-v",
        f"{NEWS_DATA.parent}:/data:ro",
        "train",
        "--data",
        f"/data/{NEWS_DATA.name}",
        "--artifacts-dir",
        "/app/artifacts",
        "--limit-rows",
        "1000",
        "--epochs",
        "2",
        "--baseline-c",
        "1.0",
        "--threads",
        "2",
        "--quiet",
        env=env,
    )
    say(f"compose run train (1000 rows, 2 epochs) into a fresh volume: {time.monotonic() - started:.0f} s")

    sh(*compose, "up", "-d", "--no-build", "api", env=env)
    container = sh(*compose, "ps", "-q", "api", env=env).strip()
    wait_for("compose api healthy", lambda: health(container) == "healthy", 90, interval=0.2)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
    default = resolve_version(ROOT / "artifacts").name
    trained = json.loads(http("GET", f"{base}/model")[1])["version"]
    check(trained != default, f"compose api serves {trained}, not the version the train job wrote")
    status, body = http("POST", f"{base}/admin/reload", {"version": default}, auth)
    check(status == 200, f"default model {default} missing from the volume: reload {status} {body[:300]!r}")
    status, body = http("POST", f"{base}/admin/reload", None, auth)
    served = json.loads(http("GET", f"{base}/model")[1])["version"]
    check(status == 200 and served == trained, f"/admin/reload: {status} {body[:300]!r}, serving {served}")
    status, _ = http("POST", f"{base}/predict", {"text": "Federer wins his fifth Wimbledon title"})
    check(status == 200, f"/predict after reload: {status}")
    say(f"compose: volume holds the default {default} and the trained {trained}; /admin/reload serves {served}")
    sh(*compose, "--profile", "train", "down", "-v", env=env)
    say("compose down -v")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        sh("docker", "info")
        build_images()
        check_api_image()
        run_api_container()
        compose_end_to_end()
    except StageFailure as exc:
        print(f"container: FAIL: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for cleanup in reversed(_cleanups):
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                print(f"container: cleanup failed: {exc}", file=sys.stderr)
    say("all container checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

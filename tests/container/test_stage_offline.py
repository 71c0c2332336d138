"""The container stage's own logic that needs no engine: the host-network compose file and the
shutdown load accounting (against a live local server)."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import yaml

from tests.container.shutdown_load import run as run_load
from tests.container.stage import ROOT, host_network_compose
from tests.service.conftest import make_artifact
from tests.service.live_server import start_server


def test_host_network_compose_drops_ports_and_keeps_the_rest(tmp_path: Path) -> None:
    path = host_network_compose(18123, tmp_path)
    generated = yaml.safe_load(path.read_text())
    original = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(generated["services"]) == set(original["services"])
    for name, service in generated["services"].items():
        assert "ports" not in service and service["network_mode"] == "host"
        assert service["build"]["network"] == "host" and service["build"]["context"] == str(ROOT)
        assert service["build"]["dockerfile"] == original["services"][name]["build"]["dockerfile"]
        assert service["volumes"] == original["services"][name]["volumes"]
    assert generated["services"]["api"]["environment"]["HC_PORT"] == "18123"
    if shutil.which("docker-compose"):  # compose 1.29 refuses network_mode: host together with ports:
        result = subprocess.run(
            ["docker-compose", "-f", str(path), "--project-directory", str(ROOT), "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


def test_shutdown_load_counts_every_request(tmp_path: Path) -> None:
    make_artifact(tmp_path)
    server = start_server(tmp_path, "--no-access-log")
    try:
        outcome = run_load("127.0.0.1", server.port, 400, 8, lambda: server.process.send_signal(signal.SIGTERM), 200)
        assert server.process.wait(timeout=30) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert outcome.sent == 400 and outcome.answered >= 200
    assert outcome.lost == 0, outcome.summary()
    assert set(outcome.statuses) <= {200, 503}


def test_without_an_engine_the_stage_skips_but_fails_under_ci(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "CONTAINER_ENV": str(tmp_path / "none")}
    env.pop("CI", None)
    script = str(ROOT / "tests" / "container" / "run.sh")
    skipped = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert skipped.returncode == 0 and "container: SKIP: no Docker engine" in skipped.stdout
    failed = subprocess.run(["bash", script], env={**env, "CI": "true"}, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "FAIL" in failed.stderr

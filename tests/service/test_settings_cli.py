"""Settings (flags and HC_ env twins), the one-line startup errors, and the import boundary."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, build_parser, format_validation_error, load_settings
from tests.service.live_server import ROOT


def test_every_field_has_a_description_and_a_flag() -> None:
    flags = {a.dest for a in build_parser()._actions}
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert name in flags, name


def test_flag_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HC_ARTIFACTS_DIR", str(tmp_path))
    monkeypatch.setenv("HC_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("HC_WARMUP", "false")
    monkeypatch.setenv("HC_ADMIN_TOKEN", "zq-secret-9")
    s = load_settings([])
    assert (s.artifacts_dir, s.max_batch_size, s.warmup, s.port) == (tmp_path, 8, False, 8000)
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "zq-secret-9"
    assert "zq-secret-9" not in repr(s)
    s = load_settings(["--max-batch-size", "1", "--warmup", "--port", "9000"])
    assert (s.max_batch_size, s.warmup, s.port) == (1, True, 9000)


def test_bad_value_is_one_readable_line(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        load_settings(["--artifacts-dir", str(tmp_path), "--max-batch-size", "0", "--device", "tpu"])
    line = format_validation_error(info.value)
    assert "\n" not in line
    assert "--max-batch-size / HC_MAX_BATCH_SIZE" in line and "--device / HC_DEVICE" in line


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_missing_artifacts_exit_with_one_line(tmp_path: Path) -> None:
    result = run_cli("--artifacts-dir", "/nonexistent")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "/nonexistent" in lines[0]
    (tmp_path / "20260101T000000Z-broken").mkdir()  # a version folder with no manifest
    result = run_cli("--artifacts-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and str(tmp_path) in result.stderr
    result = run_cli("--artifacts-dir", str(tmp_path), "--port", "http")
    assert result.returncode == 2 and result.stderr.startswith("error: invalid settings: port")


def test_service_does_not_import_training_job_or_its_libraries() -> None:
    # (tqdm is not checked: torch itself imports it.)
    code = (
        "import json, sys; import service.api.app, service.__main__; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sklearn', 'nltk', 'matplotlib', 'training'})))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_a_request_larger_than_the_queue_is_refused_at_startup(tmp_path: Path) -> None:
    # With a queue of 8, a 12-text request could never be queued: it would get 503 + Retry-After forever.
    with pytest.raises(ValidationError) as info:
        load_settings(["--artifacts-dir", str(tmp_path), "--max-queue-size", "8", "--max-texts-per-request", "12"])
    line = format_validation_error(info.value)
    assert "\n" not in line and "Value error" not in line
    assert "--max-texts-per-request / HC_MAX_TEXTS_PER_REQUEST = 12" in line
    assert "--max-queue-size / HC_MAX_QUEUE_SIZE = 8" in line
    equal = load_settings(["--artifacts-dir", str(tmp_path), "--max-queue-size", "8", "--max-texts-per-request", "8"])
    assert equal.max_texts_per_request == equal.max_queue_size == 8
    result = run_cli("--artifacts-dir", str(tmp_path), "--max-queue-size", "8")  # default 256 texts per request
    assert result.returncode == 2
    [error] = result.stderr.strip().splitlines()
    assert error.startswith("error: invalid settings: max_texts_per_request") and "(256)" not in error


def test_a_taken_port_exits_3(artifacts_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("--artifacts-dir", str(artifacts_dir), "--port", str(taken.getsockname()[1]))
    assert result.returncode == 3, result.stderr[-500:]
    assert "address already in use" in result.stderr


def test_log_level_filters_the_json_log(artifacts_dir: Path) -> None:
    """At ``--log-level warning`` the info lines (startup, access) are gone and warnings stay."""
    import httpx

    from tests.service.live_server import launch_server

    for level, expect_info in (("info", True), ("warning", False)):
        with launch_server(artifacts_dir, "--log-level", level) as server:
            assert httpx.post(f"{server.url}/predict", json={"text": "Stocks rally"}).status_code == 200
            httpx.get(f"{server.url}/nope")
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:  # logged at warning
                sock.sendall(b"NOT HTTP\r\n\r\n")
                sock.recv(4096)
        entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        levels = {e["level"] for e in entries}
        assert ("info" in levels) == expect_info, (level, levels)
        assert "warning" in levels, (level, levels)

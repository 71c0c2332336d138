"""Broken artifacts: the server refuses to start with one clear line, or a reload refuses and the old model serves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from contract.artifact import MANIFEST, VOCAB, WEIGHTS, sha256_file
from tests.resilience.conftest import ROOT
from tests.service.conftest import make_artifact
from tests.service.live_server import LiveServer, free_port, launch_server

pytestmark = pytest.mark.resilience

GOOD = "20260101T000000Z-000001"
TOKEN = "resilience-token"


def _rehash(folder: Path, name: str) -> None:
    """Make the manifest agree with a changed file, so the loader (not the checksum) must catch it."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][name] = sha256_file(folder / name)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def missing_file(folder: Path) -> None:
    (folder / VOCAB).unlink()


def truncated_weights(folder: Path) -> None:
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])


def truncated_weights_rehashed(folder: Path) -> None:
    truncated_weights(folder)
    _rehash(folder, WEIGHTS)


def tampered_vocab(folder: Path) -> None:
    vocab = json.loads((folder / VOCAB).read_text())
    vocab["tokens"] = vocab["tokens"][:-1] + ["pwned"]
    (folder / VOCAB).write_text(json.dumps(vocab))


def tampered_vocab_rehashed(folder: Path) -> None:
    vocab = json.loads((folder / VOCAB).read_text())
    vocab["tokens"] = vocab["tokens"] + ["extra", "words"]
    (folder / VOCAB).write_text(json.dumps(vocab))
    _rehash(folder, VOCAB)


def wrong_manifest_format(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["format_version"] = 99
    (folder / MANIFEST).write_text(json.dumps(manifest))


def manifest_not_json(folder: Path) -> None:
    (folder / MANIFEST).write_text("{not json")


def manifest_missing(folder: Path) -> None:
    (folder / MANIFEST).unlink()


# fault -> words the one-line reason must contain
FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing_file": (missing_file, "missing file vocab.json"),
    "truncated_weights": (truncated_weights, "checksum mismatch"),
    "truncated_weights_rehashed": (truncated_weights_rehashed, "cannot load weights"),
    "tampered_vocab": (tampered_vocab, "checksum mismatch"),
    "tampered_vocab_rehashed": (tampered_vocab_rehashed, "disagree with the model config"),
    "wrong_manifest_format": (wrong_manifest_format, "format_version 99"),
    "manifest_not_json": (manifest_not_json, "cannot read JSON"),
    "manifest_missing": (manifest_missing, "no manifest.json"),
}


def broken_version(root: Path, fault: str) -> str:
    version = f"20260201T000000Z-{fault}"
    make_artifact(root, seed=3, version=version)
    FAULTS[fault][0](root / version)
    return version


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_server_refuses_to_start_with_one_line_reason(tmp_path: Path, fault: str) -> None:
    version = broken_version(tmp_path, fault)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "--artifacts-dir",
            str(tmp_path),
            "--version",
            version,
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot load model"), lines[0]
    assert FAULTS[fault][1] in lines[0], lines[0]


def test_latest_with_only_broken_versions_names_every_reason(tmp_path: Path) -> None:
    broken_version(tmp_path, "missing_file")
    broken_version(tmp_path, "manifest_missing")
    proc = subprocess.run(
        [sys.executable, "-m", "service", "--artifacts-dir", str(tmp_path), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "no valid artifact version" in lines[0] and "missing file" in lines[0] and "no manifest" in lines[0]


@pytest.fixture(scope="module")
def reload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    root = tmp_path_factory.mktemp("artifacts-faults")
    make_artifact(root, seed=0, version=GOOD)
    with launch_server(root, "--version", GOOD, env={"HC_ADMIN_TOKEN": TOKEN}) as server:
        yield server, root


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_reload_refuses_broken_version_and_keeps_serving(reload_server: tuple[LiveServer, Path], fault: str) -> None:
    server, root = reload_server
    version = broken_version(root, fault)
    try:
        r = httpx.post(
            f"{server.url}/admin/reload",
            json={"version": version},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        assert r.status_code == 409, r.text
        message = r.json()["error"]["message"] if "error" in r.json() else r.text
        assert f"still serving {GOOD}" in message and FAULTS[fault][1] in message, message
        assert httpx.get(f"{server.url}/model").json()["version"] == GOOD
        predicted = httpx.post(f"{server.url}/predict", json={"text": "Stocks rally on oil news"})
        assert predicted.status_code == 200 and predicted.json()["model_version"] == GOOD
    finally:
        shutil.rmtree(root / version)

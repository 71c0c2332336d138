"""Which version ``latest`` serves, and what is refused, via ``python -m service``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from contract.artifact import MANIFEST
from tests.resilience.conftest import ROOT
from tests.service.conftest import make_artifact
from tests.service.live_server import free_port, launch_server

pytestmark = pytest.mark.resilience

OLDER_NAME_NEWER_TIME = "20260101T000000Z-aaaaaa"
NEWER_NAME_OLDER_TIME = "20260201T000000Z-bbbbbb"
DROP_READ_OVERRIDE = ["--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def _set_created(folder: Path, created_at: str) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["created_at"] = created_at
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two valid versions whose name order and creation order disagree, plus a backup folder."""
    root = tmp_path_factory.mktemp("artifacts-versions")
    _set_created(make_artifact(root, seed=1, version=OLDER_NAME_NEWER_TIME), "2026-03-01T00:00:00+00:00")
    _set_created(make_artifact(root, seed=2, version=NEWER_NAME_OLDER_TIME), "2026-01-01T00:00:00+00:00")
    backup = make_artifact(root, seed=3, version="20200101T000000Z-cccccc")
    _set_created(backup, "2020-01-01T00:00:00+00:00")
    backup.rename(root / "backup-of-2020-model")  # sorts after every "2026..." name
    return root


def _served(root: Path, *args: str) -> str:
    with launch_server(root, *args) as server:
        return str(httpx.get(f"{server.url}/model").json()["version"])


def _refused(root: Path, *args: str, as_unprivileged: bool = False) -> str:
    """Run the server expecting it to refuse; return its one stderr line."""
    cmd = [sys.executable, "-m", "service", "--artifacts-dir", str(root), "--port", str(free_port()), *args]
    if as_unprivileged and os.geteuid() == 0:
        cmd = [_setpriv(), *DROP_READ_OVERRIDE, *cmd]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]  # one line, never a traceback
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def _setpriv() -> str:
    """Root reads everything: run the server without the read-override capabilities instead."""
    found = shutil.which("setpriv")
    if found is None:
        pytest.skip("running as root and util-linux setpriv is missing: cannot make a file unreadable")
    return found


def test_latest_is_the_newest_by_manifest_time_among_version_named_folders(versions: Path) -> None:
    assert _served(versions) == OLDER_NAME_NEWER_TIME  # was: backup-of-2020-model


def test_a_symlink_leaving_the_artifacts_folder_is_refused(versions: Path, tmp_path: Path) -> None:
    outside = make_artifact(tmp_path, seed=4, version="20270101T000000Z-dddddd")
    _set_created(outside, "2027-01-01T00:00:00+00:00")
    link = versions / outside.name
    link.symlink_to(outside, target_is_directory=True)
    try:
        assert _served(versions) == OLDER_NAME_NEWER_TIME  # was: the outside one
        assert "outside the artifacts folder" in _refused(versions, "--version", outside.name)
    finally:
        link.unlink()


def test_a_manifest_path_outside_the_version_folder_is_refused(tmp_path: Path) -> None:
    folder = make_artifact(tmp_path, seed=5, version="20260301T000000Z-eeeeee")
    target = Path("/etc/hostname") if Path("/etc/hostname").is_file() else Path(sys.executable)
    manifest = json.loads((folder / MANIFEST).read_text())
    escape = "../" * len(folder.resolve().parts) + str(target.resolve()).lstrip("/")
    manifest["files"][escape] = hashlib.sha256(target.read_bytes()).hexdigest()  # a correct hash: was accepted
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert "outside the version folder" in _refused(tmp_path, "--version", folder.name)


def test_an_unreadable_newest_version_is_skipped_by_latest_and_refused_by_name(tmp_path: Path) -> None:
    make_artifact(tmp_path, seed=6, version="20260101T000000Z-ffffff")
    newest = make_artifact(tmp_path, seed=7, version="20260401T000000Z-999999")
    (newest / "vocab.json").chmod(0)
    try:
        if os.geteuid() == 0:
            _setpriv()
            line = _refused(tmp_path, "--version", newest.name, as_unprivileged=True)
        else:
            line = _refused(tmp_path, "--version", newest.name)
        assert "cannot read" in line and "vocab.json" in line, line
        cmd = [sys.executable, "-m", "service", "--artifacts-dir", str(tmp_path)]
        assert _serves_with_warning(cmd, "20260101T000000Z-ffffff", "skipped artifact version")
    finally:
        (newest / "vocab.json").chmod(0o644)


def _serves_with_warning(cmd: list[str], version: str, warning: str) -> bool:
    port = free_port()
    full = [*cmd, "--port", str(port)]
    if os.geteuid() == 0:
        full = [_setpriv(), *DROP_READ_OVERRIDE, *full]
    proc = subprocess.Popen(full, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read() if proc.stdout else "exited")
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/model", timeout=1)
                if r.status_code == 200:
                    assert r.json()["version"] == version, r.text
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert warning in out, out[-3000:]
    return True


def test_an_unreadable_artifacts_folder_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    make_artifact(root, seed=8, version="20260101T000000Z-121212")
    root.chmod(0)
    try:
        if os.geteuid() == 0:
            _setpriv()
        assert "cannot" in _refused(root, as_unprivileged=True)
    finally:
        root.chmod(0o755)


@pytest.mark.parametrize("version", ["x" * 300, "", "../" * 3, "backup-of-2020-model"])
def test_a_bad_version_name_is_one_line(versions: Path, version: str) -> None:
    assert "invalid version name" in _refused(versions, "--version", version)

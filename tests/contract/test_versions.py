"""Which folder a version name or ``latest`` resolves to."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from contract.artifact import (
    MANIFEST,
    ArtifactError,
    list_versions,
    new_version,
    resolve_version,
    verify_artifact,
    write_artifact,
)
from contract.model import ModelConfig, TextClassifier
from contract.text import LabelEncoder, PreprocessSettings, Vocabulary
from tests.service.conftest import make_artifact


def _write(root: Path, version: str, created_at: str) -> Path:
    torch.manual_seed(0)
    model = TextClassifier(ModelConfig(vocab_size=10, num_classes=2, embedding_dim=4, hidden_dim=4, fc_dim=4))
    vocab = Vocabulary(["<PAD>", "<UNK>", *[f"w{i}" for i in range(8)]])
    folder = write_artifact(
        root,
        model=model.eval(),
        vocab=vocab,
        labels=LabelEncoder(["a", "b"]),
        preprocessing=PreprocessSettings(),
        metrics={},
        train_config={},
        version=version,
    )
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["created_at"] = created_at
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_latest_is_newest_by_creation_time_among_version_names(tmp_path: Path) -> None:
    newer = _write(tmp_path, "20260101T000000Z-aaaaaa", "2026-03-01T00:00:00+00:00")
    _write(tmp_path, "20260201T000000Z-bbbbbb", "2026-01-01T00:00:00+00:00")
    _write(tmp_path, "20200101T000000Z-cccccc", "2020-01-01T00:00:00+00:00").rename(tmp_path / "backup-of-2020")
    assert list_versions(tmp_path) == ["20260101T000000Z-aaaaaa", "20260201T000000Z-bbbbbb"]
    assert resolve_version(tmp_path) == newer


def test_symlinks_out_and_manifest_paths_out_are_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "artifacts", tmp_path / "elsewhere"
    root.mkdir()
    old = _write(root, "20260101T000000Z-aaaaaa", "2026-01-01T00:00:00+00:00")
    escaped = _write(outside, "20270101T000000Z-dddddd", "2027-01-01T00:00:00+00:00")
    (root / escaped.name).symlink_to(escaped, target_is_directory=True)
    assert resolve_version(root) == old
    with pytest.raises(ArtifactError, match="outside the artifacts folder"):
        resolve_version(root, escaped.name)
    # A manifest entry that leaves the folder, naming a real file with its real checksum: only
    # the escape check stands between it and a load.
    manifest = json.loads((old / MANIFEST).read_text())
    target = escaped / "labels.json"
    manifest["files"][f"../../elsewhere/{escaped.name}/labels.json"] = hashlib.sha256(target.read_bytes()).hexdigest()
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="outside the version folder"):
        verify_artifact(old)
    with pytest.raises(ArtifactError, match="no valid artifact version"):
        resolve_version(root)


@pytest.mark.parametrize("name", ["", "x" * 300, "..", "backup-of-2020", "20260101T000000Z-a/b"])
def test_bad_names_are_refused_with_a_short_message(tmp_path: Path, name: str) -> None:
    with pytest.raises(ArtifactError, match="invalid version name") as info:
        resolve_version(tmp_path, name)
    assert len(str(info.value)) < 200


# Versions sort by creation time: names made by new_version sort that way too, and ``latest`` is
# the newest version written.
TIMES = [
    datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC),
    datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC),
    datetime(2027, 1, 1, 9, 59, 59, tzinfo=UTC),
    datetime(2027, 1, 1, 10, 0, 0, tzinfo=UTC),
    datetime(2027, 10, 1, 0, 0, 0, tzinfo=UTC),
]


def test_version_names_sort_in_time_order_and_are_unique() -> None:
    names = [new_version(t) for t in TIMES]
    assert sorted(names) == names
    same_second = {new_version(TIMES[0]) for _ in range(50)}
    assert len(same_second) == 50  # the random suffix keeps versions of one second apart


def test_latest_is_the_newest_version_written(tmp_path: Path) -> None:
    written = []
    base = datetime(2027, 1, 1, tzinfo=UTC)
    # Written one after another, named for times seconds and an hour apart.
    for i, seconds in enumerate((0, 1, 3600)):
        written.append(make_artifact(tmp_path, seed=i, version=new_version(base + timedelta(seconds=seconds))).name)
    (tmp_path / ".tmp-unfinished").mkdir()  # an interrupted write is never a version
    assert list_versions(tmp_path) == written
    assert resolve_version(tmp_path).name == written[-1]
    assert resolve_version(tmp_path, written[0]).name == written[0]  # any older one by name

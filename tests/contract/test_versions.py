"""Versions sort by creation time: ``latest`` is the newest version written, whatever else is in the folder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from contract.artifact import list_versions, new_version, resolve_version
from tests.service.conftest import make_artifact

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
    # Written in time order (seconds and an hour apart).
    for i, seconds in enumerate((0, 1, 3600)):
        written.append(make_artifact(tmp_path, seed=i, version=new_version(base + timedelta(seconds=seconds))).name)
    (tmp_path / ".tmp-unfinished").mkdir()  # an interrupted write is never a version
    assert list_versions(tmp_path) == written
    assert resolve_version(tmp_path).name == written[-1]
    assert resolve_version(tmp_path, written[0]).name == written[0]  # any older one by name

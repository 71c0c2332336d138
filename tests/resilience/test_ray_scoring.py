"""``python -m scoring --engine ray`` (or ``python -m service.score``) on a real two-node Ray cluster.

The cluster (a head and a second node from ``ray.cluster_utils.Cluster``, one CPU each) is
started and stopped here; with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` both nodes bind
127.0.0.1, which the tests check. The output must be the local engine's: same header, input
columns and labels, probabilities within 1e-6, input order; also after a worker is killed
mid-run, and bad input must end with the local engine's error line.
"""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scoring.score import main as score_main
from tests.resilience.conftest import NEWS_DATA

pytestmark = pytest.mark.resilience

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
ROWS = 20_000
ATOL = 1e-6
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    # Read when Ray is imported: set first, or every node binds the host's interface address.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        need(False, 'Ray not installed (pip install -e ".[ray]")')
    started = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        started.add_node(num_cpus=1)
        started.wait_for_nodes()
        yield started
    finally:
        started.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 rows: the 10K news sample twice, with an id column in front."""
    need(NEWS_DATA.is_file(), f"news sample not found at {NEWS_DATA} (set NEWS_DATA)")
    with NEWS_DATA.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    path = tmp_path_factory.mktemp("ray") / "archive.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "category"])
        for i in range(ROWS):
            row = rows[i % len(rows)]
            writer.writerow([i, row["title"], row["category"]])
    return path


@pytest.fixture(scope="module")
def local_output(archive: Path) -> Path:
    out = archive.with_name("local.csv")
    assert score_main(["--artifacts-dir", str(ARTIFACTS), "--input", str(archive), "--output", str(out)]) == 0
    return out


def ray_score(cluster: Any, source: Path, out: Path, *extra: str) -> int:
    argv = ["--artifacts-dir", str(ARTIFACTS), "--input", str(source), "--output", str(out)]
    return score_main([*argv, "--engine", "ray", "--ray-address", cluster.address, *extra])


def assert_same_output(local: Path, remote: Path) -> None:
    with local.open(newline="", encoding="utf-8") as a, remote.open(newline="", encoding="utf-8") as b:
        expected, got = list(csv.reader(a)), list(csv.reader(b))
    header = expected[0]
    assert got[0] == header
    assert len(got) == len(expected) == ROWS + 1
    probs = [i for i, name in enumerate(header) if name.startswith("prob_")]
    first_prob = probs[0]
    worst = 0.0
    for line, (e, g) in enumerate(zip(expected[1:], got[1:], strict=True), start=2):
        assert g[:first_prob] == e[:first_prob], f"line {line}: {g[:first_prob]} != {e[:first_prob]}"
        worst = max(worst, *(abs(float(g[i]) - float(e[i])) for i in probs))
    assert worst <= ATOL, f"probabilities differ by up to {worst}"


def test_cluster_listens_on_loopback_only(cluster: Any) -> None:
    import ray

    ray.init(address=cluster.address, logging_level="WARNING", configure_logging=False)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
    assert len(nodes) == 2
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    assert cluster.address.startswith("127.0.0.1:")


def test_csv_on_the_cluster_matches_the_local_engine(cluster: Any, archive: Path, local_output: Path) -> None:
    out = archive.with_name("ray.csv")
    assert ray_score(cluster, archive, out, "--chunk-rows", "2000") == 0
    assert_same_output(local_output, out)


def test_parquet_on_the_cluster_matches_the_local_engine(cluster: Any, archive: Path, local_output: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    strings = pacsv.ConvertOptions(column_types={"id": pa.string(), "title": pa.string(), "category": pa.string()})
    source = archive.with_suffix(".parquet")
    # Several row groups, so that several blocks come back and their order matters.
    pq.write_table(pacsv.read_csv(archive, convert_options=strings), source, row_group_size=3000)
    out = archive.with_name("ray-parquet.csv")
    assert ray_score(cluster, source, out) == 0
    assert_same_output(local_output, out)


def _map_workers() -> list[int]:
    """Our Ray Data actors (descendants of this process: the test started the cluster)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"MapWorker(MapBatches(_Scorer))" in (entry / "cmdline").read_bytes() and _descends(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _descends(pid: int) -> bool:
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def test_a_worker_killed_mid_run_still_gives_the_complete_output(
    cluster: Any, archive: Path, local_output: Path
) -> None:
    out = archive.with_name("ray-killed.csv")
    result: list[int] = []
    run = threading.Thread(target=lambda: result.append(ray_score(cluster, archive, out, "--chunk-rows", "1000")))
    run.start()
    killed = None
    deadline = time.monotonic() + 180
    # Wait until results are being written (the first blocks are done), then kill an actor.
    while run.is_alive() and time.monotonic() < deadline:
        parts = [p for p in archive.parent.glob(f".{out.name}.*.part") if p.stat().st_size > 0]
        workers = _map_workers()
        if parts and workers:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.02)
    was_running = run.is_alive()
    run.join(timeout=300)
    assert killed is not None and was_running, "no actor was killed while the job ran: the test proves nothing"
    assert result == [0]
    assert_same_output(local_output, out)


@pytest.mark.parametrize(
    ("content", "suffix"),
    [
        ("id,title\n1,ok\n2,fine\n3,too,many\n", ".csv"),  # a row with an extra field
        ("id,name\n1,ok\n", ".csv"),  # no title column
        ("id,title,label\n1,ok,x\n", ".csv"),  # would overwrite an output column
        (b"id,title\n1,caf\xe9\n", ".csv"),  # not UTF-8
        ("", ".csv"),
    ],
)
def test_bad_input_gives_the_local_error(
    cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, suffix: str
) -> None:
    source = tmp_path / f"bad{suffix}"
    source.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = ["--artifacts-dir", str(ARTIFACTS), "--input", str(source), "--output", str(tmp_path / "out.csv")]
    assert score_main(argv) == 2
    local_error = capsys.readouterr().err.strip()
    assert ray_score(cluster, source, tmp_path / "out.csv") == 2
    ray_error = capsys.readouterr().err.strip()
    assert ray_error == local_error and local_error.startswith(f"error: {source}")
    assert not (tmp_path / "out.csv").exists()


def test_parquet_without_the_text_column_is_refused(cluster: Any, tmp_path: Path, capsys: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "no-title.parquet"
    pq.write_table(pa.table({"id": [1, 2], "headline": ["a", "b"]}), source)
    assert ray_score(cluster, source, tmp_path / "out.csv") == 2
    assert capsys.readouterr().err.strip() == f"error: {source}: no column 'title' (columns: id, headline)"

"""Offline scoring on a Ray cluster: ``python -m scoring --engine ray --ray-address HOST:PORT ...``.

The same input and output files as the local engine (``scoring.score``), computed with Ray Data:
the rows become a dataset, ``map_batches`` runs them through a pool of predictor actors (one
per CPU of the cluster, one torch thread each), and the driver writes the results in input
order through the local engine's writer. So the output has the same columns in the same order,
the same labels, and probabilities equal to float32 rounding.

- The model goes to the workers as bytes: the driver loads and verifies the artifact (a bad
  model fails before any cluster work), puts its files in the object store, and every actor
  rebuilds the folder in its own temporary directory. Workers need no path the driver has.
- The driver reads the input, a local path or any URI pyarrow opens (``s3://``, ``gs://``,
  ``hdfs://``...), and hands the rows to the dataset in blocks of ``--chunk-rows``; they then
  live in the object store (which spills to disk). CSV goes through the local engine's reader,
  so what is accepted and every error message (``FILE:LINE: ...``) are exactly the local ones.
  Parquet (``.parquet``/``.pq``) values are written as text, nulls as empty fields. (Reading
  on the driver also keeps every cluster CPU for the predictors: Ray Data read tasks would
  need CPUs that a full actor pool holds.)
- A worker that dies mid-run is replaced and its batches run again (Ray Data restarts pool
  actors and retries their tasks by default), so the output is still complete.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contract.artifact import ArtifactError, resolve_version
from scoring.score import (
    EXIT_BAD_INPUT,
    EXIT_BAD_MODEL,
    BadInput,
    Summary,
    _atomic_output,
    _Chunk,
    _chunks,
    _Lines,
    _Records,
    check_paths,
    output_columns,
    print_summary,
    read_header,
)
from service.inference.predictor import Predictor

if TYPE_CHECKING:
    import argparse

    import pyarrow as pa

PARQUET_SUFFIXES = (".parquet", ".pq")
ROW = "__row"  # input position, carried through the cluster to check the order of the results
LABEL, EMPTY = "__label", "__empty"


def is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET_SUFFIXES)


@dataclass(frozen=True)
class ShippedArtifact:
    """One version folder as bytes: what the actors rebuild the model from."""

    version: str
    files: dict[str, bytes]

    @classmethod
    def read(cls, folder: Path) -> ShippedArtifact:
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return cls(folder.name, files)

    def write(self, root: Path) -> Path:
        folder = root / self.version
        for name, data in self.files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return root


class _Scorer:
    """A Ray Data actor: the model rebuilt from shipped bytes, scoring batches of rows.

    Each batch is encoded, sorted by length and cut into same-length batches exactly as the
    local engine does with a chunk, so every row goes through the same forward pass.
    """

    def __init__(self, artifact: Any, device: str, text_column: str, batch_size: int) -> None:
        import ray
        import torch

        if isinstance(artifact, ray.ObjectRef):  # Ray Data hands constructor arguments over as given
            artifact = ray.get(artifact)

        torch.set_num_threads(1)
        self._folder = tempfile.TemporaryDirectory(prefix="hc-score-model-")
        root = artifact.write(Path(self._folder.name))
        self.predictor = Predictor.load(root, artifact.version, device)
        self.predictor.max_group = max(self.predictor.max_group, batch_size)
        self.text_column = text_column
        self.batch_size = batch_size
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score-model")

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        texts = batch.column(self.text_column).to_pylist()
        records = [["" if t is None else str(t)] for t in texts]
        chunk = _Chunk.submit(self.pool, self.predictor, records, 0, self.batch_size)
        for future in chunk.futures:
            future.result()
        classes = self.predictor.classes
        labels = [classes[i] for i in chunk.probabilities.argmax(axis=1).tolist()]
        batch = batch.append_column(LABEL, pa.array(labels, pa.string()))
        batch = batch.append_column(EMPTY, pa.array(chunk.empty, pa.bool_()))
        for j in range(len(classes)):
            batch = batch.append_column(f"__p{j}", pa.array(chunk.probabilities[:, j], pa.float32()))
        return batch


def _csv_tables(
    input_path: str, text_column: str, classes: Sequence[str], chunk_rows: int
) -> tuple[list[str], list[pa.Table]]:
    """The input's header and its rows as Arrow tables of strings, read by the local engine's reader."""
    import pyarrow as pa

    name = input_path
    with _open_binary(input_path) as handle:
        lines = _Lines(handle, name)
        records = iter(_Records(lines))
        header = read_header(records, name, text_column, classes)
        tables, start = [], 0
        for chunk in _chunks(records, len(header), chunk_rows, name):
            columns = {f"c{i}": pa.array([r[i] for r in chunk], pa.string()) for i in range(len(header))}
            columns[ROW] = pa.array(np.arange(start, start + len(chunk), dtype=np.int64))
            tables.append(pa.table(columns))
            start += len(chunk)
    return header, tables


def _open_binary(path: str) -> Any:
    if "://" not in path:
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise BadInput(f"{path}: cannot open input ({exc.strerror or exc})") from None
    import pyarrow.fs as pafs

    try:
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs.open_input_stream(inner)
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: cannot open input ({exc})") from None


def _refuse_clashes(header: Sequence[str], classes: Sequence[str], where: str) -> None:
    columns = output_columns(header, classes)
    clashes = sorted(set(header) & set(columns[len(header) :]))
    if clashes:
        raise BadInput(f"{where}: input already has output column(s) {', '.join(clashes)}; rename them")


def _parquet_tables(
    input_path: str, text_column: str, classes: Sequence[str], chunk_rows: int
) -> tuple[list[str], list[pa.Table]]:
    """The header and rows of a Parquet file as Arrow tables of strings (the CSV path's shape)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if "://" in input_path:
            import pyarrow.fs as pafs

            fs, inner = pafs.FileSystem.from_uri(input_path)
            parquet = pq.ParquetFile(fs.open_input_file(inner))
        else:
            parquet = pq.ParquetFile(input_path)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise BadInput(f"{input_path}: cannot read as Parquet ({exc})") from None
    header = list(parquet.schema_arrow.names)
    if text_column not in header:
        raise BadInput(f"{input_path}: no column {text_column!r} (columns: {', '.join(header)})")
    _refuse_clashes(header, classes, input_path)
    tables, start = [], 0
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        columns = {
            f"c{i}": pa.array([_cell(v) for v in batch.column(i).to_pylist()], pa.string()) for i in range(len(header))
        }
        columns[ROW] = pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64))
        tables.append(pa.table(columns))
        start += batch.num_rows
    return header, tables


def _cell(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def score_file_ray(
    artifacts_dir: str | os.PathLike[str],
    input_path: str,
    output_path: Path,
    *,
    address: str,
    version: str = "latest",
    device: str = "cpu",
    text_column: str = "title",
    batch_size: int = 512,
    chunk_rows: int = 16384,
    actors: int = 0,
) -> tuple[Summary, str]:
    """Score ``input_path`` on the Ray cluster at ``address``; returns the summary and the model version.

    Raises :class:`BadInput` (the local engine's messages) or ArtifactError. ``actors`` = 0:
    one per CPU the cluster has.
    """
    import ray
    import ray.data

    started = time.perf_counter()
    if "://" not in input_path:
        check_paths(Path(input_path), output_path)
    elif not output_path.parent.is_dir():
        raise BadInput(f"{output_path}: output folder {output_path.parent} does not exist")
    folder = resolve_version(artifacts_dir, version)
    predictor = Predictor.load(folder.parent, folder.name, "cpu")  # verify before any cluster work
    classes = predictor.classes
    read = _parquet_tables if is_parquet(input_path) else _csv_tables
    header, tables = read(input_path, text_column, classes, chunk_rows)

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, configure_logging=False)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = sys.stderr.isatty()
        dataset = ray.data.from_arrow(tables) if tables else None
        text_key = f"c{header.index(text_column)}"
        pool = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        shipped = ray.put(ShippedArtifact.read(folder))
        rows = 0
        with _atomic_output(output_path) as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(output_columns(header, classes))
            if dataset is not None:
                scored = dataset.map_batches(
                    _Scorer,
                    fn_constructor_args=(shipped, device, text_key, batch_size),
                    batch_format="pyarrow",
                    batch_size=chunk_rows,
                    compute=ray.data.ActorPoolStrategy(size=pool),
                    num_cpus=1,
                )
                for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                    rows = _write_batch(writer, batch, header, len(classes), rows)
    finally:
        ray.shutdown()
    return Summary(rows, time.perf_counter() - started, output_path), predictor.version


def _write_batch(writer: Any, batch: pa.Table, header: Sequence[str], n_classes: int, done: int) -> int:
    """Write one scored batch in the local engine's format, checking that rows arrive in input order."""
    positions = batch.column(ROW).to_numpy()
    if not np.array_equal(positions, np.arange(done, done + batch.num_rows)):
        raise RuntimeError(f"rows came back out of order (expected {done}..., got {positions[:5].tolist()}...)")
    inputs = [batch.column(f"c{i}").to_pylist() for i in range(len(header))]
    labels = batch.column(LABEL).to_pylist()
    flags = ["true" if e else "false" for e in batch.column(EMPTY).to_pylist()]
    probabilities = np.stack([batch.column(f"__p{j}").to_numpy() for j in range(n_classes)], axis=1)
    writer.writerows(
        [*row, label, flag, *probs]
        for row, label, flag, probs in zip(
            zip(*inputs, strict=True), labels, flags, probabilities.tolist(), strict=True
        )
    )
    return done + batch.num_rows


def run_cli(args: argparse.Namespace) -> int:
    """``--engine ray`` of ``python -m scoring``: one ``error: ...`` line and the local exit codes."""
    if not args.ray_address:
        print("error: --engine ray needs --ray-address HOST:PORT (the head node's GCS address)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        import ray  # noqa: F401
    except ImportError:
        print('error: --engine ray needs Ray: pip install -e ".[ray]"', file=sys.stderr)
        return EXIT_BAD_INPUT
    device = "cpu" if args.device == "auto" else args.device
    try:
        summary, version = score_file_ray(
            args.artifacts_dir,
            str(args.input),
            args.output,
            address=args.ray_address,
            version=args.version,
            device=device,
            text_column=args.text_column,
            batch_size=args.batch_size,
            chunk_rows=args.chunk_rows,
            actors=args.threads,
        )
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ArtifactError as exc:
        print(f"error: cannot load model from {args.artifacts_dir}: {exc}", file=sys.stderr)
        return EXIT_BAD_MODEL
    print_summary(summary, version, f" on Ray at {args.ray_address}")
    return 0

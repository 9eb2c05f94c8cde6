"""Recording traces: an append-only Arrow IPC stream that survives a crash, and atomic files.

`TraceWriter` appends one record batch per `flush`; each batch reaches the operating system
before `flush` returns, so a crash of the writing process (even ``kill -9``) keeps every
complete batch and the reader reports what it recovered. Finished traces are turned into a
Parquet dataset by `ead_sdk.traces.compact`; `write_traces` writes a whole `TraceSet` atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Literal

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ead_sdk.atomic_write import atomic_path
from ead_sdk.errors import TraceError
from ead_sdk.traces.codec import sequences_to_batch
from ead_sdk.traces.integrity import batch_metadata
from ead_sdk.traces.schema import SequenceTrace, TraceMeta, trace_schema
from ead_sdk.traces.traceset import TraceSet
from ead_sdk.traces.validate import validate_batch


class TraceWriter:
    """Append sequences to an Arrow IPC stream at ``path``, one record batch per flush.

    Args:
        path: the stream file to create.
        meta: the trace metadata (stored in the stream's schema).
        batch_rows: buffered sequences that trigger a flush (1: every sequence is its own batch).
        overwrite: replace an existing file instead of refusing.
        fsync: also ``fsync`` after each batch (survives a machine crash, not just the process).
        validate: check each batch's values before writing it.

    Use as a context manager; `close` writes the end-of-stream marker.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        meta: TraceMeta,
        *,
        batch_rows: int = 16,
        overwrite: bool = False,
        fsync: bool = False,
        validate: bool = True,
    ):
        if batch_rows < 1:
            raise TraceError(f"batch_rows must be >= 1, got {batch_rows}")
        self.path = Path(path)
        self.meta = meta
        self.batch_rows = batch_rows
        self.fsync = fsync
        self.validate = validate
        self.schema = trace_schema(meta)
        self._buffer: list[pa.RecordBatch] = []
        self.rows_written = 0
        self.batches_written = 0
        try:
            self._file: IO[bytes] | None = open(self.path, "wb" if overwrite else "xb")  # noqa: SIM115
        except FileExistsError:
            raise TraceError(f"{self.path}: already exists (pass overwrite=True to replace it)") from None
        self._stream = ipc.new_stream(self._file, self.schema)
        self._sync()

    def _sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, sequence: SequenceTrace) -> None:
        """Check and buffer one sequence; flush when `batch_rows` are buffered.

        A sequence that fails its checks raises `TraceError` and is not buffered.
        """
        if self.closed:
            raise TraceError(f"{self.path}: the writer is closed")
        row = self.rows_written + len(self._buffer)
        try:
            batch = sequences_to_batch(self.meta, [sequence], row)
        except TraceError as exc:
            raise TraceError(f"{self.path}: {exc}") from None
        if self.validate:
            validate_batch(self.meta, batch, str(self.path), row)
        self._buffer.append(batch)
        if len(self._buffer) >= self.batch_rows:
            self.flush()

    def write_many(self, sequences: Iterable[SequenceTrace]) -> None:
        """`write` each of ``sequences``."""
        for seq in sequences:
            self.write(seq)

    def flush(self) -> None:
        """Write the buffered sequences as one record batch and hand it to the OS."""
        if self.closed:
            raise TraceError(f"{self.path}: the writer is closed")
        if not self._buffer:
            return
        table = pa.Table.from_batches(self._buffer, schema=self.schema).combine_chunks()
        batch = table.to_batches()[0]
        self._stream.write_batch(batch, custom_metadata=batch_metadata(batch))
        self._sync()
        self.rows_written += batch.num_rows
        self.batches_written += 1
        self._buffer.clear()

    def close(self) -> None:
        """Flush, write the end-of-stream marker and close the file (idempotent)."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self._stream.close()
            self._sync()
            assert self._file is not None
            self._file.close()
            self._file = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _publish(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``dest``; without ``overwrite`` a file that appeared meanwhile is kept.

    Checking that ``dest`` is absent and then renaming would let a concurrent writer's file be
    replaced silently; a hard link fails atomically when ``dest`` exists.
    """
    if overwrite:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise TraceError(f"{dest}: already exists (written by another process meanwhile?); not replaced") from None
    except OSError:  # a file system without hard links: the check-then-rename fallback
        if dest.exists():
            raise TraceError(f"{dest}: already exists (pass overwrite=True to replace it)") from None
        os.replace(tmp, dest)


def write_traces(
    traces: TraceSet,
    path: str | os.PathLike[str],
    *,
    format: Literal["parquet", "ipc"] = "parquet",
    overwrite: bool = False,
    row_group_rows: int = 1024,
) -> Path:
    """Write a whole `TraceSet` as one Parquet or Arrow IPC file, atomically (temp + rename)."""
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise TraceError(f"{dest}: already exists (pass overwrite=True to replace it)")
    if not traces.full_schema:
        raise TraceError(f"{traces.source}: only a trace set with every column can be written")
    tmp = atomic_path(dest)
    try:
        table = traces.table.cast(trace_schema(traces.meta))
        if format == "parquet":
            pq.write_table(table, tmp, row_group_size=row_group_rows, compression="zstd", write_page_checksum=True)
        elif format == "ipc":
            with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, table.schema) as out:
                for batch in table.to_batches(max_chunksize=row_group_rows):
                    out.write_batch(batch, custom_metadata=batch_metadata(batch))
        else:
            raise TraceError(f"format must be 'parquet' or 'ipc', got {format!r}")
        _publish(tmp, dest, overwrite)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest

"""Reading traces: Parquet files and datasets, Arrow IPC streams and files, memory-mapped.

Every batch a reader yields holds whole rows, and a row is a whole sequence, so no batch ever
splits a sequence. A stream cut short by a crash is read up to its last complete batch: with
``recover=True`` that prefix is returned (and a `TraceWarning` says how much), otherwise a
`TraceError` says what could be recovered.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ead_sdk.errors import TraceError, TraceWarning
from ead_sdk.traces.integrity import check_batch, has_checksums
from ead_sdk.traces.schema import TraceMeta
from ead_sdk.traces.traceset import TraceSet
from ead_sdk.traces.validate import check_schema, validate_batch

Format = Literal["parquet", "parquet-dataset", "ipc-file", "ipc-stream"]
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_READ_ERRORS = (pa.ArrowException, OSError, EOFError, UnicodeDecodeError)
"""What pyarrow raises on a damaged file (a bad decompressor frame, a bad flatbuffer, a short read...)."""


def _short(exc: BaseException) -> str:
    """A damaged file's error in one line (pyarrow's messages can run to several)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def detect_format(path: str | os.PathLike[str]) -> Format:
    """How the trace at ``path`` is stored, from its magic bytes (a directory is a dataset)."""
    p = Path(path)
    if p.is_dir():
        return "parquet-dataset"
    if not p.exists():
        raise TraceError(f"{p}: no such trace file or dataset")
    with open(p, "rb") as f:
        head = f.read(6)
    if head[:4] == b"PAR1":
        return "parquet"
    if head == b"ARROW1":
        return "ipc-file"
    if len(head) < 4:
        raise TraceError(f"{p}: empty or truncated before the schema; nothing is recoverable")
    return "ipc-stream"


def _dataset_files(p: Path) -> list[Path]:
    files = sorted(f for f in p.rglob("*.parquet") if not f.name.startswith("."))
    if not files:
        raise TraceError(f"{p}: a directory with no .parquet files is not a trace dataset")
    return files


def read_meta(path: str | os.PathLike[str]) -> TraceMeta:
    """The `TraceMeta` of a trace file or dataset, without reading its rows."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "parquet-dataset":
        return read_meta(_dataset_files(p)[0])
    try:
        if fmt == "parquet":
            schema = pq.read_schema(p)
        elif fmt == "ipc-file":
            schema = ipc.open_file(pa.memory_map(str(p))).schema
        else:
            schema = ipc.open_stream(pa.memory_map(str(p))).schema
    except _READ_ERRORS as exc:
        raise TraceError(f"{p}: not a readable Arrow/Parquet trace ({_short(exc)})") from None
    return check_schema(schema, str(p), columns=())


def _stream_batches(p: Path, recover: bool) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    source = pa.memory_map(str(p))
    try:
        reader = ipc.open_stream(source)
    except _READ_ERRORS as exc:
        raise TraceError(f"{p}: truncated or not an Arrow stream ({_short(exc)}); nothing is recoverable") from None

    required = has_checksums(reader.schema)

    def batches() -> Iterator[pa.RecordBatch]:
        rows = count = 0
        while True:
            try:
                batch, custom = reader.read_next_batch_with_custom_metadata()
                check_batch(batch, custom, str(p), count, required)
            except StopIteration:
                break
            except (*_READ_ERRORS, TraceError) as exc:
                msg = (
                    f"{p}: truncated or damaged inside batch {count}; {count} complete batch(es) "
                    f"({rows} sequences) are recoverable ({_short(exc)})"
                )
                if not recover:
                    raise TraceError(
                        msg + "; read with recover=True (command line: --recover, or ead traces recover) to keep them"
                    ) from None
                warnings.warn(msg + "; kept them", TraceWarning, stacklevel=3)
                return
            rows += batch.num_rows
            count += 1
            yield batch
        size = source.size()
        source.seek(max(size - len(_EOS), 0))
        if source.read(len(_EOS)) != _EOS:
            warnings.warn(
                f"{p}: the stream was not closed (did the writer crash?); read its {count} "
                f"complete batch(es), {rows} sequences",
                TraceWarning,
                stacklevel=3,
            )

    return reader.schema, batches()


def _file_batches(p: Path, fmt: Format, columns: list[str] | None, batch_rows: int | None, recover: bool):
    try:
        if fmt == "parquet":
            pf = pq.ParquetFile(p, memory_map=True, page_checksum_verification=True)
            schema = pf.schema_arrow
            kwargs = {"batch_size": batch_rows} if batch_rows else {}
            return schema, pf.iter_batches(columns=columns, use_threads=False, **kwargs)
        if fmt == "ipc-file":
            reader = ipc.open_file(pa.memory_map(str(p)))
            return reader.schema, _ipc_file_batches(reader, str(p))
    except _READ_ERRORS as exc:
        raise TraceError(f"{p}: truncated or unreadable {fmt} ({_short(exc)})") from None
    return _stream_batches(p, recover)


def _ipc_file_batches(reader: ipc.RecordBatchFileReader, source: str) -> Iterator[pa.RecordBatch]:
    required = has_checksums(reader.schema)
    for i in range(reader.num_record_batches):
        batch, custom = reader.get_batch_with_custom_metadata(i)
        check_batch(batch, custom, source, i, required)
        yield batch


def _guarded(batches: Iterator[pa.RecordBatch], source: str) -> Iterator[pa.RecordBatch]:
    """``batches``, each fully validated, with a damaged file's library error turned into a `TraceError`."""
    count = 0
    while True:
        try:
            batch = next(batches)
            batch.validate(full=True)
        except StopIteration:
            return
        except _READ_ERRORS as exc:
            raise TraceError(f"{source}: damaged or truncated at batch {count} ({_short(exc)})") from None
        count += 1
        yield batch


def iter_trace_batches(
    path: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    *,
    batch_rows: int | None = None,
    recover: bool = False,
    validate: bool = True,
) -> Iterator[TraceSet]:
    """Yield the trace at ``path`` in `TraceSet` batches of whole sequences.

    Args:
        path: a Parquet file, a directory of Parquet files, or an Arrow IPC stream or file.
        columns: the columns to read (all by default); unread columns are never loaded.
        batch_rows: at most this many sequences per batch (default: as stored).
        recover: read a truncated stream up to its last complete batch instead of failing.
        validate: check every value read (`ead_sdk.traces.validate.validate_batch`).
    """
    p = Path(path)
    fmt = detect_format(p)
    files = _dataset_files(p) if fmt == "parquet-dataset" else [p]
    meta0: TraceMeta | None = None
    cols = None if columns is None else list(columns)
    for f in files:
        ffmt = "parquet" if fmt == "parquet-dataset" else fmt
        schema, batches = _file_batches(f, ffmt, cols, batch_rows, recover)
        meta = check_schema(schema, str(f), cols)
        if meta0 is None:
            meta0 = meta
        elif meta != meta0:
            raise TraceError(f"{f}: metadata differs from {files[0]} in the same dataset")
        first = 0
        for batch in _guarded(batches, str(f)):
            if cols is not None and batch.schema.names != cols:
                batch = batch.select(cols)
            step = batch_rows or max(batch.num_rows, 1)
            pieces = [batch.slice(i, step) for i in range(0, batch.num_rows, step)]
            for piece in pieces:
                if validate:
                    validate_batch(meta, piece, str(f), first)
                first += piece.num_rows
                yield TraceSet(meta, pa.Table.from_batches([piece]), str(f))


def read_traces(
    path: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    *,
    recover: bool = False,
    validate: bool = True,
) -> TraceSet:
    """The whole trace at ``path`` as one `TraceSet` (see `iter_trace_batches` for arguments)."""
    meta = read_meta(path)
    parts = list(iter_trace_batches(path, columns, recover=recover, validate=validate))
    if not parts:
        schema = _empty_schema(meta, columns)
        return TraceSet(meta, schema.empty_table(), str(path))
    table = pa.concat_tables([t.table for t in parts])
    return TraceSet(meta, table, str(path))


def _empty_schema(meta: TraceMeta, columns: Sequence[str] | None) -> pa.Schema:
    from ead_sdk.traces.schema import trace_schema

    schema = trace_schema(meta)
    if columns is None:
        return schema
    return pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)

"""Compaction: recorded IPC streams into one Parquet dataset, written atomically."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from ead_sdk.errors import TraceError
from ead_sdk.traces.reader import iter_trace_batches, read_meta
from ead_sdk.traces.schema import trace_schema


def compact(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    dest: str | os.PathLike[str],
    *,
    rows_per_file: int = 100_000,
    row_group_rows: int = 1024,
    recover: bool = False,
    overwrite: bool = False,
    compression: str = "zstd",
) -> Path:
    """Turn trace files (IPC streams, or any readable trace) into a Parquet dataset at ``dest``.

    The dataset is built in a temporary directory beside ``dest`` and renamed into place, so a
    reader never sees a half-written dataset. Every source must carry the same metadata.

    Args:
        sources: one path or several, read in order.
        dest: the dataset directory to create (``part-00000.parquet``, ...).
        rows_per_file: sequences per Parquet file.
        row_group_rows: sequences per Parquet row group (the reader's unit of batching).
        recover: keep the complete batches of a truncated stream instead of failing.
        overwrite: replace an existing ``dest``.
        compression: the Parquet codec.

    Returns:
        The path of the dataset.
    """
    paths = [Path(sources)] if isinstance(sources, (str, os.PathLike)) else [Path(s) for s in sources]
    if not paths:
        raise TraceError("compact needs at least one source")
    out = Path(dest)
    if out.exists() and not overwrite:
        raise TraceError(f"{out}: already exists (pass overwrite=True to replace it)")
    meta = read_meta(paths[0])
    for p in paths[1:]:
        if read_meta(p) != meta:
            raise TraceError(f"{p}: metadata differs from {paths[0]}; cannot compact them together")
    schema = trace_schema(meta)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        part = rows = 0
        writer: pq.ParquetWriter | None = None
        for path in paths:
            for chunk in iter_trace_batches(path, recover=recover):
                table = chunk.table.cast(schema)
                while table.num_rows:
                    if writer is None:
                        writer = pq.ParquetWriter(
                            tmp / f"part-{part:05d}.parquet", schema, compression=compression
                        )
                    take = min(table.num_rows, rows_per_file - rows)
                    writer.write_table(table.slice(0, take), row_group_size=row_group_rows)
                    table, rows = table.slice(take), rows + take
                    if rows == rows_per_file:
                        writer.close()
                        writer, part, rows = None, part + 1, 0
        if writer is not None:
            writer.close()
        elif part == 0:
            pq.write_table(schema.empty_table(), tmp / "part-00000.parquet", compression=compression)
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _replace_dir(new: Path, dest: Path) -> None:
    """Rename ``new`` to ``dest``; an existing ``dest`` is moved aside first, then removed."""
    if not dest.exists():
        os.rename(new, dest)
        return
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex}"
    os.rename(dest, old)
    os.rename(new, dest)
    shutil.rmtree(old) if old.is_dir() else old.unlink()


__all__ = ["compact"]

"""Compaction: recorded IPC streams (one or many workers' shards) into one Parquet dataset, atomically."""

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
from ead_sdk.traces.shards import ShardedTraceWriter, merge_meta


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
    reader never sees a half-written dataset. Every source must come from the same model pair,
    tokenizer and top-k; the dataset's metadata is `merge_meta` of theirs (generation settings
    that differ between shards are kept per shard).

    Args:
        sources: one path or several, read in order; a directory of `ShardedTraceWriter`
            shards (``shard-*.arrows``) stands for its shards, sorted by name.
        dest: the dataset directory to create (``part-00000.parquet``, ...).
        rows_per_file: sequences per Parquet file.
        row_group_rows: sequences per Parquet row group (the reader's unit of batching).
        recover: keep the complete batches of a truncated stream instead of failing.
        overwrite: replace an existing ``dest``.
        compression: the Parquet codec.

    Returns:
        The path of the dataset.
    """
    given = [Path(sources)] if isinstance(sources, (str, os.PathLike)) else [Path(s) for s in sources]
    paths = [shard for p in given for shard in _expand(p)]
    if not paths:
        raise TraceError(f"compact needs at least one source; none in {[str(p) for p in given]}")
    out = Path(dest)
    if out.exists() and not overwrite:
        raise TraceError(f"{out}: already exists (pass overwrite=True to replace it)")
    meta = merge_meta([read_meta(p) for p in paths], [str(p) for p in paths])
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
                            tmp / f"part-{part:05d}.parquet", schema, compression=compression, write_page_checksum=True
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
            pq.write_table(
                schema.empty_table(), tmp / "part-00000.parquet", compression=compression, write_page_checksum=True
            )
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _expand(path: Path) -> list[Path]:
    """A directory of shard streams stands for its shards; anything else for itself."""
    if path.is_dir():
        shards = ShardedTraceWriter.shards(path)
        if shards:
            return shards
    return [path]


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

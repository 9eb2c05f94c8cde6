"""Checksums that turn a corrupted trace into an error instead of altered data.

A flipped byte inside an uncompressed value buffer (an Arrow IPC stream or file) decodes to a
different, perfectly valid-looking float; only a checksum notices. The writers store a CRC-32
of the metadata JSON beside it in the schema metadata, one of each record batch in the batch's
custom metadata (IPC), and Parquet page checksums; the readers verify what is present. Files
written before checksums existed read as before.
"""

from __future__ import annotations

import zlib
from typing import Any

import pyarrow as pa

from ead_sdk.errors import TraceError
from ead_sdk.traces.schema import META_CRC_KEY

BATCH_CRC_KEY = b"ead_sdk.batch.crc32"
"""Record-batch custom-metadata key (IPC): CRC-32 (decimal) of the batch's IPC serialisation."""


def crc32(data: bytes | pa.Buffer) -> str:
    """The CRC-32 of ``data`` as a decimal string."""
    return str(zlib.crc32(memoryview(data)))


def batch_metadata(batch: pa.RecordBatch) -> dict[bytes, bytes]:
    """The custom metadata a writer stores with ``batch``: its checksum."""
    return {BATCH_CRC_KEY: crc32(batch.serialize()).encode()}


def check_batch(batch: pa.RecordBatch, custom: Any, source: str, index: int, required: bool) -> None:
    """Verify the checksum stored with batch ``index``.

    ``required`` (the schema carries a metadata checksum, so this SDK's writer wrote the file):
    a batch without one is damaged. Custom metadata without the checksum key is damaged too
    (the writer stores exactly that key). The batch's structure is validated first
    (``pyarrow.ArrowInvalid`` if broken): serialising damaged offsets would read out of bounds.
    """
    found = {} if custom is None else dict(custom)
    stored = found.get(BATCH_CRC_KEY)
    if stored is None:
        if required or found:
            raise TraceError(f"{source}: record batch {index} is damaged (its checksum is missing)")
        return
    batch.validate(full=True)
    if stored.decode("ascii", "replace") != crc32(batch.serialize()):
        raise TraceError(f"{source}: record batch {index} is corrupted (its checksum does not match its contents)")


def has_checksums(schema: pa.Schema) -> bool:
    """Whether ``schema`` was written by a writer that checksums every batch."""
    return META_CRC_KEY in (schema.metadata or {})


def check_meta(raw: bytes, metadata: dict[bytes, bytes], source: str) -> None:
    """Verify the metadata JSON ``raw`` against the checksum stored beside it (when there is one)."""
    stored = metadata.get(META_CRC_KEY)
    if stored is not None and stored.decode("ascii", "replace") != crc32(raw):
        raise TraceError(f"{source}: the trace metadata is corrupted (its checksum does not match)")

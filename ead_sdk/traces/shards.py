"""Recording at scale: one crash-safe IPC stream per worker, and the rule that merges their metadata.

Many workers (processes, Ray tasks, machines) record one trace together: each opens its own
`ShardedTraceWriter` on a shared directory and appends to its own stream, so no two writers ever
touch one file. `ead_sdk.traces.compact` then merges the shards into one Parquet dataset whose
metadata is `merge_meta` of theirs: shards of different model pairs or tokenizers are refused.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from ead_sdk.errors import TraceError
from ead_sdk.traces.schema import SequenceTrace, TraceMeta
from ead_sdk.traces.writer import TraceWriter

SHARD_SUFFIX = ".arrows"
"""File suffix of a shard stream (``shard-<id>.arrows``)."""

# Fields every shard of one trace must share, and what a difference in each means.
_IDENTITY = (
    ("format_version", "a different trace format version"),
    ("model_names", "a different model pair"),
    ("param_counts", "a different model pair"),
    ("vocab_size", "a different tokenizer"),
    ("tokenizer_fingerprint", "a different tokenizer"),
    ("k", "a different top-k"),
)


def default_shard_id() -> str:
    """A shard id unique to this process: host, process id and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ShardedTraceWriter:
    """This worker's shard of a trace recorded by many workers: its own IPC stream in ``directory``.

    Args:
        directory: the shared directory of the recording (created if missing).
        meta: the trace metadata (the same model pair and tokenizer on every worker).
        shard: this worker's shard id (default: `default_shard_id`); the stream is
            ``directory / f"shard-{shard}.arrows"``.
        batch_rows, fsync, validate: as for `TraceWriter`.

    Use as a context manager; a crash keeps every complete batch of the shard.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        meta: TraceMeta,
        *,
        shard: str | None = None,
        batch_rows: int = 16,
        fsync: bool = False,
        validate: bool = True,
    ):
        self.directory = Path(directory)
        self.shard = default_shard_id() if shard is None else str(shard)
        if not self.shard or "/" in self.shard or self.shard.startswith("."):
            raise TraceError(f"shard id {self.shard!r}: must be non-empty, without '/', not starting with '.'")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"shard-{self.shard}{SHARD_SUFFIX}"
        self._writer = TraceWriter(self.path, meta, batch_rows=batch_rows, fsync=fsync, validate=validate)

    @property
    def meta(self) -> TraceMeta:
        return self._writer.meta

    @property
    def rows_written(self) -> int:
        return self._writer.rows_written

    @property
    def closed(self) -> bool:
        return self._writer.closed

    def write(self, sequence: SequenceTrace) -> None:
        """Check and buffer one sequence (see `TraceWriter.write`)."""
        self._writer.write(sequence)

    def write_many(self, sequences: Iterable[SequenceTrace]) -> None:
        """`write` each of ``sequences``."""
        self._writer.write_many(sequences)

    def flush(self) -> None:
        """Write the buffered sequences as one record batch."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close this shard's stream (idempotent)."""
        self._writer.close()

    def __enter__(self) -> ShardedTraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def shards(directory: str | os.PathLike[str]) -> list[Path]:
        """The shard streams in ``directory``, sorted by name."""
        return sorted(p for p in Path(directory).glob(f"shard-*{SHARD_SUFFIX}") if p.is_file())


def merge_meta(metas: Sequence[TraceMeta], sources: Sequence[str]) -> TraceMeta:
    """The metadata of shards merged into one trace.

    Every identity field (format version, models and their parameter counts, vocabulary size,
    tokenizer fingerprint, k) must be equal. Generation settings equal on every shard are kept;
    settings that differ (a per-worker seed...) are kept per shard under ``"shards"``.

    Raises:
        TraceError: naming the shard, the field and both values, and what the difference means.
    """
    if not metas:
        raise TraceError("merging trace metadata needs at least one shard")
    first = metas[0]
    for meta, source in zip(metas[1:], sources[1:], strict=True):
        for name, meaning in _IDENTITY:
            a, b = getattr(first, name), getattr(meta, name)
            if a != b:
                raise TraceError(
                    f"{source}: metadata differs from {sources[0]}: {name} {b!r} != {a!r} ({meaning}); "
                    "cannot compact them together"
                )
    if all(m.generation == first.generation for m in metas[1:]):
        return first
    keys = set().union(*(m.generation for m in metas))
    common = {
        k: first.generation[k]
        for k in sorted(keys)
        if all(k in m.generation and m.generation[k] == first.generation[k] for m in metas)
    }
    per_shard = [
        {"source": Path(s).name, **{k: v for k, v in m.generation.items() if k not in common}}
        for m, s in zip(metas, sources, strict=True)
    ]
    return TraceMeta(
        format_version=first.format_version,
        model_names=first.model_names,
        param_counts=first.param_counts,
        vocab_size=first.vocab_size,
        tokenizer_fingerprint=first.tokenizer_fingerprint,
        k=first.k,
        generation={**common, "shards": per_shard},
    )


__all__ = ["SHARD_SUFFIX", "ShardedTraceWriter", "default_shard_id", "merge_meta"]

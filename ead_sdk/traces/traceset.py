"""`TraceSet`: sequences of one trace held as an Arrow table, and their flat numpy view."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ead_sdk.errors import TraceError
from ead_sdk.traces.codec import _values, batch_to_sequences, sequences_to_batch
from ead_sdk.traces.schema import META_KEY, SequenceTrace, TraceMeta, trace_schema


@dataclass(frozen=True)
class FlatTrace:
    """Every sequence's per-position arrays, concatenated into flat numpy arrays.

    Row ``offsets[i] + t`` is position ``t`` of sequence ``i``. Absent columns are ``None``.

    Attributes:
        meta: the trace metadata.
        offsets: int64 ``(n + 1,)`` start of each sequence in the flat arrays.
        prompt_lengths: int64 ``(n,)`` prompt tokens per sequence (zeros when not read).
        token_ids: int32 ``(N,)``; emitted_by: int8 ``(N,)``.
        entropy, token_logprob: float32 ``(N, M)``.
        top_ids: int32 ``(N, M, k)``; top_logprobs: float32 ``(N, M, k)``.
        correct: bool ``(n, M)`` correctness of each single-model run; ``has_correct`` bool
            ``(n,)`` marks the sequences that carry the labels.
    """

    meta: TraceMeta
    offsets: np.ndarray
    prompt_lengths: np.ndarray
    token_ids: np.ndarray | None = None
    emitted_by: np.ndarray | None = None
    entropy: np.ndarray | None = None
    token_logprob: np.ndarray | None = None
    top_ids: np.ndarray | None = None
    top_logprobs: np.ndarray | None = None
    correct: np.ndarray | None = None
    has_correct: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        """Generated tokens per sequence."""
        return np.diff(self.offsets)

    @property
    def num_sequences(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def padded(self, name: str, fill: float | int = 0) -> np.ndarray:
        """Column ``name`` time-major and padded: ``(T_max, n, ...)`` (``fill`` past each end)."""
        flat = getattr(self, name)
        if flat is None:
            raise TraceError(f"column {name!r} was not read")
        lengths = self.lengths
        n, t_max = lengths.shape[0], int(lengths.max()) if lengths.size else 0
        out = np.full((t_max, n, *flat.shape[1:]), fill, dtype=flat.dtype)
        seq = np.repeat(np.arange(n), lengths)
        pos = np.arange(flat.shape[0]) - np.repeat(self.offsets[:-1], lengths)
        out[pos, seq] = flat
        return out


def _flat_column(table: pa.Table, name: str, tail: tuple[int, ...], dtype: type) -> np.ndarray:
    chunks = table.column(name).chunks
    parts = [_values(c).reshape((-1, *tail)) for c in chunks]
    if not parts:
        return np.zeros((0, *tail), dtype)
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return out.astype(dtype, copy=False)


class TraceSet:
    """The sequences of a trace (one Arrow row each) with their metadata.

    Args:
        meta: the trace metadata.
        table: rows of the trace schema (possibly a column subset).
        source: where the rows came from, for error messages.
    """

    def __init__(self, meta: TraceMeta, table: pa.Table, source: str = "<memory>"):
        self.meta = meta
        self.table = table.replace_schema_metadata({META_KEY: meta.to_json().encode()})
        self.source = source

    @classmethod
    def from_sequences(cls, meta: TraceMeta, sequences: Sequence[SequenceTrace], source: str = "<memory>") -> TraceSet:
        """A trace set of ``sequences`` (shapes checked; see `validate_traces` for values)."""
        batch = sequences_to_batch(meta, list(sequences))
        return cls(meta, pa.Table.from_batches([batch]), source)

    @classmethod
    def concat(cls, sets: Sequence[TraceSet]) -> TraceSet:
        """The sequences of several trace sets with equal metadata, one after another."""
        if not sets:
            raise TraceError("concat needs at least one trace set")
        meta = sets[0].meta
        for s in sets[1:]:
            if s.meta != meta:
                raise TraceError(f"{s.source}: metadata differs from {sets[0].source}; cannot concatenate")
        return cls(meta, pa.concat_tables([s.table for s in sets]), sets[0].source)

    # -- rows ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.table.column_names)

    @property
    def num_tokens(self) -> int:
        """Generated tokens over all sequences."""
        if "token_ids" not in self.columns:
            raise TraceError(f"{self.source}: column 'token_ids' was not read")
        import pyarrow.compute as pc

        return int(pc.sum(pc.list_value_length(self.table.column("token_ids"))).as_py() or 0)

    def sequences(self) -> list[SequenceTrace]:
        """Every row as a `SequenceTrace` (arrays are views of the table where possible)."""
        return batch_to_sequences(self.meta, self.table)

    def __iter__(self) -> Iterator[SequenceTrace]:
        for batch in self.table.to_batches():
            yield from batch_to_sequences(self.meta, batch)

    def __getitem__(self, index: int) -> SequenceTrace:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sequence {index} out of range for {n} sequences")
        return batch_to_sequences(self.meta, self.table.slice(index % n, 1))[0]

    def take(self, indices: Sequence[int] | np.ndarray) -> TraceSet:
        """The sequences at ``indices`` (integers in ``[0, len)``), in that order."""
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise TraceError(f"{self.source}: take needs a 1-d list of integer sequence indices, got {idx.dtype}")
        bad = (idx < 0) | (idx >= len(self))
        if bad.any():
            first = idx[bad][0].item()
            raise TraceError(f"{self.source}: sequence index {first} out of range for {len(self)} sequences")
        return TraceSet(self.meta, self.table.take(pa.array(idx.astype(np.int64))), self.source)

    def split(self, fraction: float, seed: int = 0) -> tuple[TraceSet, TraceSet]:
        """A random ``(fraction, 1 - fraction)`` split of the sequences (e.g. calibrate / held out)."""
        if not 0.0 < fraction < 1.0:
            raise TraceError(f"split fraction must be in (0, 1), got {fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        cut = int(round(fraction * len(self)))
        return self.take(np.sort(order[:cut])), self.take(np.sort(order[cut:]))

    def to_batches(self, max_rows: int | None = None) -> list[pa.RecordBatch]:
        """Record batches of whole rows, with the full trace schema metadata."""
        schema = self.table.schema
        return [b.replace_schema_metadata(schema.metadata) for b in self.table.to_batches(max_rows)]

    @property
    def full_schema(self) -> bool:
        """Whether every column of the trace schema is present (needed to write)."""
        return self.table.schema.names == trace_schema(self.meta).names

    # -- flat numpy view --------------------------------------------------------------------
    def flat(self) -> FlatTrace:
        """The per-position columns present as flat numpy arrays (zero-copy for one chunk)."""
        m, k = self.meta.num_models, int(self.meta.k)
        names = set(self.columns)
        length_col = next((c for c in ("token_ids", "entropy", "emitted_by") if c in names), None)
        if length_col is None:
            raise TraceError(f"{self.source}: reading a flat trace needs 'token_ids' or 'entropy'")
        import pyarrow.compute as pc

        lengths = pc.list_value_length(self.table.column(length_col)).to_numpy(zero_copy_only=False)
        offsets = np.zeros(len(self) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if "prompt_ids" in names:
            prompt = pc.list_value_length(self.table.column("prompt_ids")).to_numpy(zero_copy_only=False)
        else:
            prompt = np.zeros(len(self), np.int64)
        cols: dict[str, np.ndarray | None] = {}
        spec = {
            "token_ids": ((), np.int32),
            "emitted_by": ((), np.int8),
            "entropy": ((m,), np.float32),
            "token_logprob": ((m,), np.float32),
            "top_ids": ((m, k), np.int32),
            "top_logprobs": ((m, k), np.float32),
        }
        for name, (tail, dtype) in spec.items():
            cols[name] = _flat_column(self.table, name, tail, dtype) if name in names else None
        correct = has = None
        if "correct" in names:
            col = self.table.column("correct")
            has = col.is_valid().to_numpy(zero_copy_only=False)
            filled = pc.fill_null(col, pa.scalar([False] * m, type=col.type))
            correct = _flat_column(pa.table({"c": filled}), "c", (m,), np.bool_)
        return FlatTrace(
            meta=self.meta,
            offsets=offsets,
            prompt_lengths=np.asarray(prompt, np.int64),
            correct=correct,
            has_correct=has,
            **cols,
        )

    def __repr__(self) -> str:
        return (
            f"TraceSet({len(self)} sequences, models={list(self.meta.model_names)}, "
            f"k={self.meta.k}, source={self.source!r})"
        )

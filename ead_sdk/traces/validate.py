"""Validation of trace data, with errors that name the file, the sequence and the field."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ead_sdk.errors import TraceError
from ead_sdk.traces.codec import _values, sequences_to_batch
from ead_sdk.traces.schema import META_KEY, POSITION_COLUMNS, SequenceTrace, TraceMeta, trace_schema

LOGPROB_SLACK = 1e-3
"""Log-probabilities up to this far above 0 are accepted (float rounding of log-softmax)."""


def meta_of(schema: pa.Schema, source: str) -> TraceMeta:
    """The `TraceMeta` stored in ``schema``'s metadata; `TraceError` if it is not a trace."""
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise TraceError(f"{source}: not an ead-sdk trace (no {META_KEY.decode()!r} schema metadata)")
    return TraceMeta.from_json(raw, source=source)


def check_schema(schema: pa.Schema, source: str, columns: Iterable[str] | None = None) -> TraceMeta:
    """Check that ``schema`` is a trace schema holding ``columns`` (all by default), typed right."""
    meta = meta_of(schema, source)
    expected = trace_schema(meta)
    wanted = list(expected.names if columns is None else columns)
    unknown = [c for c in wanted if c not in expected.names]
    if unknown:
        raise TraceError(f"{source}: unknown trace column(s) {unknown}; known: {expected.names}")
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise TraceError(f"{source}: missing column(s) {missing}")
    for name in wanted:
        got, want = schema.field(name).type, expected.field(name).type
        if not got.equals(want):
            raise TraceError(f"{source}: column {name!r} has type {got}, expected {want}")
    return meta


class _Rows:
    """Names rows of one batch in error messages: file, row number and ``sequence_id``."""

    def __init__(self, batch: pa.RecordBatch, source: str, first_row: int):
        self.source, self.first_row = source, first_row
        names = batch.schema.names
        self.ids = batch.column("sequence_id").to_pylist() if "sequence_id" in names else None

    def __call__(self, row: int, field: str) -> str:
        sid = self.ids[row] if self.ids is not None else None
        tag = f" (sequence_id {sid})" if sid is not None else ""
        return f"{self.source}: sequence {self.first_row + row}{tag}, field {field!r}"


def _first(bad: np.ndarray) -> int | None:
    hits = np.flatnonzero(bad)
    return int(hits[0]) if hits.size else None


def validate_batch(meta: TraceMeta, batch: pa.RecordBatch, source: str, first_row: int = 0) -> None:
    """Check every value of ``batch`` (the columns it has) against ``meta``.

    Raises:
        TraceError: naming the file, the sequence (row and ``sequence_id``) and the field of the
            first problem: nulls, per-position arrays of unequal length, NaN/negative/infinite
            entropies, log-probabilities above 0 or NaN, token ids outside the vocabulary, model
            indices outside the ladder, top-k log-probabilities not sorted descending.
    """
    rows = _Rows(batch, source, first_row)
    names = batch.schema.names
    m, k, vocab = meta.num_models, int(meta.k), int(meta.vocab_size)
    for name in names:
        col = batch.column(name)
        if name not in ("sequence_id", "prompt_id", "reference", "correct", "extra") and col.null_count:
            row = _first(col.is_null().to_numpy(zero_copy_only=False))
            raise TraceError(f"{rows(row, name)}: is null")

    present = [c for c in POSITION_COLUMNS if c in names]
    lengths = {c: pc.list_value_length(batch.column(c)).to_numpy(zero_copy_only=False) for c in present}
    if present:
        ref = present[0]
        for name in present[1:]:
            row = _first(lengths[name] != lengths[ref])
            if row is not None:
                raise TraceError(
                    f"{rows(row, name)}: has {lengths[name][row]} positions but {ref!r} has "
                    f"{lengths[ref][row]} (per-position arrays must have equal length)"
                )
        offsets = np.zeros(batch.num_rows + 1, np.int64)
        np.cumsum(lengths[ref], out=offsets[1:])

    def locate(flat_index: int, width: int) -> tuple[int, int, int]:
        pos = flat_index // width
        row = int(np.searchsorted(offsets, pos, side="right") - 1)
        return row, pos - int(offsets[row]), flat_index % width

    def check(name: str, bad_of: callable, what: str, width: int, per: str) -> None:
        if name not in names:
            return
        values = _values(batch.column(name))
        with np.errstate(invalid="ignore"):
            flat = _first(bad_of(values))
        if flat is not None:
            row, pos, inner = locate(flat, width)
            detail = f"position {pos}"
            if per == "model":
                detail += f", model {inner}"
            elif per == "model_rank":
                detail += f", model {inner // k}, rank {inner % k}"
            raise TraceError(f"{rows(row, name)}: {detail}: {what} (value {values[flat].item()!r})")

    def outside_vocab(v: np.ndarray) -> np.ndarray:
        return (v < 0) | (v >= vocab)

    if "prompt_ids" in names:
        values = _values(batch.column("prompt_ids"))
        flat = _first(outside_vocab(values))
        if flat is not None:
            plen = pc.list_value_length(batch.column("prompt_ids")).to_numpy(zero_copy_only=False)
            poff = np.concatenate([[0], np.cumsum(plen)])
            row = int(np.searchsorted(poff, flat, side="right") - 1)
            raise TraceError(
                f"{rows(row, 'prompt_ids')}: prompt position {flat - poff[row]}: token id "
                f"{values[flat]} outside the vocabulary [0, {vocab})"
            )
    check("token_ids", outside_vocab, f"token id outside the vocabulary [0, {vocab})", 1, "")
    check("emitted_by", lambda v: (v < 0) | (v >= m), f"model index outside [0, {m})", 1, "")
    check("entropy", lambda v: ~np.isfinite(v) | (v < 0), "entropy must be finite and >= 0", m, "model")
    check(
        "token_logprob",
        lambda v: np.isnan(v) | (v > LOGPROB_SLACK),
        "log-probability must be <= 0 and not NaN",
        m,
        "model",
    )
    if k > 0:
        check("top_ids", outside_vocab, f"token id outside the vocabulary [0, {vocab})", m * k, "model_rank")
        check(
            "top_logprobs",
            lambda v: np.isnan(v) | (v > LOGPROB_SLACK),
            "log-probability must be <= 0 and not NaN",
            m * k,
            "model_rank",
        )
        if "top_logprobs" in names and k > 1:
            values = _values(batch.column("top_logprobs")).reshape(-1, k)
            rising = np.diff(values, axis=1) > 1e-6
            flat = _first(rising.any(axis=1))
            if flat is not None:
                row, pos, model = locate(flat, m)
                raise TraceError(
                    f"{rows(row, 'top_logprobs')}: position {pos}, model {model}: top-k "
                    f"log-probabilities must be sorted descending, got {values[flat].tolist()}"
                )


def validate_table(meta: TraceMeta, table: pa.Table, source: str) -> None:
    """`validate_batch` over every batch of ``table`` (rows numbered across batches)."""
    first = 0
    for batch in table.to_batches():
        validate_batch(meta, batch, source, first)
        first += batch.num_rows


def validate_sequence(meta: TraceMeta, seq: SequenceTrace, source: str = "<memory>") -> None:
    """Check the shapes and values of one sequence against ``meta``."""
    try:
        batch = sequences_to_batch(meta, [seq])
    except TraceError as exc:
        raise TraceError(f"{source}: {exc}") from None
    validate_batch(meta, batch, source)

"""Validation of trace data, with errors that name the file, the sequence and the field."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ead_sdk import strict_json
from ead_sdk.errors import TraceError
from ead_sdk.traces.codec import _values, sequences_to_batch
from ead_sdk.traces.integrity import check_meta
from ead_sdk.traces.schema import META_KEY, POSITION_COLUMNS, SequenceTrace, TraceMeta, trace_schema

LOGPROB_SLACK = 1e-3
"""Log-probabilities up to this far above 0 are accepted (float rounding of log-softmax)."""


def meta_of(schema: pa.Schema, source: str) -> TraceMeta:
    """The `TraceMeta` stored in ``schema``'s metadata; `TraceError` if it is not a trace."""
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise TraceError(f"{source}: not an ead-sdk trace (no {META_KEY.decode()!r} schema metadata)")
    check_meta(raw, dict(schema.metadata), source)
    return TraceMeta.from_json(raw, source=source)


def check_schema(schema: pa.Schema, source: str, columns: Iterable[str] | None = None) -> TraceMeta:
    """Check that ``schema`` is a trace schema holding ``columns`` (all by default), typed right."""
    try:
        return _check_schema(schema, source, columns)
    except (UnicodeDecodeError, pa.ArrowException) as exc:  # names or metadata that are not text: damage
        raise TraceError(f"{source}: damaged schema ({str(exc)[:120]})") from None


def _check_schema(schema: pa.Schema, source: str, columns: Iterable[str] | None) -> TraceMeta:
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


OPTIONAL_COLUMNS = ("sequence_id", "prompt_id", "reference", "correct", "extra")
"""Columns whose rows may be null (a missing task field); their nested values may not."""


def validate_batch(meta: TraceMeta, batch: pa.RecordBatch, source: str, first_row: int = 0) -> None:
    """Check every value of ``batch`` (the columns it has) against ``meta``.

    Raises:
        TraceError: naming the file, the sequence (row and ``sequence_id``) and the field of the
            first problem: nulls (at any nesting level), per-position arrays of unequal length,
            NaN/negative/infinite entropies, log-probabilities above 0 or NaN, token ids outside
            the vocabulary, model indices outside the ladder, top-k log-probabilities not sorted
            descending, an ``extra`` that is not a JSON object.
    """
    rows = _Rows(batch, source, first_row)
    _check_nulls(batch, rows)
    offsets = _check_lengths(batch, rows)
    _check_prompt_ids(batch, rows, int(meta.vocab_size))
    if offsets is not None:
        _check_positions(meta, batch, rows, _Locator(offsets))
    _check_extra(batch, rows)


def _nested_null_row(col: pa.Array) -> int | None:
    """The row of the first null inside a (nested) list column's non-null rows, or ``None``."""
    valid = np.flatnonzero(col.is_valid().to_numpy(zero_copy_only=False))
    if valid.size < len(col):
        col = col.take(pa.array(valid))
    row_of = valid
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
        parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
        row_of, col = row_of[parents], col.flatten()
        if col.null_count:
            return int(row_of[_first(col.is_null().to_numpy(zero_copy_only=False))])
    return None


def _check_nulls(batch: pa.RecordBatch, rows: _Rows) -> None:
    """Nulls: none in a required column, none inside any list at any level."""
    for name in batch.schema.names:
        col = batch.column(name)
        if name not in OPTIONAL_COLUMNS and col.null_count:
            row = _first(col.is_null().to_numpy(zero_copy_only=False))
            raise TraceError(f"{rows(row, name)}: is null")
        row = _nested_null_row(col)
        if row is not None:
            raise TraceError(f"{rows(row, name)}: holds a null value inside its list")


def _check_lengths(batch: pa.RecordBatch, rows: _Rows) -> np.ndarray | None:
    """Per-position columns of equal length per row; the row offsets into the position axis."""
    names = batch.schema.names
    present = [c for c in POSITION_COLUMNS if c in names]
    if not present:
        return None
    lengths = {c: pc.list_value_length(batch.column(c)).to_numpy(zero_copy_only=False) for c in present}
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
    return offsets


class _Locator:
    """Maps a flat index into a per-position column back to (row, position, inner index)."""

    def __init__(self, offsets: np.ndarray):
        self.offsets = offsets

    def __call__(self, flat_index: int, width: int) -> tuple[int, int, int]:
        pos = flat_index // width
        row = int(np.searchsorted(self.offsets, pos, side="right") - 1)
        return row, pos - int(self.offsets[row]), flat_index % width


def _check_prompt_ids(batch: pa.RecordBatch, rows: _Rows, vocab: int) -> None:
    if "prompt_ids" not in batch.schema.names:
        return
    values = _values(batch.column("prompt_ids"))
    flat = _first((values < 0) | (values >= vocab))
    if flat is not None:
        plen = pc.list_value_length(batch.column("prompt_ids")).to_numpy(zero_copy_only=False)
        poff = np.concatenate([[0], np.cumsum(plen)])
        row = int(np.searchsorted(poff, flat, side="right") - 1)
        raise TraceError(
            f"{rows(row, 'prompt_ids')}: prompt position {flat - poff[row]}: token id "
            f"{values[flat]} outside the vocabulary [0, {vocab})"
        )


def _check_positions(meta: TraceMeta, batch: pa.RecordBatch, rows: _Rows, locate: _Locator) -> None:
    """Value ranges of every per-position column, then the order of the top-k log-probabilities."""
    m, k, vocab = meta.num_models, int(meta.k), int(meta.vocab_size)
    names = batch.schema.names

    def outside_vocab(v: np.ndarray) -> np.ndarray:
        return (v < 0) | (v >= vocab)

    def bad_logprob(v: np.ndarray) -> np.ndarray:
        return np.isnan(v) | (v > LOGPROB_SLACK)

    lp_rule = "log-probability must be <= 0 and not NaN"
    checks = [
        ("token_ids", outside_vocab, f"token id outside the vocabulary [0, {vocab})", 1, ""),
        ("emitted_by", lambda v: (v < 0) | (v >= m), f"model index outside [0, {m})", 1, ""),
        ("entropy", lambda v: ~np.isfinite(v) | (v < 0), "entropy must be finite and >= 0", m, "model"),
        ("token_logprob", bad_logprob, lp_rule, m, "model"),
    ]
    if k > 0:
        checks += [
            ("top_ids", outside_vocab, f"token id outside the vocabulary [0, {vocab})", m * k, "model_rank"),
            ("top_logprobs", bad_logprob, lp_rule, m * k, "model_rank"),
        ]
    for name, bad_of, what, width, per in checks:
        if name in names:
            _check_values(batch, rows, locate, name, bad_of, what, width, per, k)
    if k > 1 and "top_logprobs" in names:
        values = _values(batch.column("top_logprobs")).reshape(-1, k)
        flat = _first((np.diff(values, axis=1) > 1e-6).any(axis=1))
        if flat is not None:
            row, pos, model = locate(flat, m)
            raise TraceError(
                f"{rows(row, 'top_logprobs')}: position {pos}, model {model}: top-k "
                f"log-probabilities must be sorted descending, got {values[flat].tolist()}"
            )


def _check_values(
    batch: pa.RecordBatch,
    rows: _Rows,
    locate: _Locator,
    name: str,
    bad_of: Callable[[np.ndarray], np.ndarray],
    what: str,
    width: int,
    per: str,
    k: int,
) -> None:
    values = _values(batch.column(name))
    with np.errstate(invalid="ignore"):
        flat = _first(bad_of(values))
    if flat is None:
        return
    row, pos, inner = locate(flat, width)
    detail = f"position {pos}"
    if per == "model":
        detail += f", model {inner}"
    elif per == "model_rank":
        detail += f", model {inner // k}, rank {inner % k}"
    raise TraceError(f"{rows(row, name)}: {detail}: {what} (value {values[flat].item()!r})")


def _check_extra(batch: pa.RecordBatch, rows: _Rows) -> None:
    """Each non-null ``extra`` is a JSON object (what reading the sequence's fields needs)."""
    if "extra" not in batch.schema.names:
        return
    for row, text in enumerate(batch.column("extra").to_pylist()):
        if text is None or text == "":
            continue
        try:
            strict_json.loads_object(text)
        except ValueError as exc:
            raise TraceError(f"{rows(row, 'extra')}: {exc}") from None


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

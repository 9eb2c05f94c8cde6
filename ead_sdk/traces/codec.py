"""Conversion between `SequenceTrace` objects and Arrow record batches of the trace schema."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ead_sdk import strict_json
from ead_sdk.errors import TraceError
from ead_sdk.traces.schema import SequenceTrace, TraceMeta, trace_schema

_KNOWN_FIELDS = ("sequence_id", "prompt_id", "reference", "correct")


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    ends = np.cumsum(np.asarray(lengths, np.int64))
    if ends.size and int(ends[-1]) >= 2**31:
        raise TraceError("one record batch cannot hold 2**31 values; write fewer sequences per batch")
    return np.concatenate([np.zeros(1, np.int32), ends.astype(np.int32)])


def _nested(values: np.ndarray, width: int, lengths: Sequence[int], dtype: pa.DataType) -> pa.Array:
    """``list<fixed_size_list<dtype, width>>`` from a flat ``(sum(lengths) * width,)`` buffer."""
    inner = pa.FixedSizeListArray.from_arrays(pa.array(values, type=dtype), width)
    return pa.ListArray.from_arrays(pa.array(_offsets(lengths)), inner)


def _flat(values: np.ndarray, lengths: Sequence[int], dtype: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(_offsets(lengths)), pa.array(values, type=dtype))


def _check_shapes(meta: TraceMeta, seq: SequenceTrace, row: int) -> None:
    m, k, t = meta.num_models, int(meta.k), seq.length
    expect = {"emitted_by": (t,), "entropy": (t, m), "token_logprob": (t, m)}
    if k > 0:
        expect.update(top_ids=(t, m, k), top_logprobs=(t, m, k))
    for name, shape in expect.items():
        value = getattr(seq, name)
        if value is None:
            raise TraceError(f"sequence {row}: field {name!r} is missing (the trace records k={k})")
        if tuple(np.shape(value)) != shape:
            raise TraceError(
                f"sequence {row}: field {name!r} has shape {tuple(np.shape(value))}, expected {shape} "
                f"({t} tokens, {m} models, k={k})"
            )
    correct = seq.fields.get("correct")
    if correct is not None and len(correct) != m:
        raise TraceError(f"sequence {row}: field 'correct' has {len(correct)} values for {m} models")


def sequences_to_batch(meta: TraceMeta, sequences: Sequence[SequenceTrace], first_row: int = 0) -> pa.RecordBatch:
    """One record batch (one row per sequence) of the trace schema of ``meta``.

    Shapes are checked here (errors number sequences from ``first_row``); values are checked
    by `ead_sdk.traces.validate`.
    """
    k = int(meta.k)
    for row, seq in enumerate(sequences):
        _check_shapes(meta, seq, first_row + row)
    lengths = [s.length for s in sequences]
    prompt_lengths = [int(np.shape(s.prompt_ids)[0]) for s in sequences]

    def cat(name: str, dtype: Any) -> np.ndarray | None:
        if k == 0 and name.startswith("top_"):
            return None
        parts = [np.asarray(getattr(s, name), dtype).reshape(-1) for s in sequences]
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    fields = [s.fields for s in sequences]
    extras = []
    for row, f in enumerate(fields):
        extra = {key: value for key, value in f.items() if key not in _KNOWN_FIELDS}
        try:
            extras.append(json.dumps(extra, sort_keys=True) if extra else None)
        except (TypeError, ValueError) as exc:
            raise TraceError(f"sequence {first_row + row}: task fields must be JSON-able ({exc})") from None
    return arrays_to_batch(
        meta,
        lengths=lengths,
        prompt_lengths=prompt_lengths,
        prompt_ids=cat("prompt_ids", np.int32),
        token_ids=cat("token_ids", np.int32),
        emitted_by=cat("emitted_by", np.int8),
        entropy=cat("entropy", np.float32),
        token_logprob=cat("token_logprob", np.float32),
        top_ids=cat("top_ids", np.int32),
        top_logprobs=cat("top_logprobs", np.float32),
        sequence_id=[f.get("sequence_id") for f in fields],
        prompt_id=[None if f.get("prompt_id") is None else str(f["prompt_id"]) for f in fields],
        reference=[None if f.get("reference") is None else str(f["reference"]) for f in fields],
        correct=[None if f.get("correct") is None else [bool(c) for c in f["correct"]] for f in fields],
        extra=extras,
    )


def arrays_to_batch(
    meta: TraceMeta,
    *,
    lengths: Sequence[int] | np.ndarray,
    prompt_lengths: Sequence[int] | np.ndarray,
    prompt_ids: np.ndarray,
    token_ids: np.ndarray,
    emitted_by: np.ndarray,
    entropy: np.ndarray,
    token_logprob: np.ndarray,
    top_ids: np.ndarray | None = None,
    top_logprobs: np.ndarray | None = None,
    sequence_id: Sequence[int | None] | np.ndarray | None = None,
    prompt_id: Sequence[str | None] | None = None,
    reference: Sequence[str | None] | None = None,
    correct: Sequence[Sequence[bool] | None] | np.ndarray | None = None,
    extra: Sequence[str | None] | None = None,
) -> pa.RecordBatch:
    """A record batch from flat arrays (all sequences concatenated; see `FlatTrace`).

    The fast path for generators: no per-sequence Python objects. Field columns are per
    sequence; ``None`` leaves a column null.
    """
    schema = trace_schema(meta)
    m, k, n = meta.num_models, int(meta.k), len(lengths)
    total = int(np.sum(lengths, dtype=np.int64))
    for name, value, width in (
        ("token_ids", token_ids, 1),
        ("emitted_by", emitted_by, 1),
        ("entropy", entropy, m),
        ("token_logprob", token_logprob, m),
        ("top_ids", top_ids, m * k),
        ("top_logprobs", top_logprobs, m * k),
    ):
        if value is None and (k == 0 and name.startswith("top_")):
            continue
        if value is None:
            raise TraceError(f"field {name!r} is missing (the trace records k={k})")
        if np.size(value) != total * width:
            raise TraceError(f"field {name!r} has {np.size(value)} values for {total} tokens x {width}")
    columns: dict[str, pa.Array] = {
        "prompt_ids": _flat(np.asarray(prompt_ids, np.int32).reshape(-1), prompt_lengths, pa.int32()),
        "token_ids": _flat(np.asarray(token_ids, np.int32).reshape(-1), lengths, pa.int32()),
        "emitted_by": _flat(np.asarray(emitted_by, np.int8).reshape(-1), lengths, pa.int8()),
        "entropy": _nested(np.asarray(entropy, np.float32).reshape(-1), m, lengths, pa.float32()),
        "token_logprob": _nested(np.asarray(token_logprob, np.float32).reshape(-1), m, lengths, pa.float32()),
    }
    if k > 0:
        columns["top_ids"] = _nested(np.asarray(top_ids, np.int32).reshape(-1), m * k, lengths, pa.int32())
        columns["top_logprobs"] = _nested(
            np.asarray(top_logprobs, np.float32).reshape(-1), m * k, lengths, pa.float32()
        )
    nulls = [None] * n
    columns["sequence_id"] = pa.array(nulls if sequence_id is None else sequence_id, pa.int64())
    columns["prompt_id"] = pa.array(nulls if prompt_id is None else prompt_id, pa.string())
    columns["reference"] = pa.array(nulls if reference is None else reference, pa.string())
    if isinstance(correct, np.ndarray):
        correct = correct.astype(bool).tolist()
    columns["correct"] = pa.array(nulls if correct is None else correct, pa.list_(pa.bool_(), m))
    columns["extra"] = pa.array(nulls if extra is None else extra, pa.string())
    return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)


def _values(column: pa.Array) -> np.ndarray:
    """The flat values of a (possibly nested, possibly sliced) list column, zero-copy if possible."""
    while pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        column = column.flatten()
    return column.to_numpy(zero_copy_only=False)


def _extra_fields(text: str, row: int) -> dict[str, Any]:
    try:
        return strict_json.loads_object(text)
    except ValueError as exc:
        raise TraceError(f"row {row}: field 'extra' {exc}") from None


def batch_to_sequences(meta: TraceMeta, batch: pa.RecordBatch | pa.Table) -> list[SequenceTrace]:
    """The rows of ``batch`` as `SequenceTrace` objects (columns absent from ``batch`` are empty)."""
    if isinstance(batch, pa.Table):
        return [s for b in batch.to_batches() for s in batch_to_sequences(meta, b)]
    m, k = meta.num_models, int(meta.k)
    names = set(batch.schema.names)
    n = batch.num_rows

    def split(name: str, tail: tuple[int, ...], dtype: Any) -> list[np.ndarray | None]:
        if name not in names:
            return [None] * n
        col = batch.column(name)
        flat = _values(col).astype(dtype, copy=False).reshape((-1, *tail))
        offsets = col.offsets.to_numpy()
        start = offsets[0]
        return [flat[offsets[i] - start : offsets[i + 1] - start] for i in range(n)]

    prompt = split("prompt_ids", (), np.int32)
    tokens = split("token_ids", (), np.int32)
    emitted = split("emitted_by", (), np.int8)
    ent = split("entropy", (m,), np.float32)
    lp = split("token_logprob", (m,), np.float32)
    tid = split("top_ids", (m, k), np.int32) if k else [None] * n
    tlp = split("top_logprobs", (m, k), np.float32) if k else [None] * n
    py = {name: batch.column(name).to_pylist() for name in _KNOWN_FIELDS + ("extra",) if name in names}
    out = []
    for i in range(n):
        fields: dict[str, Any] = {}
        for name in _KNOWN_FIELDS:
            value = py.get(name, [None] * n)[i]
            if value is not None:
                fields[name] = tuple(value) if name == "correct" else value
        extra = py.get("extra", [None] * n)[i]
        if extra:
            fields.update(_extra_fields(extra, i))
        empty_i = np.zeros(0, np.int32)
        out.append(
            SequenceTrace(
                prompt_ids=prompt[i] if prompt[i] is not None else empty_i,
                token_ids=tokens[i] if tokens[i] is not None else empty_i,
                emitted_by=emitted[i] if emitted[i] is not None else np.zeros(0, np.int8),
                entropy=ent[i] if ent[i] is not None else np.zeros((0, m), np.float32),
                token_logprob=lp[i] if lp[i] is not None else np.zeros((0, m), np.float32),
                top_ids=tid[i],
                top_logprobs=tlp[i],
                fields=fields,
            )
        )
    return out

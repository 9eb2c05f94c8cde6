"""Logit traces: the record format, its writer, reader, validation and compaction.

A trace holds, for each generated sequence, every model's next-token signals scored
teacher-forced along one trajectory. See ``docs/trace-format.md``.
"""

from __future__ import annotations

from ead_sdk.traces.codec import batch_to_sequences, sequences_to_batch
from ead_sdk.traces.compact import compact
from ead_sdk.traces.reader import TraceWarning, detect_format, iter_trace_batches, read_meta, read_traces
from ead_sdk.traces.schema import (
    FIELD_COLUMNS,
    FORMAT_VERSION,
    META_KEY,
    POSITION_COLUMNS,
    SequenceTrace,
    TraceMeta,
    trace_schema,
)
from ead_sdk.traces.shards import ShardedTraceWriter, merge_meta
from ead_sdk.traces.traceset import FlatTrace, TraceSet
from ead_sdk.traces.validate import check_schema, validate_batch, validate_sequence, validate_table
from ead_sdk.traces.writer import TraceWriter, write_traces

__all__ = [
    "FIELD_COLUMNS",
    "FORMAT_VERSION",
    "META_KEY",
    "POSITION_COLUMNS",
    "FlatTrace",
    "SequenceTrace",
    "ShardedTraceWriter",
    "TraceMeta",
    "TraceSet",
    "TraceWarning",
    "TraceWriter",
    "batch_to_sequences",
    "check_schema",
    "compact",
    "detect_format",
    "iter_trace_batches",
    "merge_meta",
    "read_meta",
    "read_traces",
    "sequences_to_batch",
    "trace_schema",
    "validate_batch",
    "validate_sequence",
    "validate_table",
    "write_traces",
]

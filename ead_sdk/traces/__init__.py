"""Logit traces: the record format, its writer, reader, validation and compaction.

A trace holds, for each generated sequence, every model's next-token signals scored
teacher-forced along one trajectory. See ``docs/trace-format.md``.
"""

from __future__ import annotations

from ead_sdk.traces.schema import (
    FIELD_COLUMNS,
    FORMAT_VERSION,
    META_KEY,
    POSITION_COLUMNS,
    SequenceTrace,
    TraceMeta,
    trace_schema,
)

__all__ = [
    "FIELD_COLUMNS",
    "FORMAT_VERSION",
    "META_KEY",
    "POSITION_COLUMNS",
    "SequenceTrace",
    "TraceMeta",
    "trace_schema",
]

"""Recovery: a recording stream left behind by a crash, turned into a trace file.

A writer killed mid-run (``kill -9``, a machine crash) leaves an Arrow IPC stream without its
end-of-stream marker, possibly cut inside the batch being written. Every complete batch before
the cut is kept; the batch in flight is lost.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from ead_sdk.traces.reader import TraceWarning, read_traces
from ead_sdk.traces.writer import write_traces


@dataclass(frozen=True)
class Recovered:
    """What `recover` wrote.

    Attributes:
        path: the trace file written.
        sequences: how many sequences it holds.
        tokens: how many generated tokens they hold.
        notes: what the reader said about the stream (cut inside a batch, not closed), if anything.
    """

    path: Path
    sequences: int
    tokens: int
    notes: tuple[str, ...]


def recover(
    stream: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Recovered:
    """Write every complete sequence of a (possibly truncated) trace stream to ``out`` as Parquet.

    The stream itself is left untouched; delete it once ``out`` is checked.

    Raises:
        TraceError: the stream is unreadable before its first batch, holds invalid values, or
            ``out`` exists (without ``overwrite``).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceWarning)
        traces = read_traces(stream, recover=True)
    notes = tuple(str(w.message) for w in caught if issubclass(w.category, TraceWarning))
    path = write_traces(traces, out, overwrite=overwrite)
    return Recovered(path, len(traces), int(traces.num_tokens), notes)


__all__ = ["Recovered", "recover"]

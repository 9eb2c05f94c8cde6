"""A crash-safe recording of many prompts into one trace file (what ``ead record`` runs).

Finished sequences go, as they finish, to an Arrow IPC stream next to the output
(``OUT.arrows`` beside ``OUT``), created exclusively: a second run to the same output is refused
while the stream exists, so two runs never overwrite each other. At the end (or on SIGINT or
SIGTERM) the stream is written to ``OUT`` as Parquet and removed. After a ``kill -9`` the stream
stays; `ead_sdk.traces.recover` (``ead traces recover``) turns it into a trace, losing at most the
sequences that had not finished.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ead_sdk.backend import Backend, Sampling
from ead_sdk.errors import BackendError, TraceError
from ead_sdk.interface import Policy
from ead_sdk.recording import recording_meta

STREAM_SUFFIX = ".arrows"


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so that the same clean-up runs."""


def stream_path(out: str | Path) -> Path:
    """Where a recording into ``out`` keeps its stream of finished sequences: ``OUT.arrows``."""
    out = Path(out)
    return out.with_name(out.name + STREAM_SUFFIX)


@dataclass
class RecordOutcome:
    """How a recording ended.

    Attributes:
        out: the trace written (``None`` when nothing was written).
        stream: the stream of finished sequences (removed once ``out`` is written).
        prompts: the number of prompts asked for.
        sequences: sequences in ``out``.
        tokens: generated tokens in ``out``.
        problems: prompts not recorded: ``(prompt index, what went wrong)``.
        interrupted: ``"SIGINT"`` or ``"SIGTERM"`` when the run was stopped early.
    """

    out: Path | None
    stream: Path
    prompts: int
    sequences: int = 0
    tokens: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)
    interrupted: str | None = None


class _Signals:
    """SIGINT and SIGTERM as exceptions, held back while a sequence is being written to the stream.

    An interrupt landing between writing a record batch and forgetting it would write that
    batch twice; one landing before the write would drop a finished sequence. Inside `critical`
    the signal is remembered and raised when the write is done.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending: type[KeyboardInterrupt] | None = None

    def handler(self, signum: int, frame: Any) -> None:
        exc = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        if self.depth:
            self.pending = exc
            return
        raise exc

    @contextmanager
    def critical(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                exc, self.pending = self.pending, None
                raise exc

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Route SIGINT and SIGTERM here within the block (main thread only; elsewhere a no-op)."""
        try:
            previous = {sig: signal.signal(sig, self.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread
            yield
            return
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class _OffsetWriter:
    """Shifts a batch's lane numbers to prompt indices before the shared stream writer sees them."""

    def __init__(self, writer: Any, offset: int, signals: _Signals):
        self.writer, self.offset, self.meta, self.signals = writer, offset, writer.meta, signals
        self.done: set[int] = set()

    def write(self, seq: Any) -> None:
        sid = self.offset + int(seq.fields["sequence_id"])
        with self.signals.critical():
            self.writer.write(dataclasses.replace(seq, fields={**seq.fields, "sequence_id": sid}))
            self.done.add(sid)

    def flush(self) -> None:
        with self.signals.critical():
            self.writer.flush()


def _open_stream(out: Path, meta: Any) -> Any:
    from ead_sdk.traces import TraceWriter

    stream = stream_path(out)
    try:
        return TraceWriter(stream, meta, batch_rows=1)
    except TraceError:
        raise TraceError(
            f"{stream} exists: another recording into {out} is running, or one was stopped before it "
            f"finished. Recover its sequences with `ead traces recover {stream} --out FILE`, or delete it"
        ) from None


def _record_batch(
    backend: Backend,
    policy: Policy,
    prompts: Sequence[str],
    writer: Any,
    start: int,
    outcome: RecordOutcome,
    signals: _Signals,
    **kw: Any,
) -> None:
    """Decode one batch into the stream; a live failure is retried lane by lane to isolate the bad one."""
    from ead_sdk.decode import generate

    shifted = _OffsetWriter(writer, start, signals)
    try:
        res = generate(backend, policy, list(prompts), record=shifted, **kw)
    except BackendError:
        if len(prompts) == 1:
            raise
        for i, prompt in enumerate(prompts):
            if start + i in shifted.done:
                continue
            try:
                _record_batch(backend, policy, [prompt], writer, start + i, outcome, signals, **kw)
            except BackendError as exc:
                outcome.problems.append((start + i, f"{exc} (prompt {prompt[:80]!r})"))
        return
    for skip in res.recording_skipped:
        outcome.problems.append((start + skip.lane, f"{skip.reason} (prompt {prompts[skip.lane][:80]!r})"))


def record_prompts(
    backend: Backend,
    policy: Policy,
    prompts: Sequence[str],
    out: str | Path,
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    batch: int = 16,
    k: int = 8,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RecordOutcome:
    """Record ``prompts`` into the Parquet trace ``out``, keeping every finished sequence on the way.

    Ctrl-C and SIGTERM stop the run and write what finished; a prompt whose lane fails (non-finite
    signals) is reported in `RecordOutcome.problems` and the others are recorded.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise TraceError(f"{out} already exists (pass --overwrite to replace it)")
    writer = _open_stream(
        out,
        recording_meta(
            backend,
            policy,
            k=k,
            sampling=Sampling(),
            max_new_tokens=max_new_tokens,
            stop=stop,
            recorded_by="ead record",
        ),
    )
    outcome = RecordOutcome(None, writer.path, len(prompts))
    kw = {"max_new_tokens": max_new_tokens, "stop": list(stop), "record_k": k}
    signals = _Signals()
    try:
        with signals.installed():
            for start in range(0, len(prompts), batch):
                chunk = prompts[start : start + batch]
                _record_batch(backend, policy, chunk, writer, start, outcome, signals, **kw)
                if progress is not None:
                    progress(len(prompts[start : start + batch]))
    except KeyboardInterrupt as exc:
        outcome.interrupted = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
    finally:
        writer.close()
    try:
        return _publish(outcome, out, overwrite)
    except KeyboardInterrupt:
        raise TraceError(
            f"interrupted while writing {out}; every finished sequence is still in {outcome.stream}: "
            f"run `ead traces recover {outcome.stream} --out {out}`"
        ) from None


def _publish(outcome: RecordOutcome, out: Path, overwrite: bool) -> RecordOutcome:
    """Write the stream to ``out`` and remove it; with no sequence at all, nothing is written."""
    from ead_sdk.traces import TraceSet, read_traces, write_traces

    traces = read_traces(outcome.stream)
    order = traces.table.column("sequence_id").to_numpy(zero_copy_only=False).argsort(kind="stable")
    traces = TraceSet(traces.meta, traces.table.take(order), traces.source)  # prompt order
    if len(traces) == 0:
        outcome.stream.unlink()
        return outcome
    outcome.out = write_traces(traces, out, overwrite=overwrite)
    outcome.sequences, outcome.tokens = len(traces), int(traces.num_tokens)
    outcome.stream.unlink()
    return outcome


__all__ = ["RecordOutcome", "Terminated", "record_prompts", "stream_path"]

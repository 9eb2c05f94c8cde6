"""Recording served traffic (``ead serve --record DIR``) in the project's trace format.

Every request the router sends to an upstream is teed as it streams: when it ends, one row is
written for it to that model's trace, ``DIR/<model>/served-<start>-<pid>-<n>.arrows`` (one model per
trace: the prompt is the lane's token ids when the request started, the tokens are what that
model generated on it, each with the signals it sent). A routed lane therefore leaves one row per
engine request, in the trace of the model that served it. Each row is flushed to the operating
system as it is written (`ead_sdk.traces.TraceWriter` with one row per batch), so the files are
readable while the server runs (``read_traces(path, recover=True)``) and a crash loses only the
requests in flight. After ``rotate_rows`` rows a file is closed and the next one started.

An upstream that sends only top-k log-probabilities (an OpenAI-compatible server) cannot give
the exact entropy: its trace's ``entropy`` column holds the entropy of the renormalised top-k
instead, and its metadata says so under ``generation["entropy"]``.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ead_sdk.errors import TraceError
from ead_sdk.serving import EngineRequest, EngineSignals, EngineToken, ServingEngine
from ead_sdk.traces import FORMAT_VERSION, SequenceTrace, TraceMeta, TraceWriter

SUFFIX = ".arrows"


def _fingerprint(tokenizer: Any) -> str:
    try:
        from ead_sdk.backends.hf import tokenizer_fingerprint
    except ImportError:  # no torch: the fingerprint needs only the vocabulary, but lives in the hf backend
        return "unknown"
    if not hasattr(tokenizer, "get_vocab"):
        return "unknown"  # not a Hugging Face tokenizer
    return tokenizer_fingerprint(tokenizer)


class RotatingTraceWriter:
    """One model's served-traffic trace: numbered stream files, a new one every ``rotate_rows`` rows."""

    def __init__(self, directory: Path, meta: TraceMeta, rotate_rows: int):
        self.directory = directory
        self.meta = meta
        self.rotate_rows = rotate_rows
        self.stamp = time.strftime("%Y%m%dT%H%M%S")
        self.files: list[Path] = []
        self.rows = 0
        self._writer: TraceWriter | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, sequence: SequenceTrace) -> None:
        """Write one row now (flushed to the OS before returning); rotate when the file is full."""
        if self._writer is None:
            path = self.directory / f"served-{self.stamp}-{os.getpid()}-{len(self.files):05d}{SUFFIX}"
            self._writer = TraceWriter(path, self.meta, batch_rows=1)
            self.files.append(path)
        self._writer.write(sequence)
        self.rows += 1
        if self._writer.rows_written >= self.rotate_rows:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        """Close the current file (its end-of-stream marker written)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ServedTrafficRecorder:
    """Writes a row per finished upstream request, to the trace of the model that served it.

    Args:
        directory: the recording folder (one subfolder per model).
        engines: the ladder's engines (their names, sizes and signals make each trace's metadata).
        policy: the server's policy (its spec goes into the metadata).
        tokenizer: the models' tokenizer (its fingerprint goes into the metadata).
        rotate_rows: rows per file.
        k: top-k log-probabilities kept per position (the router asks for the spec's top-k signal's k).
    """

    def __init__(
        self,
        directory: Path,
        engines: Sequence[ServingEngine],
        policy: Any,
        tokenizer: Any,
        rotate_rows: int,
        k: int = 0,
    ):
        self.directory = Path(directory)
        self.k = k
        self.writers: dict[str, RotatingTraceWriter] = {}
        self.problems = 0
        fingerprint = _fingerprint(tokenizer)
        for engine in engines:
            signals = engine.signals()
            meta = TraceMeta(
                format_version=FORMAT_VERSION,
                model_names=(engine.name,),
                param_counts=(engine.num_params or 1,),
                vocab_size=engine.vocab_size,
                tokenizer_fingerprint=fingerprint,
                k=k,
                generation={
                    "recorded_by": "ead serve",
                    "policy": policy.spec(),
                    "entropy": "exact" if signals.exact else "top-k estimate (entropy of the renormalised top-k)",
                    "param_count_known": engine.num_params is not None,
                },
            )
            self.writers[engine.name] = RotatingTraceWriter(self.directory / engine.name, meta, rotate_rows)

    def wrap(self, engines: Sequence[ServingEngine]) -> list[ServingEngine]:
        """``engines``, each teeing its requests to this recorder."""
        return [RecordingEngine(e, self) for e in engines]

    def write(self, engine: ServingEngine, request: EngineRequest, tokens: Sequence[EngineToken]) -> None:
        """Record one finished request of ``engine`` (nothing when it produced no token)."""
        if not tokens:
            return
        entropy = [[_entropy(t)] for t in tokens]
        logprob = [[t.logprob if t.logprob is not None else _top_logprob(t)] for t in tokens]
        top = self._top(tokens)
        if any(v[0] is None for v in entropy + logprob) or (self.k and top is None):
            self.problems += 1  # a token without the values a trace row needs: the row is left out
            return
        seq = SequenceTrace.build(
            prompt_ids=request.prompt,
            token_ids=[t.token for t in tokens],
            emitted_by=np.zeros(len(tokens), np.int8),
            entropy=entropy,
            token_logprob=logprob,
            top_ids=None if top is None else top[0],
            top_logprobs=None if top is None else top[1],
            fields={"extra": {"request_id": request.request_id}},
        )
        try:
            self.writers[engine.name].write(seq)
        except TraceError:
            self.problems += 1

    def _top(self, tokens: Sequence[EngineToken]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(T, 1, k)`` top-k ids and log-probabilities, or ``None`` (not kept, or a token lacks k of them)."""
        k = self.k
        if not k or any(len(t.top_ids or ()) < k or len(t.top_logprobs or ()) < k for t in tokens):
            return None
        ids = np.array([t.top_ids[:k] for t in tokens], np.int32)[:, None, :]  # type: ignore[index]
        lps = np.array([t.top_logprobs[:k] for t in tokens], np.float32)[:, None, :]  # type: ignore[index]
        return ids, lps

    def close(self) -> None:
        """Close every model's current file."""
        for writer in self.writers.values():
            writer.close()


def _entropy(token: EngineToken) -> float | None:
    if token.entropy is not None:
        return float(token.entropy)
    if not token.top_logprobs:
        return None
    lp = np.asarray(token.top_logprobs, np.float64)
    p = np.exp(lp - lp.max())
    p /= p.sum()
    return float(-(p * np.log(np.where(p > 0, p, 1.0))).sum())


def _top_logprob(token: EngineToken) -> float | None:
    if token.top_ids and token.top_logprobs and token.token in token.top_ids:
        return float(token.top_logprobs[token.top_ids.index(token.token)])
    return None


class RecordingEngine(ServingEngine):
    """``inner``, with every request's streamed tokens handed to a `ServedTrafficRecorder` when it ends."""

    def __init__(self, inner: ServingEngine, recorder: ServedTrafficRecorder):
        self.inner = inner
        self.recorder = recorder
        self.name, self.num_params, self.vocab_size = inner.name, inner.num_params, inner.vocab_size

    def signals(self) -> EngineSignals:
        return self.inner.signals()

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    def stream(self, request: EngineRequest) -> AsyncIterator[EngineToken]:
        return self._tee(request, self.inner.stream(request))

    async def _tee(self, request: EngineRequest, inner: AsyncIterator[EngineToken]) -> AsyncIterator[EngineToken]:
        tokens: list[EngineToken] = []
        try:
            async for token in inner:
                tokens.append(token)
                yield token
        finally:
            await inner.aclose()  # type: ignore[attr-defined]
            self.recorder.write(self.inner, request, tokens)

    async def aclose(self) -> None:
        await self.inner.aclose()

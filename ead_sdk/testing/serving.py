"""In-memory `ServingEngine`s for tests: a recorded trace served per model, a toy model, and faults.

None of them needs a model, a GPU or a network; each streams like a real engine (one ``await`` per
token, so many lanes interleave) and keeps a log of what it was asked (`requests`), what it
produced (`produced`) and which requests were closed before their end (`cancelled`).

- `TraceEngine`: model ``m`` of a recorded trace. A request whose prompt is a sequence's prompt
  followed by the first ``t`` tokens of its trajectory is served positions ``t, t + 1, ...`` with
  the signals model ``m`` was recorded with there. Routing a lane over one `TraceEngine` per model
  is the serving-engine twin of `ead_sdk.generate` over `ead_sdk.backends.trace.TraceBackend`.
- `ToyEngine`: a deterministic toy language model whose logits are a hash of its seed, the
  position and the last tokens, so two toy engines disagree and a retried token really changes.
- `FaultyEngine`: wraps an engine and breaks the requests it is told to (an error mid-stream, a
  stream that hangs, a slow stream).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ead_sdk.errors import BackendError, UpstreamError
from ead_sdk.serving import EngineRequest, EngineSignals, EngineToken, ServingEngine
from ead_sdk.traces.schema import SequenceTrace, TraceMeta


@dataclass
class EngineLog:
    """What an in-memory engine was asked and what it did (for assertions).

    Attributes:
        requests: every request received, in order.
        produced: tokens streamed, over all requests.
        cancelled: ids of requests closed before their stream ended.
        finished: ids of requests whose stream ran to its end.
        streaming: streams started and not yet ended now.
        max_streaming: the most streams open at once so far.
    """

    requests: list[EngineRequest] = field(default_factory=list)
    produced: int = 0
    cancelled: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    streaming: int = 0
    max_streaming: int = 0

    def opened(self) -> None:
        """A stream started."""
        self.streaming += 1
        self.max_streaming = max(self.max_streaming, self.streaming)

    def closed(self, request: EngineRequest, done: bool) -> None:
        """A stream ended: ran to its end (``done``) or was closed early."""
        self.streaming -= 1
        (self.finished if done else self.cancelled).append(request.request_id)


async def _pace(delay: float) -> None:
    """One suspension per token, as a real engine's stream has: ``delay`` seconds, or a bare yield."""
    await asyncio.sleep(delay)


class TraceEngine(ServingEngine):
    """Model ``model`` of a recorded trace, served as a streaming engine along the trace's trajectories.

    Args:
        traces: a `ead_sdk.traces.TraceSet`, a trace path, or `SequenceTrace`s (then ``meta``).
        model: which of the trace's models this engine is (0 = smallest).
        meta: the trace metadata, for a plain list of sequences.
        exact: give the exact entropy with each token (``False``: top-k log-probabilities only,
            as an OpenAI-compatible server does).
        delay: seconds before each token (0: a bare yield to the event loop).

    Tokens are always the trajectory's, whatever the model (the trace is a fixed teacher-forced
    path); a request ends with ``finish_reason="stop"`` at the trajectory's last token and
    ``"length"`` at ``max_tokens``. Sampling cannot be honoured on a fixed path and is refused.
    """

    def __init__(
        self, traces: Any, model: int, meta: TraceMeta | None = None, *, exact: bool = True, delay: float = 0.0
    ):
        from ead_sdk.backends.trace import TraceBackend

        backend = traces if isinstance(traces, TraceBackend) else TraceBackend(traces, meta)
        if not 0 <= model < backend.num_models:
            raise BackendError(f"TraceEngine: model {model} is not one of the trace's {backend.num_models} models")
        self.meta, self.sequences, self.model = backend.meta, backend.sequences, model
        self.name = backend.model_names[model]
        self.num_params = backend.param_counts[model]
        self.vocab_size = backend.vocab_size
        self.exact, self.delay = exact, delay
        self.log = EngineLog()
        self._by_prompt: dict[tuple[int, ...], list[int]] = {}
        for i, seq in enumerate(self.sequences):
            self._by_prompt.setdefault(tuple(int(v) for v in seq.prompt_ids), []).append(i)
        self._prompt_lengths = sorted({len(p) for p in self._by_prompt})

    @classmethod
    def ladder(cls, traces: Any, meta: TraceMeta | None = None, **options: Any) -> list[TraceEngine]:
        """One engine per model of the trace, smallest first (``options`` go to each)."""
        from ead_sdk.backends.trace import TraceBackend

        backend = TraceBackend(traces, meta)
        return [cls(backend, m, **options) for m in range(backend.num_models)]

    def signals(self) -> EngineSignals:
        return EngineSignals(exact=self.exact, max_k=int(self.meta.k))

    def locate(self, prompt: Sequence[int]) -> tuple[SequenceTrace, int]:
        """The sequence whose prompt and first ``t`` trajectory tokens are ``prompt``, and ``t``."""
        prompt = tuple(prompt)
        found: list[tuple[int, int]] = []
        for length in self._prompt_lengths:
            for i in self._by_prompt.get(prompt[:length], ()):
                seq, t = self.sequences[i], len(prompt) - length
                if t <= seq.length and np.array_equal(seq.token_ids[:t], prompt[length:]):
                    found.append((i, t))
        if not found:
            raise BackendError(f"TraceEngine {self.name!r}: the prompt is no trace sequence's prompt plus trajectory")
        if len(found) > 1:
            raise BackendError(
                f"TraceEngine {self.name!r}: the prompt matches trace sequences {[i for i, _ in found]}: ambiguous"
            )
        i, t = found[0]
        return self.sequences[i], t

    def stream(self, request: EngineRequest) -> AsyncIterator[EngineToken]:
        self.log.requests.append(request)
        if request.sampling.do_sample:
            raise BackendError(f"TraceEngine {self.name!r} serves a recorded trajectory: sampling cannot be honoured")
        if request.top_k > self.meta.k:
            raise BackendError(
                f"TraceEngine {self.name!r}: top-{request.top_k} asked, the trace recorded k={self.meta.k}"
            )
        seq, t0 = self.locate(request.prompt)
        return self._serve(request, seq, t0)

    def _token(self, seq: SequenceTrace, t: int, top_k: int, finish: str | None) -> EngineToken:
        m = self.model
        top_ids = top_lp = None
        if top_k and seq.top_ids is not None:
            top_ids = tuple(int(v) for v in seq.top_ids[t, m, :top_k])
            top_lp = tuple(float(v) for v in seq.top_logprobs[t, m, :top_k])
        return EngineToken(
            token=int(seq.token_ids[t]),
            entropy=float(seq.entropy[t, m]) if self.exact else None,
            top_ids=top_ids,
            top_logprobs=top_lp,
            logprob=float(seq.token_logprob[t, m]),
            finish_reason=finish,
        )

    async def _serve(self, request: EngineRequest, seq: SequenceTrace, t0: int) -> AsyncIterator[EngineToken]:
        end = min(seq.length, t0 + request.max_tokens)
        done = False
        self.log.opened()
        try:
            for t in range(t0, end):
                await _pace(self.delay)
                token = int(seq.token_ids[t])
                stop = t + 1 == seq.length or token in request.stop_token_ids
                finish = "stop" if stop else ("length" if t + 1 == end else None)
                self.log.produced += 1
                yield self._token(seq, t, request.top_k, finish)
                if stop:
                    break
            done = True
        finally:
            self.log.closed(request, done)


class ToyTokenizer:
    """A tokenizer for toy engines: token ``i`` is the letter ``'a' + i % 26`` (id ``eos`` decodes to nothing)."""

    def __init__(self, eos_token_id: int | None = None):
        self.eos_token_id = eos_token_id

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join("" if i == self.eos_token_id else chr(ord("a") + int(i) % 26) for i in ids)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) - ord("a") for c in text]

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}


class ToyEngine(ServingEngine):
    """A deterministic toy language model behind the streaming contract.

    Its logits at a position are a pseudo-random vector seeded by the engine's ``seed``, the
    position and the last ``context`` tokens, scaled so that entropies range from near 0 to near
    ``log(vocab_size)``. Greedy requests take the most likely token; sampled ones draw with the
    request's temperature, top-p and min-p from a generator seeded by the request's seed and the
    position (top-H is refused). Engines with different seeds are different "models".

    Args:
        name: the model's name.
        vocab_size: the vocabulary size.
        seed: which model this is.
        num_params: its parameter count (the default cost model).
        eos_token_id: an end-of-sequence token (``finish_reason="stop"``), or ``None``.
        exact: give the exact entropy (``False``: top-k log-probabilities only).
        max_k: the most top-k log-probabilities it returns.
        context: how many previous tokens the logits depend on.
        delay: seconds before each token.
    """

    def __init__(
        self,
        name: str,
        *,
        vocab_size: int = 32,
        seed: int = 0,
        num_params: int | None = 1000,
        eos_token_id: int | None = None,
        exact: bool = True,
        max_k: int = 20,
        context: int = 2,
        delay: float = 0.0,
    ):
        self.name, self.vocab_size, self.seed, self.num_params = name, vocab_size, seed, num_params
        self.eos_token_id, self.exact, self.max_k = eos_token_id, exact, min(max_k, vocab_size)
        self.context, self.delay = context, delay
        self.log = EngineLog()
        self._tokenizer = ToyTokenizer(eos_token_id)

    @property
    def tokenizer(self) -> ToyTokenizer:
        return self._tokenizer

    def signals(self) -> EngineSignals:
        return EngineSignals(exact=self.exact, max_k=self.max_k)

    def logprobs(self, prefix: Sequence[int]) -> np.ndarray:
        """The normalised log-probabilities of the token after ``prefix`` (prompt and tokens so far)."""
        tail = ",".join(str(int(v)) for v in prefix[-self.context :])
        digest = hashlib.blake2b(f"{self.seed}|{len(prefix)}|{tail}".encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        logits = rng.normal(size=self.vocab_size) * rng.uniform(0.0, 6.0)
        shifted = logits - logits.max()
        return shifted - np.log(np.exp(shifted).sum())

    def stream(self, request: EngineRequest) -> AsyncIterator[EngineToken]:
        self.log.requests.append(request)
        if request.sampling.top_h is not None:
            raise BackendError(f"ToyEngine {self.name!r} cannot sample with top_h")
        if request.top_k > self.max_k:
            raise BackendError(f"ToyEngine {self.name!r}: top-{request.top_k} asked, it returns at most {self.max_k}")
        return self._serve(request)

    def _draw(self, request: EngineRequest, logprobs: np.ndarray, position: int) -> int:
        s = request.sampling
        if not s.do_sample:
            return int(np.argmax(logprobs))
        p = np.exp((logprobs - logprobs.max()) / s.temperature)
        p /= p.sum()
        if s.min_p is not None:
            p = np.where(p >= s.min_p * p.max(), p, 0.0)
        if s.top_p is not None:
            order = np.argsort(-p)
            keep = np.cumsum(p[order]) - p[order] < s.top_p
            p[order[~keep]] = 0.0
        rng = np.random.default_rng([s.seed or 0, position])
        return int(rng.choice(self.vocab_size, p=p / p.sum()))

    def _token(self, request: EngineRequest, prefix: list[int], remaining: int) -> EngineToken:
        lp = self.logprobs(prefix)
        token = self._draw(request, lp, len(prefix))
        stop = token == self.eos_token_id or token in request.stop_token_ids
        top_ids = top_lp = None
        if request.top_k:
            order = np.argsort(-lp, kind="stable")[: request.top_k]
            top_ids, top_lp = tuple(int(v) for v in order), tuple(float(v) for v in lp[order])
        return EngineToken(
            token=token,
            entropy=float(-(np.exp(lp) * lp).sum()) if self.exact else None,
            top_ids=top_ids,
            top_logprobs=top_lp,
            logprob=float(lp[token]),
            finish_reason="stop" if stop else ("length" if remaining == 1 else None),
        )

    async def _serve(self, request: EngineRequest) -> AsyncIterator[EngineToken]:
        prefix = list(request.prompt)
        done = False
        self.log.opened()
        try:
            for i in range(request.max_tokens):
                await _pace(self.delay)
                tok = self._token(request, prefix, request.max_tokens - i)
                prefix.append(tok.token)
                self.log.produced += 1
                yield tok
                if tok.finish_reason == "stop":
                    break
            done = True
        finally:
            self.log.closed(request, done)


class FaultyEngine(ServingEngine):
    """An engine that breaks the requests ``when`` selects, as told.

    Args:
        inner: the engine that serves the tokens.
        when: which requests break (default: all).
        fail_after: raise `UpstreamError` after this many tokens of a broken request.
        hang_after: after this many tokens, wait forever (until the request is cancelled).
        error: a different exception to raise (default: an `UpstreamError` naming the engine).
        delay: seconds before each token of a broken request.
    """

    def __init__(
        self,
        inner: ServingEngine,
        *,
        when: Callable[[EngineRequest], bool] | None = None,
        fail_after: int | None = None,
        hang_after: int | None = None,
        error: BaseException | None = None,
        delay: float = 0.0,
    ):
        self.inner, self.when = inner, when
        self.fail_after, self.hang_after, self.error, self.delay = fail_after, hang_after, error, delay
        self.name, self.num_params, self.vocab_size = inner.name, inner.num_params, inner.vocab_size
        self.broken: list[str] = []
        self.hanging = 0

    @property
    def log(self) -> EngineLog:
        return self.inner.log  # type: ignore[attr-defined]

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    def signals(self) -> EngineSignals:
        return self.inner.signals()

    def stream(self, request: EngineRequest) -> AsyncIterator[EngineToken]:
        inner = self.inner.stream(request)
        if self.when is not None and not self.when(request):
            return inner
        self.broken.append(request.request_id)
        return self._break(request, inner)

    async def _break(self, request: EngineRequest, inner: AsyncIterator[EngineToken]) -> AsyncIterator[EngineToken]:
        try:
            count = 0
            while True:
                if count == self.fail_after:
                    raise self.error or UpstreamError(
                        f"engine {self.name!r}: the stream broke after {count} tokens", engine=self.name
                    )
                if count == self.hang_after:
                    self.hanging += 1
                    await asyncio.Event().wait()
                if self.delay:
                    await asyncio.sleep(self.delay)
                try:
                    tok = await anext(inner)
                except StopAsyncIteration:
                    return
                count += 1
                yield tok
        finally:
            await inner.aclose()  # type: ignore[attr-defined]

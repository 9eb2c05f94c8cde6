"""A fake OpenAI-compatible ``/v1/completions`` upstream for tests: scripted token streams and faults.

`FakeOpenAI` serves a small deterministic language model (`ToyLM`, or any `FakeLM`) the way
vLLM's, SGLang's or llama.cpp's OpenAI server would: token-id prompts, ``stream: true`` server-sent
events, top-k ``logprobs``. A per-request `Fault` makes it fail the ways real upstreams fail: an
HTTP error, a connection that breaks mid-way, a stall, a slow stream, a malformed chunk, an error
event, a body that ends without ``data: [DONE]``. Every request is recorded (`FakeRequest`: its
body, the tokens sent, whether the client went away), so a test can check what reached the server.

It is a plain ASGI application served by uvicorn (the ASGI server vLLM and SGLang themselves run
on) on 127.0.0.1, in a background thread with its own event loop. Real sockets matter here:
timeouts, broken chunked bodies and a client closing its stream (the server sees the disconnect
and stops generating) behave as they do against a real server, which an in-process transport
cannot show (httpx's ``ASGITransport`` reads the whole body before returning). No web framework:
the fake must decide every byte it sends and notice a disconnect while it sleeps, which a
framework's streaming response hides. Several fakes can run at once (one per model of a ladder).

    with FakeOpenAI(ToyLM(vocab_size=64), faults=[None, Fault.disconnect(after=3)]) as fake:
        engine = OpenAIEngine(fake.base_url, fake.model, vocab_size=64)
        ...                      # the second request breaks after three tokens
        assert fake.requests[1].outcome == "fault"
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

_DIALECTS = ("vllm", "sglang", "llama.cpp")
_MALFORMED = b'data: {"choices": [{"index": 0, "text": "\n\n'


class FakeLM(Protocol):
    """A language model for the fake server: the next-token log-probabilities after ``context``."""

    vocab_size: int

    def logprobs(self, context: Sequence[int]) -> np.ndarray:
        """Log-probabilities (normalised, shape ``(vocab_size,)``) of the token after ``context``."""


class ToyLM:
    """A deterministic toy model: the next-token distribution is a function of the last two tokens.

    Some contexts give a peaked distribution and others a flat one, so the entropy varies along a
    sequence the way a real model's does (an entropy policy switches on it). Two servers given equal
    `ToyLM`s continue a context identically, as two replicas of one model would.

    Args:
        vocab_size: the number of token ids.
        seed: picks the model.
        eos_id: a token id that ends a sequence (``finish_reason: "stop"``), or ``None``.
    """

    def __init__(self, vocab_size: int = 64, *, seed: int = 0, eos_id: int | None = None):
        if vocab_size < 2:
            raise ValueError(f"ToyLM: vocab_size must be >= 2, got {vocab_size!r}")
        self.vocab_size = vocab_size
        self.seed = seed
        self.eos_id = eos_id
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    def logprobs(self, context: Sequence[int]) -> np.ndarray:
        key = tuple(int(t) for t in context[-2:])
        cached = self._cache.get(key)
        if cached is None:
            rng = np.random.default_rng([self.seed, len(key), *(t + 1 for t in key)])
            scale = 6.0 if rng.random() < 0.5 else 0.7
            logits = rng.standard_normal(self.vocab_size) * scale
            cached = logits - np.logaddexp.reduce(logits)
            self._cache[key] = cached
        return cached

    def greedy(self, prompt: Sequence[int], max_tokens: int, stop: Sequence[int] = ()) -> list[int]:
        """The greedy continuation a `FakeOpenAI` serving this model streams for ``prompt``."""
        context, out = list(prompt), []
        ends = set(stop) | ({self.eos_id} if self.eos_id is not None else set())
        for _ in range(max_tokens):
            token = int(np.argmax(self.logprobs(context)))
            out.append(token)
            context.append(token)
            if token in ends:
                break
        return out


@dataclass(frozen=True)
class Fault:
    """How the fake fails one request; build one with the class methods.

    Attributes:
        kind: ``"http_error"``, ``"disconnect"``, ``"stall"``, ``"malformed"``, ``"error_event"``,
            ``"no_done"`` or ``"slow"``.
        after: tokens streamed before the fault acts (stream faults).
        delay: seconds to wait before each chunk (any kind).
        status: the HTTP status of ``"http_error"``.
        message: the error message sent (``"http_error"``, ``"error_event"``).
        chunk: the raw bytes sent by ``"malformed"``.
    """

    kind: str
    after: int = 0
    delay: float = 0.0
    status: int = 500
    message: str = "injected failure"
    chunk: bytes = _MALFORMED

    @classmethod
    def http_error(cls, status: int = 503, message: str = "server overloaded") -> Fault:
        """Answer with HTTP ``status`` and an OpenAI-style JSON error body, no stream."""
        return cls("http_error", status=status, message=message)

    @classmethod
    def disconnect(cls, after: int = 0) -> Fault:
        """Break the connection after ``after`` tokens, mid-way through the chunked body."""
        return cls("disconnect", after=after)

    @classmethod
    def stall(cls, after: int = 0) -> Fault:
        """Stop sending after ``after`` tokens and keep the connection open until the client leaves."""
        return cls("stall", after=after)

    @classmethod
    def malformed(cls, after: int = 0, chunk: bytes = _MALFORMED) -> Fault:
        """Send ``chunk`` (a broken SSE event by default) after ``after`` tokens, then ``[DONE]``."""
        return cls("malformed", after=after, chunk=chunk)

    @classmethod
    def error_event(cls, after: int = 0, message: str = "engine failed") -> Fault:
        """Send an ``{"error": ...}`` event after ``after`` tokens, then ``[DONE]`` (what vLLM does)."""
        return cls("error_event", after=after, message=message)

    @classmethod
    def no_done(cls, after: int = 0) -> Fault:
        """End the body cleanly after ``after`` tokens, without a finish reason or ``[DONE]``."""
        return cls("no_done", after=after)

    @classmethod
    def slow(cls, delay: float) -> Fault:
        """Stream normally, waiting ``delay`` seconds before each chunk."""
        return cls("slow", delay=delay)


@dataclass
class FakeRequest:
    """One request the fake received, and what became of it.

    Attributes:
        index: its order of arrival (0 first).
        body: the JSON body as sent.
        fault: the fault applied, or ``None``.
        tokens: the token ids streamed so far.
        outcome: ``"streaming"``, then ``"finished"`` (ended normally), ``"disconnected"`` (the
            client went away first), ``"fault"`` (a fault ended it) or ``"rejected"`` (an HTTP error).
        closed: set once the server is done with the request.
    """

    index: int
    body: dict[str, Any]
    fault: Fault | None = None
    tokens: list[int] = field(default_factory=list)
    outcome: str = "streaming"
    closed: threading.Event = field(default_factory=threading.Event)

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Block until the server is done with the request; False on timeout."""
        return self.closed.wait(timeout)


_INJECTED = "FakeOpenAI: injected disconnect"
"""The message of the exception raised inside the app to make uvicorn drop a connection mid-body."""


class _QuietInjected(logging.Filter):
    """Keeps uvicorn's log free of the tracebacks of injected disconnects (and only those)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, ConnectionAbortedError) and str(exc) == _INJECTED)


FaultRule = Callable[[FakeRequest], "Fault | None"]


class FakeOpenAI:
    """An OpenAI-compatible completions server on 127.0.0.1 serving ``lm``, with scripted faults.

    Routes: ``POST /v1/completions`` (token-id ``prompt``, ``max_tokens``, ``stream``, ``logprobs``,
    ``temperature``/``top_p``/``min_p``/``seed``, ``stop_token_ids``), ``GET /v1/models``,
    ``GET /health``. Bad requests get a 400 with an OpenAI-style ``{"error": {...}}`` body, as do
    more ``logprobs`` than ``max_logprobs`` (vLLM's limit).

    Args:
        lm: the model served (a `ToyLM` of 64 tokens by default).
        model: the model name the server answers to (others get a 404).
        dialect: how top log-probabilities are keyed. ``"vllm"``: ``logprobs.top_logprobs`` maps
            keys to log-probabilities, keys are ``"token_id:N"`` when the request sets
            ``return_tokens_as_token_ids`` and the token's text otherwise; the drawn token is added
            when outside the top-k; ``return_token_ids`` adds ``token_ids``. ``"sglang"``: the same
            maps, always keyed by text. ``"llama.cpp"``: ``logprobs.content`` lists
            ``{"id", "token", "bytes", "logprob", "top_logprobs": [...]}`` per token, and the finish
            reason comes in a chunk of its own, and ``stop_token_ids`` is ignored (as llama.cpp does).
        faults: the fault of each request: a sequence indexed by arrival order (``None``: no fault;
            requests past its end have none), or a function of the `FakeRequest`.
        token_delay: seconds to wait before each chunk of every stream.
        max_logprobs: the most ``logprobs`` a request may ask for.
        tokens_per_chunk: tokens packed into one event (vLLM may send several per event).
        token_text: a token id's text (``" t{id}"`` by default); make two ids share a text to see
            why text keys are ambiguous.
        api_key: when set, requests must send ``Authorization: Bearer <api_key>`` (else 401).
    """

    def __init__(
        self,
        lm: FakeLM | None = None,
        *,
        model: str = "fake-model",
        dialect: str = "vllm",
        faults: Sequence[Fault | None] | FaultRule | None = None,
        token_delay: float = 0.0,
        max_logprobs: int = 20,
        tokens_per_chunk: int = 1,
        token_text: Callable[[int], str] | None = None,
        api_key: str | None = None,
    ):
        if dialect not in _DIALECTS:
            raise ValueError(f"FakeOpenAI: dialect must be one of {_DIALECTS}, got {dialect!r}")
        if tokens_per_chunk < 1:
            raise ValueError(f"FakeOpenAI: tokens_per_chunk must be >= 1, got {tokens_per_chunk!r}")
        self.lm = lm if lm is not None else ToyLM()
        self.model = model
        self.dialect = dialect
        self.faults = faults
        self.token_delay = float(token_delay)
        self.max_logprobs = max_logprobs
        self.tokens_per_chunk = tokens_per_chunk
        self.token_text = token_text or (lambda t: f" t{t}")
        self.api_key = api_key
        self.requests: list[FakeRequest] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._log_filter = _QuietInjected()

    # -- life cycle -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, the base URL an OpenAI client takes."""
        if self._port is None:
            raise RuntimeError("FakeOpenAI: not started; use start() or a with block")
        return f"http://127.0.0.1:{self._port}/v1"

    def start(self, timeout: float = 10.0) -> FakeOpenAI:
        """Serve on a free port of 127.0.0.1 in a background thread; returns once it accepts connections."""
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self, lifespan="off", log_level="warning", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        logging.getLogger("uvicorn.error").addFilter(self._log_filter)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"fake-openai-{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"FakeOpenAI: the server did not start on port {self._port} within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (open streams are cut after a second) and wait for the thread to end."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        logging.getLogger("uvicorn.error").removeFilter(self._log_filter)
        self._server = self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/health":
            await _send_json(send, 200, {})
        elif path == "/v1/models" and method == "GET":
            card = {"id": self.model, "object": "model", "owned_by": "ead-sdk-fake"}
            await _send_json(send, 200, {"object": "list", "data": [card]})
        elif path == "/v1/completions" and method == "POST":
            await self._completions(scope, receive, send)
        else:
            await _send_error(send, 404, f"no route {method} {path}")

    async def _completions(self, scope: dict, receive: Callable, send: Callable) -> None:
        raw = await _read_body(receive)
        if self.api_key is not None and dict(scope["headers"]).get(b"authorization") != (
            f"Bearer {self.api_key}".encode()
        ):
            await _send_error(send, 401, "invalid API key")
            return
        try:
            body = json.loads(raw)
        except ValueError as exc:
            await _send_error(send, 400, f"request body is not JSON: {exc}")
            return
        status, problem = self._check(body)
        if problem:
            await _send_error(send, status, problem)
            return
        record = self._record(body)
        try:
            fault = record.fault
            if fault is not None and fault.kind == "http_error":
                record.outcome = "rejected"
                await _send_error(send, fault.status, fault.message)
            elif body.get("stream"):
                await self._stream(record, receive, send)
            else:
                await self._whole(record, send)
        finally:
            record.closed.set()

    def _check(self, body: Any) -> tuple[int, str | None]:
        if not isinstance(body, dict):
            return 400, "request body must be a JSON object"
        if body.get("model") != self.model:
            return 404, f"The model `{body.get('model')}` does not exist."
        prompt = body.get("prompt")
        if not (isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt)):
            return 400, "this server takes prompt as a non-empty list of token ids"
        if not all(0 <= t < self.lm.vocab_size for t in prompt):
            return 400, f"prompt has token ids outside [0, {self.lm.vocab_size})"
        max_tokens = body.get("max_tokens", 16)
        if type(max_tokens) is not int or max_tokens < 1:
            return 400, f"max_tokens must be an integer >= 1, got {max_tokens!r}"
        k = body.get("logprobs")
        if k is not None and (type(k) is not int or not 0 <= k <= self.max_logprobs):
            return 400, f"logprobs must be an integer in [0, {self.max_logprobs}], got {k!r}"
        temperature = body.get("temperature", 1.0)
        if not isinstance(temperature, (int, float)) or temperature < 0:
            return 400, f"temperature must be a number >= 0, got {temperature!r}"
        return 200, None

    def _record(self, body: dict) -> FakeRequest:
        with self._lock:
            record = FakeRequest(index=len(self.requests), body=body)
            self.requests.append(record)
        faults = self.faults
        if callable(faults):
            record.fault = faults(record)
        elif faults is not None and record.index < len(faults):
            record.fault = faults[record.index]
        return record

    # -- generation ---------------------------------------------------------------------------
    def _steps(self, body: dict) -> Any:
        """Yield ``(token, logprobs, finish_reason)`` for each generated token."""
        context = list(body["prompt"])
        max_tokens = body.get("max_tokens", 16)
        ends = set(body.get("stop_token_ids") or ()) if self.dialect != "llama.cpp" else set()
        eos = getattr(self.lm, "eos_id", None)
        if eos is not None and not body.get("ignore_eos"):
            ends.add(eos)
        seed = body.get("seed")
        rng = np.random.default_rng(seed)
        for i in range(max_tokens):
            logprobs = self.lm.logprobs(context)
            token = _draw(logprobs, body, rng)
            context.append(token)
            finish = "stop" if token in ends else ("length" if i == max_tokens - 1 else None)
            yield token, logprobs, finish
            if finish:
                return

    async def _stream(self, record: FakeRequest, receive: Callable, send: Callable) -> None:
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, gone))
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            record.outcome = await self._events(record, gone, send)
        except OSError as exc:  # uvicorn refuses a send once the client has gone
            if str(exc) == _INJECTED:
                raise  # the disconnect fault: uvicorn drops the connection mid-body
            record.outcome = "disconnected"
        finally:
            watcher.cancel()

    async def _events(self, record: FakeRequest, gone: asyncio.Event, send: Callable) -> str:
        fault = record.fault
        delay = self.token_delay + (fault.delay if fault is not None else 0.0)
        acts = fault is not None and fault.kind not in ("slow", "http_error")
        batch: list[tuple[int, np.ndarray, str | None]] = []
        for step in self._steps(record.body):
            batch.append(step)
            if len(batch) < self.tokens_per_chunk and step[2] is None:
                continue
            if acts and len(record.tokens) + len(batch) > fault.after:
                return await self._act(record, fault, gone, send)
            if (delay and await _wait(gone, delay)) or gone.is_set():
                return "disconnected"
            for data in self._chunks(record.body, batch):
                await _send_event(send, data)
            record.tokens.extend(t for t, _, _ in batch)
            batch = []
        if acts:
            return await self._act(record, fault, gone, send)
        if record.body.get("stream_options", {}).get("include_usage"):
            await _send_event(send, self._frame([], self._usage(record)))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        return "finished"

    async def _act(self, record: FakeRequest, fault: Fault, gone: asyncio.Event, send: Callable) -> str:
        if fault.kind == "disconnect":
            record.outcome = "fault"
            raise ConnectionAbortedError(_INJECTED)
        if fault.kind == "stall":
            while not gone.is_set() and not (self._server is not None and self._server.should_exit):
                await _wait(gone, 0.05)
            return "disconnected" if gone.is_set() else "fault"
        if fault.kind == "malformed":
            await send({"type": "http.response.body", "body": fault.chunk, "more_body": True})
        elif fault.kind == "error_event":
            error = {"message": fault.message, "type": "InternalServerError", "param": None, "code": 500}
            await _send_event(send, {"error": error})
        if fault.kind in ("malformed", "error_event"):
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return "fault"

    async def _whole(self, record: FakeRequest, send: Callable) -> None:
        steps = list(self._steps(record.body))
        record.tokens.extend(t for t, _, _ in steps)
        choice = self._choice(record.body, steps)
        if self.dialect == "llama.cpp":
            choice["finish_reason"] = steps[-1][2]
        record.outcome = "finished"
        await _send_json(send, 200, self._frame([choice], self._usage(record)))

    # -- wire format --------------------------------------------------------------------------
    def _chunks(self, body: dict, batch: list) -> list[dict]:
        if self.dialect != "llama.cpp":
            return [self._frame([self._choice(body, batch)])]
        frames = [self._frame([self._choice(body, [step])]) for step in batch]
        if batch[-1][2] is not None:
            finish = {"text": "", "index": 0, "logprobs": None, "finish_reason": batch[-1][2]}
            frames.append(self._frame([finish]))
        return frames

    def _choice(self, body: dict, steps: list) -> dict:
        text = "".join(self.token_text(t) for t, _, _ in steps)
        k = body.get("logprobs")
        if self.dialect == "llama.cpp":
            content = None if k is None else {"content": [self._cpp_entry(t, lp, k) for t, lp, _ in steps]}
            return {"text": text, "index": 0, "logprobs": content, "finish_reason": None}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": steps[-1][2], "stop_reason": None}
        if k is not None:
            choice["logprobs"] = self._openai_logprobs(body, steps, k)
        if self.dialect == "vllm" and body.get("return_token_ids"):
            choice["token_ids"] = [t for t, _, _ in steps]
        return choice

    def _openai_logprobs(self, body: dict, steps: list, k: int) -> dict:
        by_id = self.dialect == "vllm" and body.get("return_tokens_as_token_ids")
        key = (lambda t: f"token_id:{t}") if by_id else self.token_text
        block: dict[str, list] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
        offset = 0
        for token, logprobs, _ in steps:
            top = {key(int(i)): float(logprobs[i]) for i in _top_ids(logprobs, k)}
            top.setdefault(key(token), float(logprobs[token]))
            block["text_offset"].append(offset)
            block["token_logprobs"].append(float(logprobs[token]))
            block["tokens"].append(key(token))
            block["top_logprobs"].append(top)
            offset += len(self.token_text(token))
        return block

    def _cpp_entry(self, token: int, logprobs: np.ndarray, k: int) -> dict:
        def entry(t: int) -> dict:
            text = self.token_text(t)
            return {"id": t, "token": text, "bytes": list(text.encode()), "logprob": float(logprobs[t])}

        return {**entry(token), "top_logprobs": [entry(int(i)) for i in _top_ids(logprobs, k)]}

    def _frame(self, choices: list, usage: dict | None = None) -> dict:
        frame = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": self.model}
        frame["choices"] = choices
        if usage is not None:
            frame["usage"] = usage
        return frame

    @staticmethod
    def _usage(record: FakeRequest) -> dict:
        prompt, done = len(record.body["prompt"]), len(record.tokens)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def _top_ids(logprobs: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most likely ids, most likely first (ties by id, as a stable sort gives)."""
    if k >= logprobs.size:
        return np.argsort(-logprobs, kind="stable")
    cut = np.partition(-logprobs, k - 1)[k - 1]  # -(the k-th largest log-probability)
    ids = np.flatnonzero(-logprobs <= cut)
    return ids[np.argsort(-logprobs[ids], kind="stable")][:k]


def _draw(logprobs: np.ndarray, body: Mapping[str, Any], rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else a draw after temperature, top-p and min-p."""
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if temperature == 0:
        return int(np.argmax(logprobs))
    probs = np.exp((logprobs - logprobs.max()) / temperature)
    probs /= probs.sum()
    min_p = body.get("min_p")
    if min_p:
        probs = np.where(probs >= min_p * probs.max(), probs, 0.0)
    top_p = body.get("top_p")
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, kind="stable")
        keep = np.cumsum(probs[order]) - probs[order] < top_p * probs.sum()
        probs = np.where(np.isin(np.arange(probs.size), order[keep]), probs, 0.0)
    return int(rng.choice(probs.size, p=probs / probs.sum()))


async def _read_body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _watch_disconnect(receive: Callable, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _wait(gone: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, or less when the client goes away; True when it did."""
    try:
        await asyncio.wait_for(gone.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


async def _send_event(send: Callable, data: dict) -> None:
    payload = b"data: " + json.dumps(data).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": payload, "more_body": True})


async def _send_json(send: Callable, status: int, data: dict) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(data).encode()})


async def _send_error(send: Callable, status: int, message: str) -> None:
    kind = "BadRequestError" if status < 500 else "InternalServerError"
    await _send_json(send, status, {"error": {"message": message, "type": kind, "param": None, "code": status}})

"""`OpenAIEngine`: a `ServingEngine` on any OpenAI-compatible ``/v1/completions`` server, over HTTP.

Each request is one streaming completion whose prompt is a list of token ids (never text: the lane
hand-off router continues a lane on another engine from its token ids, and re-tokenising drifts),
with ``logprobs: k``. Such a server returns only the top-k log-probabilities of each token, so the
engine's signal is the top-k entropy estimate (`ead_sdk.signals.topk_entropy_estimate`):
``signals()`` says ``exact=False, max_k=k``, and a spec calibrated on exact entropy is refused.

What each server returns, and what this engine reads (token ids, never text keys):

- **vLLM** (``vllm serve``): ``logprobs.tokens`` and the keys of ``logprobs.top_logprobs`` are token
  *text* unless the request sets ``return_tokens_as_token_ids`` (this engine always does), which
  makes them ``"token_id:123"`` strings. Text keys are ambiguous: two ids can share a text (and
  then share one key of the map). vLLM adds the drawn token to the map when it is outside the top-k;
  the engine keeps the k most likely. The finish reason comes with the last token.
- **llama.cpp's server** (``llama-server``): ``logprobs.content`` lists, per token,
  ``{"id", "token", "bytes", "logprob", "top_logprobs": [{"id", "token", "bytes", "logprob"}]}``:
  ids are given; read as such. The finish reason comes in an event of its own after the last token,
  so the engine also ends a request itself at an id of ``eos_token_ids`` or ``stop_token_ids``
  (llama.cpp ignores ``stop_token_ids``). It sends no log-probabilities for ``logprobs: 0``, so the
  engine asks for at least 1; some older releases cap ``logprobs`` at 5 (a larger k is then
  refused: the reply has fewer top log-probabilities than asked).
- **SGLang**: its OpenAI ``/v1/completions`` keys ``top_logprobs`` by token text only and has no
  switch to ids; such a reply is refused with an `UpstreamError` saying so (its native
  ``/generate`` API gives ids but is not OpenAI-compatible and not supported here).

Closing a stream early (``aclose()``) closes the HTTP response, so the server sees the client go and
cancels the request. Every failure raises `ead_sdk.errors.UpstreamError` naming the engine, the URL
and what went wrong: no connection, an HTTP error status (with the server's error message), a
stream that breaks or ends without ``data: [DONE]``, a malformed or error event, no data for
``read_timeout`` seconds.

Requires ``httpx`` and ``httpx-sse`` (the ``http`` extra).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from ead_sdk.errors import ArgumentError, UpstreamError
from ead_sdk.serving import EngineRequest, EngineSignals, EngineToken, ServingEngine

MAX_K = 20
"""The most top log-probabilities per token: OpenAI's limit, and vLLM's default ``--max-logprobs``."""

_ID_PREFIX = "token_id:"


class OpenAIEngine(ServingEngine):
    """One model behind an OpenAI-compatible completions server (vLLM, llama.cpp's server).

    Args:
        base_url: the API's base URL, ``/v1`` included (``"http://127.0.0.1:8000/v1"``); requests
            go to ``<base_url>/completions``.
        model: the model name the server serves (the request's ``model``); ``None`` asks the
            server's ``GET /v1/models`` on the first request, which must list exactly one model.
        vocab_size: the size of the model's vocabulary (``len(tokenizer)`` when omitted).
        name: a label for messages and reports (``model``, else ``base_url``, by default).
        num_params: the model's parameter count (the default cost model), when known.
        api_key: sent as ``Authorization: Bearer <api_key>`` when given.
        k: the most top log-probabilities a request may ask for (1 to 20).
        connect_timeout: seconds to wait for a connection.
        read_timeout: the most seconds without data from the server, while waiting for the first
            token (queueing and prefill included) as between two chunks.
        extra_body: more request fields for the server (``{"top_k": 50}``, ``{"priority": 1}``); the
            fields this engine relies on (model, prompt, max_tokens, stream, logprobs, sampling,
            stop ids) take precedence.
        eos_token_ids: ids that end a sequence; the engine ends a request at one of them itself
            (``tokenizer.eos_token_id`` when a tokenizer is given).
        tokenizer: the model's tokenizer, for stop strings and text (optional).
        max_connections: the most concurrent requests (HTTP connections) to the server.
        transport: an httpx transport to use instead of the network (tests).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        vocab_size: int | None = None,
        name: str | None = None,
        num_params: int | None = None,
        api_key: str | None = None,
        k: int = MAX_K,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        extra_body: Mapping[str, Any] | None = None,
        eos_token_ids: Sequence[int] = (),
        tokenizer: Any = None,
        max_connections: int = 256,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        if vocab_size is None and tokenizer is not None:
            vocab_size = len(tokenizer)
        _check_options(base_url, model, vocab_size, k, connect_timeout, read_timeout, max_connections)
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/completions"
        self.model = model
        self.name = name if name is not None else (model or self.base_url)
        self.vocab_size = vocab_size
        self.num_params = num_params
        self.k = k
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.extra_body = dict(extra_body or {})
        eos = set(eos_token_ids)
        if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
            eos.add(int(tokenizer.eos_token_id))
        self.eos_token_ids = frozenset(eos)
        self._tokenizer = tokenizer
        self.max_connections = max_connections
        self._transport = transport
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.url!r}, model={self.model!r}, name={self.name!r}, k={self.k})"

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def signals(self) -> EngineSignals:
        return EngineSignals(exact=False, max_k=self.k)

    async def aclose(self) -> None:
        """Close the HTTP connections (a later request opens new ones)."""
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.aclose()

    def stream(self, request: EngineRequest) -> AsyncIterator[EngineToken]:
        """Stream ``request``'s tokens; a request this engine cannot serve is refused at once (`ArgumentError`)."""
        return self._stream(request, self._body(request))

    # -- the request ----------------------------------------------------------------------------
    def _body(self, request: EngineRequest) -> dict[str, Any]:
        if not 0 <= request.top_k <= self.k:
            raise ArgumentError(f"engine {self.name!r}: top_k={request.top_k} asked, this engine gives 0 to {self.k}")
        if not request.prompt:
            raise ArgumentError(f"engine {self.name!r}: the prompt is empty (give at least one token id)")
        sampling = request.sampling
        if sampling.top_h is not None:
            raise ArgumentError(
                f"engine {self.name!r}: top_h sampling is not offered by OpenAI-compatible servers; "
                "use temperature, top_p or min_p"
            )
        body: dict[str, Any] = dict(self.extra_body)
        body.update(
            model=self.model,
            prompt=[int(t) for t in request.prompt],
            max_tokens=request.max_tokens,
            stream=True,
            logprobs=max(request.top_k, 1),  # ids come with the log-probabilities (llama.cpp sends none for 0)
            return_tokens_as_token_ids=True,
            temperature=float(sampling.temperature) if sampling.do_sample else 0.0,
        )
        if sampling.do_sample:
            for key in ("top_p", "min_p", "seed"):
                if getattr(sampling, key) is not None:
                    body[key] = getattr(sampling, key)
        if request.stop_token_ids:
            body["stop_token_ids"] = [int(t) for t in request.stop_token_ids]
        return body

    def _client_here(self) -> httpx.AsyncClient:
        """The client of the running event loop (a client's connections belong to the loop that opened them)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            timeout = httpx.Timeout(self.read_timeout, connect=self.connect_timeout, pool=None)
            limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
            self._client = httpx.AsyncClient(
                timeout=timeout, limits=limits, headers=self._headers, transport=self._transport
            )
            self._client_loop = loop
        return self._client

    def _where(self, request: EngineRequest) -> str:
        rid = f", request {request.request_id!r}" if request.request_id else ""
        return f"engine {self.name!r} (POST {self.url}{rid})"

    # -- the stream -----------------------------------------------------------------------------
    async def _stream(self, request: EngineRequest, body: dict[str, Any]) -> AsyncIterator[EngineToken]:
        where = self._where(request)
        count = [0]
        headers = {"X-Request-Id": request.request_id} if request.request_id else {}
        try:
            client = self._client_here()
            body["model"] = self.model or await self._served_model(client)
            async with aconnect_sse(client, "POST", self.url, json=body, headers=headers) as source:
                await _check_status(source.response)
                events = aclosing(source.aiter_sse())
                async with events as sse, aclosing(self._tokens(sse, request, count)) as tokens:
                    async for token in tokens:
                        yield token
        except UpstreamError as exc:  # a reply this engine cannot read: name the engine and the URL
            raise UpstreamError(f"{where}: {exc}", engine=self.name) from None
        except SSEError as exc:  # an httpx.TransportError: caught first
            raise UpstreamError(f"{where}: the reply is not an event stream: {exc}", engine=self.name) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"{where}: {_timeout_text(exc, self, count[0])}", engine=self.name) from exc
        except httpx.TransportError as exc:
            what = (
                "cannot connect" if isinstance(exc, httpx.ConnectError) else f"the stream broke after {count[0]} tokens"
            )
            raise UpstreamError(f"{where}: {what}: {type(exc).__name__}: {exc}", engine=self.name) from exc
        except httpx.HTTPError as exc:  # a reply httpx cannot decode
            raise UpstreamError(f"{where}: {type(exc).__name__}: {exc}", engine=self.name) from exc

    async def _served_model(self, client: httpx.AsyncClient) -> str:
        """The one model ``GET <base_url>/models`` lists (remembered); `UpstreamError` otherwise."""
        response = await client.get(f"{self.base_url}/models")
        await _check_status(response)
        try:
            ids = [card["id"] for card in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise UpstreamError(f"GET {self.base_url}/models: not a model list: {response.text[:200]!r}") from None
        if len(ids) != 1 or not isinstance(ids[0], str):
            raise UpstreamError(f"GET {self.base_url}/models lists {ids[:5]}: name the model (model=...)")
        self.model = ids[0]
        return self.model

    async def _tokens(
        self, events: AsyncIterator[Any], request: EngineRequest, count: list[int]
    ) -> AsyncIterator[EngineToken]:
        """Read the events into tokens; ``count[0]`` counts the tokens read (for messages)."""
        ends = self.eos_token_ids | set(request.stop_token_ids)
        finished = False
        async for event in events:
            if event.data == "[DONE]":
                return
            entries, server_finish = _read_event(event.data, request.top_k)
            if entries and finished:
                raise UpstreamError(f"tokens after the finish reason (token {count[0]})")
            for i, (token, top_ids, top_lps, logprob) in enumerate(entries):
                count[0] += 1
                last = i == len(entries) - 1
                finish = server_finish if last else None
                if finish is None and (token in ends or count[0] >= request.max_tokens):
                    finish = "stop" if token in ends else "length"
                keep = top_ids if request.top_k else None
                yield EngineToken(token, None, keep, top_lps if request.top_k else None, logprob, finish)
                if finish is not None and server_finish is None:
                    return  # ended here (a stop id, the token limit): closing the stream cancels the request
            finished = finished or server_finish is not None
        raise UpstreamError(f"the stream ended without data: [DONE] after {count[0]} tokens")


def _check_options(
    base_url: Any, model: Any, vocab_size: Any, k: Any, connect: Any, read: Any, max_connections: Any
) -> None:
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ArgumentError(
            f"OpenAIEngine: base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {base_url!r}"
        )
    if model is not None and (not isinstance(model, str) or not model):
        raise ArgumentError(f"OpenAIEngine: model must be the served model's name (or None), got {model!r}")
    if vocab_size is None:
        raise ArgumentError("OpenAIEngine: vocab_size is needed (or a tokenizer to take its length)")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ArgumentError(f"OpenAIEngine: vocab_size must be an integer >= 1, got {vocab_size!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ArgumentError(f"OpenAIEngine: k must be an integer in [1, {MAX_K}], got {k!r}")
    for label, value in (("connect_timeout", connect), ("read_timeout", read)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
            raise ArgumentError(f"OpenAIEngine: {label} must be a number of seconds > 0, got {value!r}")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
        raise ArgumentError(f"OpenAIEngine: max_connections must be an integer >= 1, got {max_connections!r}")


async def _check_status(response: httpx.Response) -> None:
    if response.status_code == 200:
        return
    raw = (await response.aread()).decode("utf-8", "replace")
    raise UpstreamError(f"HTTP {response.status_code}: {_error_message(raw)}")


def _error_message(raw: str) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": ...}}`` or ``{"message": ...}``)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.strip()[:500] or "(empty body)"
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:500]
    return raw.strip()[:500]


def _timeout_text(exc: httpx.TimeoutException, engine: OpenAIEngine, count: int) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"cannot connect: no connection within {engine.connect_timeout} s (connect_timeout)"
    if isinstance(exc, httpx.ReadTimeout):
        return f"no data from the server for {engine.read_timeout} s (read_timeout) after {count} tokens"
    return f"timed out: {type(exc).__name__}: {exc}"


_Entry = tuple[int, tuple[int, ...], tuple[float, ...], float]
"""One token read from an event: its id, the top ids and log-probabilities, its own log-probability."""


def _read_event(data: str, k: int) -> tuple[list[_Entry], str | None]:
    """The tokens of one ``data:`` event and its finish reason; `UpstreamError` when it cannot be read."""
    try:
        chunk = json.loads(data)
    except ValueError:
        raise UpstreamError(f"malformed event (not JSON): {data[:200]!r}") from None
    if not isinstance(chunk, dict):
        raise UpstreamError(f"malformed event (not a JSON object): {data[:200]!r}")
    if "error" in chunk:
        raise UpstreamError(f"the server reported an error mid-stream: {_error_message(data)}")
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise UpstreamError(f"malformed event (no 'choices' list): {data[:200]!r}")
    if not choices:
        return [], None  # a usage event
    choice = choices[0]
    if len(choices) > 1 or not isinstance(choice, dict) or choice.get("index", 0) != 0:
        raise UpstreamError(f"malformed event (one choice of index 0 expected): {data[:200]!r}")
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise UpstreamError(f"malformed event (finish_reason {finish!r})")
    block = choice.get("logprobs")
    if block is None:
        if choice.get("text") or choice.get("token_ids"):
            raise UpstreamError("the server sent tokens without log-probabilities (it ignored 'logprobs')")
        return [], finish
    if not isinstance(block, dict):
        raise UpstreamError(f"malformed event ('logprobs' is not an object): {data[:200]!r}")
    if "content" in block:
        return _llamacpp_entries(block["content"], k), finish
    return _openai_entries(block, k, choice.get("token_ids")), finish


def _openai_entries(block: dict, k: int, token_ids: Any) -> list[_Entry]:
    """The OpenAI completions ``logprobs`` as vLLM fills them: parallel lists, top maps keyed ``token_id:N``."""
    tokens, tops, logprobs = block.get("tokens"), block.get("top_logprobs"), block.get("token_logprobs")
    if not (isinstance(tokens, list) and isinstance(tops, list) and isinstance(logprobs, list)):
        raise UpstreamError("malformed 'logprobs' (tokens, token_logprobs and top_logprobs must be lists)")
    if not len(tokens) == len(tops) == len(logprobs):
        raise UpstreamError(f"malformed 'logprobs' (lists of lengths {len(tokens)}, {len(logprobs)}, {len(tops)})")
    ids = [_key_id(t) for t in tokens]
    if token_ids is not None and token_ids != ids:
        raise UpstreamError(f"'token_ids' {token_ids} disagree with the logprobs' tokens {ids}")
    out = []
    for token, top, logprob in zip(ids, tops, logprobs, strict=True):
        if not isinstance(top, dict):
            raise UpstreamError(f"malformed 'top_logprobs' entry {top!r:.80}")
        out.append(_entry(token, _top_pairs(top), _logprob(logprob), k))
    return out


def _top_pairs(top: dict) -> list[tuple[int, float]]:
    """The ``(id, log-probability)`` pairs of a ``{"token_id:N": logprob}`` map, most likely first."""
    n = len(_ID_PREFIX)
    try:
        pairs = [(int(key[n:]) if key[:n] == _ID_PREFIX else _key_id(key), value) for key, value in top.items()]
    except (ValueError, TypeError):  # "token_id:x": refused by the careful reading
        pairs = [(_key_id(key), value) for key, value in top.items()]
    if not all(type(v) is float and -math.inf <= v <= 1e-3 for _, v in pairs):  # NaN fails the comparison
        pairs = [(i, _logprob(v)) for i, v in pairs]
    pairs.sort(key=_second, reverse=True)
    if pairs and pairs[0][1] > 0.0:
        pairs = [(i, min(v, 0.0)) for i, v in pairs]
    return pairs


def _second(pair: tuple[int, float]) -> float:
    return pair[1]


def _llamacpp_entries(content: Any, k: int) -> list[_Entry]:
    """llama.cpp's server: ``content`` lists ``{"id", "logprob", "top_logprobs": [{"id", "logprob"}]}``."""
    if not isinstance(content, list):
        raise UpstreamError("malformed 'logprobs.content' (not a list)")
    out = []
    for item in content:
        if not isinstance(item, dict) or not isinstance(item.get("top_logprobs"), list):
            raise UpstreamError(f"malformed 'logprobs.content' entry {item!r:.120}")
        pairs = [(_int_id(top.get("id")), _logprob(top.get("logprob"))) for top in item["top_logprobs"]]
        pairs.sort(key=_second, reverse=True)
        out.append(_entry(_int_id(item.get("id")), pairs, _logprob(item.get("logprob")), k))
    return out


def _entry(token: int, pairs: list[tuple[int, float]], logprob: float, k: int) -> _Entry:
    if len(pairs) < k:
        raise UpstreamError(f"{len(pairs)} top log-probabilities for a token, {k} asked")
    top = pairs[:k]
    return token, tuple(p[0] for p in top), tuple(p[1] for p in top), logprob


def _key_id(key: Any) -> int:
    """The id in a ``"token_id:N"`` key; a text key is refused (two ids can share a text)."""
    if isinstance(key, str) and key.startswith(_ID_PREFIX):
        try:
            return int(key[len(_ID_PREFIX) :])
        except ValueError:
            pass
    raise UpstreamError(
        f"the server names tokens by text ({key!r:.40}), not by id; text is ambiguous (two ids can share "
        "one), so this engine needs ids: vLLM gives them for 'return_tokens_as_token_ids' (sent); "
        "a server that ignores it (SGLang's OpenAI API) cannot be used"
    )


def _int_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UpstreamError(f"malformed token id {value!r:.40}")
    return value


def _logprob(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value > 1e-3:
        raise UpstreamError(f"malformed log-probability {value!r:.40}")
    return min(float(value), 0.0)  # a float32 rounding above 0 is a log-probability of 0

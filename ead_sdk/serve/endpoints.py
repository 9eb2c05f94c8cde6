"""The HTTP endpoints: ``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/metrics``.

A generation request is read and checked whole (`ead_sdk.serve.schemas`) before it takes a slot
(`ead_sdk.serve.admission`); its lanes then run on the router and are answered whole or streamed.
An upstream fault ends the affected request only: a whole answer becomes a 502 error body, a
stream gets an error event and ``[DONE]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ead_sdk.errors import ServeRequestError, UpstreamError
from ead_sdk.serve import responses as rs
from ead_sdk.serve import sse
from ead_sdk.serve.lanes import LaneOutcome, RequestLanes
from ead_sdk.serve.schemas import GenerationSettings, bad, read_chat, read_completion
from ead_sdk.serve.state import ServeState


def _state(request: Request) -> ServeState:
    return request.app.state.serve


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"the request body is not valid JSON ({exc})") from None


def _check_model(state: ServeState, model: str | None) -> None:
    if model is not None and model != state.config.model_name:
        raise bad(
            f"the model {model!r} is not served here; this server serves {state.config.model_name!r}",
            "model",
            status=404,
            code="model_not_found",
        )


def _encode(state: ServeState, prompt: str | tuple[int, ...], index: int) -> tuple[int, ...]:
    ids = tuple(state.tokenizer.encode(prompt)) if isinstance(prompt, str) else prompt
    if not ids:
        raise bad(f"prompt {index}: encodes to no tokens", "prompt")
    if max(ids) >= state.vocab_size:
        raise bad(f"prompt {index}: token id {max(ids)} is outside the vocabulary (size {state.vocab_size})", "prompt")
    return ids


def _chat_prompt(state: ServeState, messages: Sequence[dict[str, str]]) -> tuple[int, ...]:
    """The conversation through the tokenizer's own chat template, ready for the assistant's turn."""
    if not getattr(state.tokenizer, "chat_template", None):
        raise bad("the model's tokenizer has no chat template; use /v1/completions", "messages")
    try:
        text = state.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template may reject a conversation (roles out of order...)
        raise bad(f"the chat template refused the messages ({exc})", "messages") from None
    return _encode(state, tuple(state.tokenizer.encode(text, add_special_tokens=False)), 0)


async def completions(request: Request) -> Response:
    """``POST /v1/completions``: one lane per prompt."""
    state = _state(request)
    state.check_open()
    req = read_completion(await _body(request), state.config.max_tokens)
    _check_model(state, req.model)
    prompts = [_encode(state, p, i) for i, p in enumerate(req.prompts)]
    return await _generate(state, prompts, req.settings, chat=False)


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``: one lane, prompted through the chat template."""
    state = _state(request)
    state.check_open()
    req = read_chat(await _body(request), state.config.max_tokens)
    _check_model(state, req.model)
    return await _generate(state, [_chat_prompt(state, req.messages)], req.settings, chat=True)


async def _generate(
    state: ServeState, prompts: list[tuple[int, ...]], settings: GenerationSettings, chat: bool
) -> Response:
    endpoint = "chat" if chat else "completions"
    router = state.pool.router_for(settings.policy)
    state.admission.admit(len(prompts))
    state.metrics.in_flight.inc(len(prompts))
    lanes = RequestLanes(router, prompts, settings, state.tokenizer)
    run = _Run(state, lanes, endpoint)
    if settings.stream:
        return _EventStream(run, _stream(run, settings, chat))
    try:
        async for _ in lanes:
            pass
    except UpstreamError as exc:
        run.finish("upstream_error", exc)
        return _upstream_error_response(exc)
    except BaseException:
        run.finish("cancelled")
        raise
    run.finish("completed")
    for o in lanes.outcomes:
        state.metrics.sent(o.models)
    ext = rs.request_extension(lanes.outcomes, state.names, state.cost_model)
    created, model = int(time.time()), state.config.model_name
    if chat:
        body = rs.chat_body(rs.new_id("chatcmpl"), model, lanes.outcomes[0], ext, created)
    else:
        body = rs.completion_body(rs.new_id("cmpl"), model, lanes.outcomes, ext, created)
    return JSONResponse(body)


class _EventStream(StreamingResponse):
    """An SSE response that settles its request's bookkeeping however it ends (even never started)."""

    def __init__(self, run: _Run, events: AsyncIterator[bytes]):
        super().__init__(events, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
        self.run = run

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.run.lanes.cancel()
            self.run.finish("cancelled")


class _Run:
    """One generation request's bookkeeping: its slots and its metrics, settled once."""

    def __init__(self, state: ServeState, lanes: RequestLanes, endpoint: str):
        self.state, self.lanes, self.endpoint = state, lanes, endpoint
        self.started = time.perf_counter()
        self.done = False

    def finish(self, outcome: str, error: UpstreamError | None = None) -> None:
        if self.done:
            return
        self.done = True
        st, outcomes = self.state, self.lanes.outcomes
        seconds = time.perf_counter() - self.started
        st.admission.release(len(outcomes), max(o.seconds for o in outcomes) if outcome == "completed" else None)
        st.metrics.in_flight.dec(len(outcomes))
        st.metrics.requests.labels(self.endpoint, outcome).inc()
        if outcome == "completed":
            st.metrics.duration.labels(self.endpoint).observe(seconds)
        if error is not None:
            st.metrics.upstream_errors.labels(error.engine or "unknown").inc()
        for o in outcomes:
            _count_lane(st, o)


def _count_lane(state: ServeState, outcome: LaneOutcome) -> None:
    report = getattr(outcome.result, "report", None)
    if report is None:
        return
    state.metrics.lane_done(report.switches, report.catchup, report.wasted, rs.handoff_latencies(outcome.result))


def _upstream_message(exc: UpstreamError) -> str:
    engine = f"upstream {exc.engine!r}" if exc.engine else "an upstream"
    return f"{engine} failed while generating this request: {exc}"


def _upstream_error_response(exc: UpstreamError) -> Response:
    body = rs.error_body(_upstream_message(exc), "upstream_error", None, "upstream_failed")
    return JSONResponse(body, status_code=502)


async def _stream(run: _Run, settings: GenerationSettings, chat: bool) -> AsyncIterator[bytes]:
    """The answer as SSE: a chunk per token (with its route), each lane's last chunk, usage, ``[DONE]``."""
    state, lanes = run.state, run.lanes
    maker = rs.ChunkMaker(chat, state.config.model_name)
    try:
        if chat:
            yield sse.event(maker.chunk([maker.choice(0, "", role=True)]))
        async for piece in lanes:
            ext = {}
            if piece.token is not None:
                state.metrics.sent([piece.model])
                ext = {"ead": {"routes": [piece.model], "token_ids": [piece.token]}}
            yield sse.event(maker.chunk([maker.choice(piece.index, piece.text)], **ext))
        for o in lanes.outcomes:
            last = maker.choice(o.index, None if chat else "", o.finish_reason)
            yield sse.event(maker.chunk([last], ead=rs.lane_extension(o)))
        if settings.include_usage:
            ext = rs.request_extension(lanes.outcomes, state.names, state.cost_model, choices=False)
            yield sse.event(maker.chunk([], usage=rs.usage(lanes.outcomes), ead=ext))
        yield sse.DONE
        run.finish("completed")
    except UpstreamError as exc:
        run.finish("upstream_error", exc)
        yield sse.event(rs.error_body(_upstream_message(exc), "upstream_error", None, "upstream_failed"))
        yield sse.DONE
    finally:
        run.finish("cancelled")  # the client left (the task was cancelled) or something unexpected broke


async def models(request: Request) -> Response:
    """``GET /v1/models``: the one routed model, with its ladder and spec in ``ead``."""
    state = _state(request)
    entry = {
        "id": state.config.model_name,
        "object": "model",
        "created": state.started,
        "owned_by": "ead-sdk",
        "ead": {"models": list(state.names), "policy": state.pool.policy.spec()},
    }
    return JSONResponse({"object": "list", "data": [entry]})


async def health(request: Request) -> Response:
    """``GET /health``: 200 while serving, 503 while draining."""
    state = _state(request)
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse({"status": "ok", "lanes_in_flight": state.admission.in_use})


async def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text exposition."""
    state = _state(request)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


async def request_error(request: Request, exc: Exception) -> Response:
    """A `ServeRequestError` as its OpenAI error body and status (429 with ``Retry-After``)."""
    assert isinstance(exc, ServeRequestError)
    state = _state(request)
    headers = {}
    if exc.status == 429:
        headers["Retry-After"] = str(state.admission.retry_after())
    outcome = "rejected" if exc.status in (429, 503) else "invalid"
    endpoint = "chat" if request.url.path.endswith("chat/completions") else "completions"
    state.metrics.requests.labels(endpoint, outcome).inc()
    return JSONResponse(rs.error_body(str(exc), exc.kind, exc.param, exc.code), exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such route, wrong method) as OpenAI error bodies."""
    assert isinstance(exc, HTTPException)
    return JSONResponse(rs.error_body(str(exc.detail), "invalid_request_error"), exc.status_code, headers=exc.headers)

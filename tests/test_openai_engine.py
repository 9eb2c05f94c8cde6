"""OpenAIEngine against the fake OpenAI-compatible upstream: token ids, top-k, cancellation, faults."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("httpx")
pytest.importorskip("httpx_sse")
pytest.importorskip("uvicorn")

import httpx  # noqa: E402

from ead_sdk.backend import Sampling  # noqa: E402
from ead_sdk.backends.openai_engine import OpenAIEngine  # noqa: E402
from ead_sdk.errors import ArgumentError, UpstreamError  # noqa: E402
from ead_sdk.serving import EngineRequest, EngineSignals  # noqa: E402
from ead_sdk.testing.fake_openai import FakeOpenAI, Fault, ToyLM  # noqa: E402
from ead_sdk.testing.vllm_server import free_port  # noqa: E402

VOCAB = 64
PROMPT = (1, 2, 3)
LM = ToyLM(VOCAB, seed=3)


def engine_for(fake: FakeOpenAI, **options) -> OpenAIEngine:
    options.setdefault("read_timeout", 5.0)
    return OpenAIEngine(fake.base_url, fake.model, vocab_size=VOCAB, name="small", **options)


def collect(engine: OpenAIEngine, request: EngineRequest) -> list:
    async def run():
        try:
            return [token async for token in engine.stream(request)]
        finally:
            await engine.aclose()

    return asyncio.run(run())


def request(max_tokens: int = 8, top_k: int = 5, **fields) -> EngineRequest:
    return EngineRequest(PROMPT, max_tokens, top_k=top_k, request_id="lane-0", **fields)


def expected_top(context, k):
    logprobs = LM.logprobs(context)
    ids = np.argsort(-logprobs, kind="stable")[:k]
    return tuple(int(i) for i in ids), tuple(float(logprobs[i]) for i in ids)


# -- tokens, ids and top-k ------------------------------------------------------------------------
@pytest.mark.parametrize(("dialect", "per_chunk"), [("vllm", 1), ("vllm", 3), ("llama.cpp", 1)])
def test_greedy_stream_gives_the_models_tokens_and_top_k_by_id(dialect, per_chunk):
    lm = LM  # no end-of-sequence: the stream runs to max_tokens
    with FakeOpenAI(lm, dialect=dialect, tokens_per_chunk=per_chunk) as fake:
        tokens = collect(engine_for(fake), request(max_tokens=10, top_k=5))
        body = fake.requests[0].body
    want = lm.greedy(PROMPT, 10)
    assert [t.token for t in tokens] == want
    context = list(PROMPT)
    for token in tokens:
        logprobs = lm.logprobs(context)
        ids = tuple(int(i) for i in np.argsort(-logprobs, kind="stable")[:5])
        assert token.top_ids == ids
        assert token.top_logprobs == pytest.approx([logprobs[i] for i in ids], abs=1e-12)
        assert token.logprob == pytest.approx(logprobs[token.token], abs=1e-12)
        assert token.entropy is None
        context.append(token.token)
    assert [t.finish_reason for t in tokens] == [None] * 9 + ["length"]
    assert body["prompt"] == list(PROMPT) and body["stream"] is True and body["logprobs"] == 5
    assert body["return_tokens_as_token_ids"] is True and body["temperature"] == 0.0
    assert body["max_tokens"] == 10 and body["model"] == fake.model


def test_the_drawn_token_outside_the_top_k_is_not_counted_among_them():
    with FakeOpenAI(LM) as fake:
        sampling = Sampling(do_sample=True, temperature=3.0, seed=11)
        tokens = collect(engine_for(fake), request(max_tokens=30, top_k=1, sampling=sampling))
        body = fake.requests[0].body
    assert body["temperature"] == 3.0 and body["seed"] == 11
    outside = [t for t in tokens if t.top_ids != (t.token,)]
    assert outside, "a hot sampler draws some token outside the top-1"
    assert all(len(t.top_ids) == 1 and len(t.top_logprobs) == 1 for t in tokens)
    assert all(t.logprob <= t.top_logprobs[0] for t in outside)


@pytest.mark.parametrize("dialect", ["vllm", "llama.cpp"])
def test_end_of_sequence_ends_the_request_with_finish_reason_stop(dialect):
    path = LM.greedy(PROMPT, 20)
    eos = next(t for i, t in enumerate(path) if i >= 3 and t not in path[:i])
    lm = ToyLM(VOCAB, seed=3, eos_id=eos)
    with FakeOpenAI(lm, dialect=dialect) as fake:
        tokens = collect(engine_for(fake, eos_token_ids=[eos]), request(max_tokens=20))
    assert [t.token for t in tokens] == path[: path.index(eos) + 1] == lm.greedy(PROMPT, 20)
    assert tokens[-1].finish_reason == "stop"


def test_stop_token_ids_are_sent_and_end_the_request():
    full = LM.greedy(PROMPT, 12)
    stop = full[5]
    with FakeOpenAI(LM) as fake:
        tokens = collect(engine_for(fake), request(max_tokens=12, stop_token_ids=(stop,)))
        assert fake.requests[0].body["stop_token_ids"] == [stop]
    assert [t.token for t in tokens] == full[: full.index(stop) + 1]
    assert tokens[-1].finish_reason == "stop"


def test_a_server_ignoring_stop_token_ids_is_cut_at_the_stop_id_by_the_engine():
    lm = ToyLM(VOCAB, seed=3)
    full = lm.greedy(PROMPT, 40)
    stop = full[4]
    with FakeOpenAI(lm, dialect="llama.cpp", token_delay=0.02) as fake:  # llama.cpp ignores stop_token_ids
        tokens = collect(engine_for(fake), request(max_tokens=40, stop_token_ids=(stop,)))
        assert fake.requests[0].wait_closed(5.0)
        assert fake.requests[0].outcome == "disconnected", "the engine closed the stream at the stop id"
    assert [t.token for t in tokens] == full[: full.index(stop) + 1]
    assert tokens[-1].finish_reason == "stop"


@pytest.mark.parametrize("dialect", ["sglang", "vllm"])
def test_text_keys_are_refused_as_ambiguous(dialect):
    # a vLLM that drops return_tokens_as_token_ids (an older release) answers with text keys too
    fake = FakeOpenAI(LM, dialect=dialect, token_text=lambda t: " same" if t % 2 else " other")
    if dialect == "vllm":
        fake_original = fake._openai_logprobs

        def ignore_flag(body, steps, k):
            return fake_original({**body, "return_tokens_as_token_ids": False}, steps, k)

        fake._openai_logprobs = ignore_flag
    with fake, pytest.raises(UpstreamError, match="by text") as info:
        collect(engine_for(fake), request())
    assert "ambiguous" in str(info.value) and info.value.engine == "small"


def test_a_server_returning_fewer_top_logprobs_than_asked_is_refused():
    with FakeOpenAI(LM, dialect="sglang", token_text=lambda t: f"token_id:{t % 3}") as fake:
        with pytest.raises(UpstreamError, match="3 top log-probabilities for a token, 5 asked"):
            collect(engine_for(fake), request(top_k=5))


def test_top_k_zero_streams_tokens_without_top_lists():
    with FakeOpenAI(LM) as fake:
        tokens = collect(engine_for(fake), request(top_k=0, max_tokens=4))
        assert fake.requests[0].body["logprobs"] == 1
    assert [t.token for t in tokens] == LM.greedy(PROMPT, 4)
    assert all(t.top_ids is None and t.top_logprobs is None and t.logprob is not None for t in tokens)


# -- options --------------------------------------------------------------------------------------
def test_signals_and_options():
    engine = OpenAIEngine("http://127.0.0.1:1/v1/", "m", vocab_size=VOCAB, k=7)
    assert engine.signals() == EngineSignals(exact=False, max_k=7)
    assert engine.url == "http://127.0.0.1:1/v1/completions" and engine.name == "m"
    for bad in (
        {"k": 21},
        {"k": 0},
        {"vocab_size": 0},
        {"read_timeout": 0},
        {"connect_timeout": float("inf")},
        {"max_connections": 0},
    ):
        with pytest.raises(ArgumentError):
            OpenAIEngine("http://127.0.0.1:1/v1", "m", **{"vocab_size": VOCAB, **bad})
    with pytest.raises(ArgumentError, match="base_url"):
        OpenAIEngine("127.0.0.1:8000", "m", vocab_size=VOCAB)


def test_requests_the_engine_cannot_serve_are_refused_before_any_connection():
    engine = OpenAIEngine("http://127.0.0.1:1/v1", "m", vocab_size=VOCAB, k=5)
    with pytest.raises(ArgumentError, match="top_k=6"):
        engine.stream(request(top_k=6))
    with pytest.raises(ArgumentError, match="top_h"):
        engine.stream(request(sampling=Sampling(do_sample=True, top_h=0.5)))


def test_api_key_extra_body_and_request_id_reach_the_server():
    with FakeOpenAI(LM, api_key="sesame") as fake:
        engine = engine_for(fake, api_key="sesame", extra_body={"priority": 3, "prompt": "text", "logprobs": 1})
        tokens = collect(engine, request(max_tokens=3))
        body = fake.requests[0].body
        assert body["priority"] == 3 and body["prompt"] == list(PROMPT) and body["logprobs"] == 5
        assert len(tokens) == 3
        with pytest.raises(UpstreamError, match="HTTP 401: invalid API key"):
            collect(engine_for(fake, api_key="wrong"), request())


def test_one_engine_serves_successive_event_loops():
    with FakeOpenAI(LM) as fake:
        engine = engine_for(fake)

        async def once():
            return [t.token async for t in engine.stream(request(max_tokens=3))]

        assert asyncio.run(once()) == asyncio.run(once()) == LM.greedy(PROMPT, 3)


# -- cancellation ---------------------------------------------------------------------------------
def test_closing_the_stream_closes_the_response_and_the_server_stops():
    with FakeOpenAI(LM, token_delay=0.02) as fake:
        engine = engine_for(fake)

        async def take_two():
            stream = engine.stream(request(max_tokens=10_000))
            got = [await stream.__anext__(), await stream.__anext__()]
            await stream.aclose()
            await engine.aclose()
            return got

        got = asyncio.run(take_two())
        record = fake.requests[0]
        assert record.wait_closed(5.0), "the server saw the client leave"
        assert record.outcome == "disconnected"
        assert len(record.tokens) < 100
    assert [t.token for t in got] == LM.greedy(PROMPT, 2)


def test_cancelling_the_consumer_task_cancels_the_request():
    with FakeOpenAI(LM, token_delay=0.02) as fake:
        engine = engine_for(fake)

        async def consume():
            async for _ in engine.stream(request(max_tokens=10_000)):
                pass

        async def main():
            task = asyncio.ensure_future(consume())
            for _ in range(1000):  # until the server streams (a loaded machine may take a while)
                if fake.requests and fake.requests[0].tokens:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await engine.aclose()

        asyncio.run(main())
        assert fake.requests[0].wait_closed(5.0)
        assert fake.requests[0].outcome == "disconnected"


# -- faults ---------------------------------------------------------------------------------------
FAULTS = [
    (Fault.http_error(503, "server overloaded"), "HTTP 503: server overloaded"),
    (Fault.http_error(400, "logprobs too large"), "HTTP 400: logprobs too large"),
    (Fault.disconnect(after=3), "the stream broke after 3 tokens"),
    (Fault.malformed(after=2), "malformed event (not JSON)"),
    (Fault.malformed(after=1, chunk=b'data: {"choices": 5}\n\n'), "no 'choices' list"),
    (Fault.malformed(after=1, chunk=b"data: [1, 2]\n\n"), "not a JSON object"),
    (Fault.error_event(after=2, message="CUDA out of memory"), "error mid-stream: CUDA out of memory"),
    (Fault.no_done(after=4), "ended without data: [DONE] after 4 tokens"),
    (Fault.stall(after=2), "no data from the server for 1.0 s (read_timeout) after 2 tokens"),
]


@pytest.mark.parametrize("dialect", ["vllm", "llama.cpp"])
@pytest.mark.parametrize(("fault", "message"), FAULTS, ids=[f"{f.kind}-{f.after}" for f, _ in FAULTS])
def test_each_fault_raises_an_upstream_error_naming_engine_url_and_cause(fault, message, dialect):
    with FakeOpenAI(LM, dialect=dialect, faults=[fault]) as fake:
        engine = engine_for(fake, read_timeout=1.0)
        seen = []

        async def run():
            try:
                async for token in engine.stream(request(max_tokens=50)):
                    seen.append(token.token)
            finally:
                await engine.aclose()

        with pytest.raises(UpstreamError) as info:
            asyncio.run(asyncio.wait_for(run(), 10))
        assert fake.requests[0].wait_closed(5.0), "the server is not left streaming"
    outcomes = {"disconnect": {"fault"}, "http_error": {"rejected"}, "stall": {"disconnected"}}
    assert fake.requests[0].outcome in outcomes.get(fault.kind, {"fault", "disconnected"})
    text = str(info.value)
    assert message in text
    assert "engine 'small'" in text and engine.url in text and "request 'lane-0'" in text
    assert info.value.engine == "small"
    assert seen == LM.greedy(PROMPT, 50)[: len(seen)]


def test_a_slow_upstream_within_the_read_timeout_streams_normally():
    with FakeOpenAI(LM, faults=[Fault.slow(0.05)]) as fake:
        tokens = collect(engine_for(fake, read_timeout=1.0), request(max_tokens=5))
    assert [t.token for t in tokens] == LM.greedy(PROMPT, 5)


def test_no_server_gives_cannot_connect():
    engine = OpenAIEngine(f"http://127.0.0.1:{free_port()}/v1", "m", vocab_size=VOCAB, name="large")
    with pytest.raises(
        UpstreamError, match=r"engine 'large' \(POST http://127.0.0.1:\d+/v1/completions.*cannot connect"
    ):
        collect(engine, request())


def test_an_unknown_model_gives_the_servers_404_message():
    with FakeOpenAI(LM) as fake:
        engine = OpenAIEngine(fake.base_url, "other-model", vocab_size=VOCAB)
        with pytest.raises(UpstreamError, match="HTTP 404: The model `other-model` does not exist"):
            collect(engine, request())


def test_a_reply_that_is_not_an_event_stream_is_refused():
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": []})

    engine = OpenAIEngine("http://upstream.test/v1", "m", vocab_size=VOCAB, transport=httpx.MockTransport(handler))
    with pytest.raises(UpstreamError, match="not an event stream"):
        collect(engine, request())


def test_an_http_error_with_a_plain_text_body_keeps_the_text():
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad Gateway from the proxy")

    engine = OpenAIEngine("http://upstream.test/v1", "m", vocab_size=VOCAB, transport=httpx.MockTransport(handler))
    with pytest.raises(UpstreamError, match="HTTP 502: Bad Gateway from the proxy"):
        collect(engine, request())


def test_a_fault_on_one_request_leaves_concurrent_requests_whole():
    def fault_for(record):
        return Fault.disconnect(after=2) if record.body["prompt"][0] == 9 else None

    with FakeOpenAI(LM, faults=fault_for, token_delay=0.005) as fake:
        engine = engine_for(fake)
        prompts = [(9, 1), (4, 1), (5, 1), (6, 1)]

        async def one(prompt):
            return [t.token async for t in engine.stream(EngineRequest(prompt, 12, top_k=3))]

        async def main():
            try:
                return await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)
            finally:
                await engine.aclose()

        results = asyncio.run(main())
    assert isinstance(results[0], UpstreamError) and "broke after 2 tokens" in str(results[0])
    for prompt, tokens in zip(prompts[1:], results[1:], strict=True):
        assert tokens == LM.greedy(prompt, 12)


def test_the_model_name_is_asked_of_the_server_when_not_given():
    class Tokenizer:
        eos_token_id = None

        def __len__(self):
            return VOCAB

    with FakeOpenAI(LM, model="served-name") as fake:
        engine = OpenAIEngine(fake.base_url, tokenizer=Tokenizer())
        assert engine.vocab_size == VOCAB and engine.name == fake.base_url
        tokens = collect(engine, request(max_tokens=3))
        assert engine.model == "served-name" and fake.requests[0].body["model"] == "served-name"
    assert [t.token for t in tokens] == LM.greedy(PROMPT, 3)


def test_a_server_listing_several_models_needs_the_name():
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"object": "list", "data": [{"id": "a"}, {"id": "b"}]})

    engine = OpenAIEngine("http://upstream.test/v1", vocab_size=VOCAB, transport=httpx.MockTransport(handler))
    with pytest.raises(UpstreamError, match=r"lists \['a', 'b'\]: name the model"):
        collect(engine, request())
    with pytest.raises(ArgumentError, match="vocab_size is needed"):
        OpenAIEngine("http://upstream.test/v1", "m")


def sse_engine(*events: dict | str) -> OpenAIEngine:
    """An engine whose server answers every request with these events, then ``[DONE]``."""
    body = b"".join(b"data: " + (e if isinstance(e, str) else json.dumps(e)).encode() + b"\n\n" for e in events)
    body += b"data: [DONE]\n\n"

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return OpenAIEngine("http://upstream.test/v1", "m", vocab_size=VOCAB, transport=httpx.MockTransport(handler))


def vllm_event(top: dict, token: str = "token_id:3", logprob=-0.5, finish=None) -> dict:
    block = {"tokens": [token], "token_logprobs": [logprob], "top_logprobs": [top], "text_offset": [0]}
    return {"choices": [{"index": 0, "text": "x", "logprobs": block, "finish_reason": finish}]}


def test_top_maps_are_sorted_by_log_probability_and_rounding_above_zero_is_clamped():
    top = {"token_id:5": -2.0, "token_id:3": 1e-5, "token_id:9": -1, "token_id:1": -float("inf")}
    (token,) = collect(sse_engine(vllm_event(top, logprob=1e-5)), request(top_k=4, max_tokens=1))
    assert token.token == 3 and token.logprob == 0.0
    assert token.top_ids == (3, 9, 5, 1) and token.top_logprobs == (0.0, -1.0, -2.0, -float("inf"))
    assert token.finish_reason == "length"


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (vllm_event({"token_id:3": float("nan")}), "malformed log-probability nan"),
        (vllm_event({"token_id:3": 0.5}), "malformed log-probability 0.5"),
        (vllm_event({"token_id:3": "-1"}), "malformed log-probability '-1'"),
        (vllm_event({"token_id:x": -1.0}), "names tokens by text"),
        (vllm_event({"token_id:3": -1.0}, token="the"), "names tokens by text ('the')"),
        ({"choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": None}]}, "ignored 'logprobs'"),
        ({"choices": [{"index": 1, "text": "x"}]}, "one choice of index 0"),
        ({"choices": [{"index": 0, "logprobs": {"content": [{"id": -1}]}}]}, "malformed 'logprobs.content'"),
        ({"choices": [{"index": 0, "logprobs": {"tokens": ["token_id:1"], "top_logprobs": []}}]}, "must be lists"),
    ],
)
def test_unreadable_events_are_upstream_errors(event, message):
    with pytest.raises(UpstreamError, match="engine 'm' .*" + re.escape(message)):
        collect(sse_engine(event), request(top_k=1))


@pytest.fixture(scope="module")
def servers():
    with FakeOpenAI(LM) as vllm_like, FakeOpenAI(LM, dialect="llama.cpp") as llamacpp_like:
        yield {"vllm": vllm_like, "llama.cpp": llamacpp_like}


@settings(max_examples=40, deadline=None)
@given(
    dialect=st.sampled_from(["vllm", "llama.cpp"]),
    prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=5),
    max_tokens=st.integers(1, 12),
    top_k=st.integers(0, 20),
    per_chunk=st.integers(1, 4),
)
def test_property_the_stream_is_the_models_greedy_path_with_its_top_k(
    servers, dialect, prompt, max_tokens, top_k, per_chunk
):
    fake = servers[dialect]
    fake.tokens_per_chunk = per_chunk
    engine = OpenAIEngine(fake.base_url, fake.model, vocab_size=VOCAB, k=20)
    tokens = collect(engine, EngineRequest(tuple(prompt), max_tokens, top_k=top_k))
    assert [t.token for t in tokens] == LM.greedy(prompt, max_tokens)
    assert [t.finish_reason for t in tokens] == [None] * (max_tokens - 1) + ["length"]
    context = list(prompt)
    for t in tokens:
        logprobs = LM.logprobs(context)
        if top_k:
            assert t.top_ids == tuple(int(i) for i in np.argsort(-logprobs, kind="stable")[:top_k])
            assert t.top_logprobs == tuple(float(logprobs[i]) for i in t.top_ids)
        else:
            assert t.top_ids is None and t.top_logprobs is None
        assert t.logprob == float(logprobs[t.token])
        context.append(t.token)

"""ead serve over in-memory engines on a real loopback server: the OpenAI API, its errors, its bounds, its streams."""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from serve_harness import ChatToyTokenizer, running_server, sse_events  # noqa: E402

from ead_sdk.errors import ServeError, SignalUnavailableError  # noqa: E402
from ead_sdk.serve.state import ServeConfig, ServeState  # noqa: E402
from ead_sdk.specs import load_policy  # noqa: E402
from ead_sdk.testing.serving import FaultyEngine, ToyEngine  # noqa: E402

EOS = 25


def ladder(delay: float = 0.0, exact: bool = True) -> list[ToyEngine]:
    return [
        ToyEngine("small", seed=1, vocab_size=26, eos_token_id=EOS, num_params=100, delay=delay, exact=exact),
        ToyEngine("large", seed=2, vocab_size=26, eos_token_id=EOS, num_params=1000, delay=delay, exact=exact),
    ]


def escalating(escalation: str = "retry", threshold: float = 3.0) -> object:
    """A policy that escalates on most tokens of the toy engines (their entropies spread over 0..log 26)."""
    return load_policy(
        {"policy": "rolling_entropy", "params": {"threshold": threshold, "window": 1}, "escalation": escalation}
    )


TOK = ChatToyTokenizer(ladder()[0].tokenizer)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_the_openai_client_works_unchanged_whole_and_streamed():
    with running_server(ladder(), escalating(), TOK) as srv:
        c = client(srv.url)
        whole = c.completions.create(model="ead-router", prompt="hello", max_tokens=12, temperature=0)
        ext = whole.model_extra["ead"]
        assert whole.usage.completion_tokens == len(ext["choices"][0]["token_ids"]) > 0
        assert whole.usage.prompt_tokens == 5
        assert whole.choices[0].text == TOK.decode(ext["choices"][0]["token_ids"], skip_special_tokens=True)
        assert set(ext["choices"][0]["routes"]) <= {0, 1} and ext["models"] == ["small", "large"]
        assert ext["cost"]["tokens"] == whole.usage.completion_tokens

        stream = c.completions.create(model="ead-router", prompt="hello", max_tokens=12, temperature=0, stream=True)
        chunks = list(stream)
        assert "".join(ch.choices[0].text for ch in chunks) == whole.choices[0].text
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason

        chat = c.chat.completions.create(model="ead-router", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
        parts = c.chat.completions.create(
            model="ead-router",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            seed=3,
            temperature=0.7,
        )
        parts = list(parts)
        assert parts[0].choices[0].delta.role == "assistant"
        assert parts[-1].choices == [] and parts[-1].usage.completion_tokens >= 1
        models = c.models.list()
        assert [m.id for m in models.data] == ["ead-router"]


def test_chat_prompts_go_through_the_tokenizers_chat_template():
    with running_server(ladder(), escalating(), TOK) as srv:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
        chat = httpx.post(f"{srv.url}/v1/chat/completions", json=body).json()
        prompt = TOK.encode(TOK.apply_chat_template(body["messages"]))
        same = httpx.post(f"{srv.url}/v1/completions", json={"prompt": prompt, "max_tokens": 3, "temperature": 0})
        assert chat["usage"]["prompt_tokens"] == len(prompt)
        assert chat["ead"]["choices"][0]["token_ids"] == same.json()["ead"]["choices"][0]["token_ids"]


@pytest.mark.parametrize("escalation", ["retry", "retry_token"])
def test_a_stream_never_takes_a_token_back_under_retrying_escalation(escalation):
    with running_server(ladder(), escalating(escalation), TOK) as srv:
        body = {"prompt": "abcde", "max_tokens": 40, "temperature": 0}
        whole = httpx.post(f"{srv.url}/v1/completions", json=body).json()
        r = httpx.post(f"{srv.url}/v1/completions", json={**body, "stream": True})
        events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"] and e["choices"][0]["finish_reason"] is None]
    streamed = [t for e in chunks for t in e["ead"]["token_ids"]]
    last = events[-2]["ead"]
    final = whole["ead"]["choices"][0]
    assert streamed == last["token_ids"] == final["token_ids"]  # every token sent was final
    assert [r for e in chunks for r in e["ead"]["routes"]] == final["routes"]
    assert final["cost"]["wasted"][0] > 0  # the small model's token was replaced, before it was sent
    assert 0 < sum(final["cost"]["emitted"][1:]) < len(final["token_ids"])


def test_stop_strings_end_the_text_before_them_in_both_forms():
    with running_server(ladder(), escalating(), TOK) as srv:
        free = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "abc", "max_tokens": 30, "temperature": 0})
        text = free.json()["choices"][0]["text"]
        assert len(text) > 6
        stop = text[3:5]
        body = {"prompt": "abc", "max_tokens": 30, "temperature": 0, "stop": [stop]}
        whole = httpx.post(f"{srv.url}/v1/completions", json=body).json()
        streamed = sse_events(httpx.post(f"{srv.url}/v1/completions", json={**body, "stream": True}).text)
    want = text[: text.index(stop)]
    assert whole["choices"][0]["text"] == want and whole["choices"][0]["finish_reason"] == "stop"
    assert "".join(e["choices"][0]["text"] for e in streamed[:-1] if e["choices"]) == want


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "a", "n": 2}, 400, "n"),
        ({"prompt": "a", "temperature": -1}, 400, "temperature"),
        ({"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "a", "max_tokens": 10**6}, 400, "max_tokens"),
        ({"prompt": [[1, 99]]}, 400, "prompt"),
        ({"prompt": ""}, 400, "prompt"),
        ({}, 400, "prompt"),
        ({"prompt": "a", "model": "gpt-9"}, 404, "model"),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"prompt": "a", "logprobs": 3}, 400, "logprobs"),
        ({"prompt": "a", "ead": {"params": {"threshold": 2.0}}}, 403, "ead"),
    ],
)
def test_malformed_requests_get_openai_error_bodies(body, status, param):
    with running_server(ladder(), escalating(), TOK) as srv:
        r = httpx.post(f"{srv.url}/v1/completions", json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["message"] and err["type"]
        bad_json = httpx.post(f"{srv.url}/v1/completions", content=b"{not json")
        assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
        missing = httpx.get(f"{srv.url}/v1/nothing")
        assert missing.status_code == 404 and "error" in missing.json()
        with pytest.raises(openai.BadRequestError):
            client(srv.url).chat.completions.create(model="ead-router", messages=[], max_tokens=2)


def test_policy_overrides_need_the_start_flag_and_are_checked():
    config = ServeConfig(allow_policy_override=True)
    with running_server(ladder(), escalating("next", 1.0), TOK, config) as srv:
        body = {"prompt": "abcde", "max_tokens": 20, "temperature": 0}
        base = httpx.post(f"{srv.url}/v1/completions", json=body).json()
        small_only = {"ead": {"policy": {"policy": "fixed", "params": {"model": 0}}}}
        fixed = httpx.post(f"{srv.url}/v1/completions", json={**body, **small_only}).json()
        assert set(fixed["ead"]["choices"][0]["routes"]) == {0}
        assert set(base["ead"]["choices"][0]["routes"]) == {0, 1}
        high = httpx.post(f"{srv.url}/v1/completions", json={**body, "ead": {"params": {"threshold": 50.0}}}).json()
        assert set(high["ead"]["choices"][0]["routes"]) == {0}
        bad = httpx.post(f"{srv.url}/v1/completions", json={**body, "ead": {"params": {"thresold": 1}}})
        assert bad.status_code == 400 and "thresold" in bad.json()["error"]["message"]


def test_past_the_bound_requests_get_429_with_retry_after():
    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as c:
            body = {"prompt": "abc", "max_tokens": 20, "temperature": 0}
            return await asyncio.gather(*[c.post(f"{url}/v1/completions", json=body) for _ in range(6)])

    with running_server(ladder(delay=0.01), escalating(), TOK, ServeConfig(max_lanes=2)) as srv:
        answers = asyncio.run(burst(srv.url))
        codes = sorted(r.status_code for r in answers)
        assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) <= {200, 429}
        for r in answers:
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["error"]["type"] == "rate_limit_error"
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert f'ead_requests_total{{endpoint="completions",outcome="rejected"}} {codes.count(429)}.0' in metrics
        assert httpx.get(f"{srv.url}/health").json()["lanes_in_flight"] == 0


def _breaks_on(prompt_start: int):
    return lambda request: request.prompt[0] == prompt_start


@pytest.mark.parametrize("fault", ["fail", "hang"])
def test_an_upstream_fault_ends_only_the_affected_request(fault):
    def engines():
        small, large = ladder(delay=0.002)
        kind = {"fail_after": 3} if fault == "fail" else {"hang_after": 3}
        return [FaultyEngine(small, when=_breaks_on(7), **kind), large]

    async def both(url: str):
        async with httpx.AsyncClient(timeout=60) as c:
            good = {"prompt": [1, 2, 3], "max_tokens": 30, "temperature": 0, "stream": True}
            bad = {**good, "prompt": [7, 2, 3]}
            return await asyncio.gather(*[c.post(f"{url}/v1/completions", json=b) for b in (good, bad, good)])

    policy = load_policy({"policy": "fixed", "params": {"model": 0}})
    with running_server(engines, policy, TOK) as srv:
        srv.state.pool.default.timeout = 1.0  # a hung upstream fails its lane after a second of silence
        ok1, broken, ok2 = asyncio.run(both(srv.url))
        whole = httpx.post(f"{srv.url}/v1/completions", json={"prompt": [7, 2, 3], "max_tokens": 30})
        metrics = httpx.get(f"{srv.url}/metrics").text
    for ok in (ok1, ok2):
        events = sse_events(ok.text)
        assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    events = sse_events(broken.text)
    assert events[-1] == "[DONE]" and "small" in events[-2]["error"]["message"]
    assert events[-2]["error"]["type"] == "upstream_error"
    assert whole.status_code == 502 and whole.json()["error"]["code"] == "upstream_failed"
    assert 'ead_upstream_errors_total{engine="small"} 2.0' in metrics


def test_the_openai_client_raises_on_a_stream_error_event():
    def engines():
        small, large = ladder()
        return [FaultyEngine(small, fail_after=2), large]

    policy = load_policy({"policy": "fixed", "params": {"model": 0}})
    with running_server(engines, policy, TOK, ServeConfig(probe=False)) as srv:
        stream = client(srv.url).completions.create(model="ead-router", prompt="abc", max_tokens=10, stream=True)
        with pytest.raises(openai.APIError, match="small"):
            list(stream)


def test_the_server_refuses_to_start_when_the_upstreams_cannot_give_the_specs_signal():
    exact = escalating()
    with pytest.raises(SignalUnavailableError, match="small|large"):
        asyncio.run(ServeState.start(ladder(exact=False), exact, TOK))

    def engines():
        small, large = ladder()
        return [small, FaultyEngine(large, fail_after=0)]

    with pytest.raises(ServeError, match="large"), running_server(engines, exact, TOK):
        pass


def test_metrics_count_tokens_per_model_and_switches():
    with running_server(ladder(), escalating("next"), TOK) as srv:
        answers = [
            httpx.post(f"{srv.url}/v1/completions", json={"prompt": p, "max_tokens": 15, "temperature": 0}).json()
            for p in ("abc", "xyz", "hello")
        ]
        text = httpx.get(f"{srv.url}/metrics").text
    routes = [r for a in answers for r in a["ead"]["choices"][0]["routes"]]
    assert f'ead_tokens_total{{model="small"}} {routes.count(0)}.0' in text
    assert f'ead_tokens_total{{model="large"}} {routes.count(1)}.0' in text
    switches = sum(a["ead"]["cost"]["switches"] for a in answers)
    assert f"ead_switches_total {switches}.0" in text
    assert 'ead_requests_total{endpoint="completions",outcome="completed"} 3.0' in text
    assert "ead_handoff_latency_seconds_count" in text


def test_a_client_that_leaves_mid_stream_cancels_its_lane_and_frees_its_slot():
    from serve_harness import wait_for

    engines = ladder(delay=0.02)
    with running_server(engines, load_policy({"policy": "fixed", "params": {"model": 0}}), TOK) as srv:
        body = {"prompt": [1, 2, 3], "max_tokens": 500, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{srv.url}/v1/completions", json=body) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]  # a few tokens, then the client goes away
        assert any(line.startswith("data: ") for line in got)
        wait_for(lambda: httpx.get(f"{srv.url}/health").json()["lanes_in_flight"] == 0)
        cancelled = engines[0].log.cancelled
        wait_for(lambda: [c for c in cancelled if c != "ead-serve-probe"] != [])  # the upstream request too
        assert engines[0].log.produced < 100
        metrics = httpx.get(f"{srv.url}/metrics").text
    assert 'ead_requests_total{endpoint="completions",outcome="cancelled"} 1.0' in metrics


def test_a_ladder_of_three_models_is_served():
    engines = [*ladder(), ToyEngine("xl", seed=3, vocab_size=26, eos_token_id=EOS, num_params=5000)]
    policy = load_policy({"policy": "rolling_entropy", "params": {"threshold": [2.0, 3.5], "window": 1}})
    with running_server(engines, policy, TOK) as srv:
        answer = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "abcde", "max_tokens": 40, "temperature": 0})
        metrics = httpx.get(f"{srv.url}/metrics").text
    ext = answer.json()["ead"]
    assert ext["models"] == ["small", "large", "xl"]
    routes = ext["choices"][0]["routes"]
    assert set(routes) == {0, 1, 2}
    assert f'ead_tokens_total{{model="xl"}} {routes.count(2)}.0' in metrics
    assert ext["cost"]["large_share"] == pytest.approx(routes.count(2) / len(routes))

"""ead serve end to end on loopback: two real `vllm serve` processes (SmolLM2 and its truncation), the openai client."""

from __future__ import annotations

import statistics

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httpx_sse")
openai = pytest.importorskip("openai")
transformers = pytest.importorskip("transformers")
# the session's `vllm serve` fixtures (tests/engine_fixtures.py) run servers through this module
pytest.importorskip("ead_sdk.testing.vllm_server", reason="the vllm serve session fixtures are not installed")

from serve_harness import running_server  # noqa: E402

from ead_sdk.serve.state import ServeConfig  # noqa: E402
from ead_sdk.specs import load_policy  # noqa: E402

K = 20
PROMPT = "The three primary colours are"


@pytest.fixture(scope="module")
def upstreams(vllm_server_small, vllm_server_large, smollm2_large):
    """The two servers, the shared tokenizer, and engines factory for ead serve."""
    from ead_sdk.backends.openai_engine import OpenAIEngine

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_large)

    def engines():
        return [
            OpenAIEngine(vllm_server_small.base_url, name="small", num_params=30_000_000, tokenizer=tokenizer),
            OpenAIEngine(vllm_server_large.base_url, name="large", num_params=135_000_000, tokenizer=tokenizer),
        ]

    return vllm_server_small, vllm_server_large, tokenizer, engines


def _spec(**spec) -> object:
    return load_policy({**spec, "signal": {"kind": "topk_entropy", "k": K}})


def test_through_ead_serve_the_large_model_alone_gives_vllms_own_greedy_tokens(upstreams):
    _, large, tokenizer, engines = upstreams
    prompt = tokenizer.encode(PROMPT)
    direct = openai.OpenAI(base_url=large.base_url, api_key="unused").completions.create(
        model=large.name, prompt=prompt, max_tokens=24, temperature=0, extra_body={"return_token_ids": True}
    )
    direct_ids = direct.choices[0].model_extra["token_ids"]
    with running_server(engines, _spec(policy="fixed", params={"model": 1}), tokenizer) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        whole = client.completions.create(model="ead-router", prompt=prompt, max_tokens=24, temperature=0)
        stream = client.completions.create(model="ead-router", prompt=PROMPT, max_tokens=24, temperature=0, stream=True)
        streamed = "".join(chunk.choices[0].text for chunk in stream)
    ours = whole.model_extra["ead"]["choices"][0]
    assert ours["token_ids"] == direct_ids and set(ours["routes"]) == {1}
    assert whole.choices[0].text == streamed == direct.choices[0].text


def test_a_switching_spec_routes_between_the_two_servers_streamed_and_whole(upstreams):
    small, _, tokenizer, engines = upstreams
    threshold = _median_small_signal(small, tokenizer)
    policy = _spec(
        policy="rolling_entropy",
        params={"threshold": threshold, "window": 1, "unit": "nats"},
        escalation="retry_token",
    )
    with running_server(engines, policy, tokenizer, ServeConfig(max_lanes=8)) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        whole = client.completions.create(model="ead-router", prompt=PROMPT, max_tokens=32, temperature=0)
        chunks = list(
            client.completions.create(model="ead-router", prompt=PROMPT, max_tokens=32, temperature=0, stream=True)
        )
        messages = [{"role": "user", "content": "Name a colour."}]
        chat = list(client.chat.completions.create(model="ead-router", messages=messages, max_tokens=16, stream=True))
    ours = whole.model_extra["ead"]
    assert set(ours["choices"][0]["routes"]) == {0, 1}  # both servers emitted tokens
    assert ours["cost"]["switches"] >= 2
    streamed_ids = [
        t for c in chunks if c.choices and c.choices[0].finish_reason is None for t in c.model_extra["ead"]["token_ids"]
    ]
    assert streamed_ids == ours["choices"][0]["token_ids"]  # greedy: the same lane, streamed token by token
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chat[0].choices[0].delta.role == "assistant" and "".join(
        c.choices[0].delta.content or "" for c in chat if c.choices
    )


def _median_small_signal(small, tokenizer) -> float:
    """The median top-k entropy estimate (nats) of the small model's greedy continuation: a threshold that switches."""
    from ead_sdk.signals import topk_entropy_estimate

    reply = openai.OpenAI(base_url=small.base_url, api_key="unused").completions.create(
        model=small.name, prompt=tokenizer.encode(PROMPT), max_tokens=32, temperature=0, logprobs=K
    )
    tops = [sorted(d.values(), reverse=True)[:K] for d in reply.choices[0].logprobs.top_logprobs]
    import numpy as np

    return float(statistics.median(float(topk_entropy_estimate(np.asarray(t, np.float64))) for t in tops))

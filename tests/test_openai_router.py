"""The lane hand-off router over OpenAIEngines on fake OpenAI-compatible upstreams.

Two fake servers serve two toy models (small, large). With fixed routes the router's tokens are
each model's greedy continuation; with a switching policy each emitted token is the greedy choice
of the model that emitted it, and the signal the policy saw is the top-k estimate of that model's
distribution. A fault on one lane's upstream fails that lane alone, and nothing hangs.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("httpx")
pytest.importorskip("httpx_sse")
pytest.importorskip("uvicorn")

import ead_sdk  # noqa: E402
from ead_sdk.backends.openai_engine import OpenAIEngine  # noqa: E402
from ead_sdk.errors import UpstreamError  # noqa: E402
from ead_sdk.handoff import HandoffRouter  # noqa: E402
from ead_sdk.interface import ESCALATIONS  # noqa: E402
from ead_sdk.signals import topk_entropy_estimate  # noqa: E402
from ead_sdk.testing.fake_openai import FakeOpenAI, Fault, ToyLM  # noqa: E402

VOCAB, K = 64, 5
SMALL, LARGE = ToyLM(VOCAB, seed=1), ToyLM(VOCAB, seed=2)
PROMPTS = [[9, 1, 2], [4, 5], [6, 7, 8], [10, 11]]  # lane 0 starts with 9: the faulty lane below
SIGNAL = {"kind": "topk_entropy", "k": K}


def policy(escalation: str = "next", model: int | None = None):
    if model is not None:
        return ead_sdk.load_policy({"policy": "fixed", "params": {"model": model}, "signal": SIGNAL})
    params = {"threshold": 2.0, "window": 1, "unit": "nats"}
    spec = {"policy": "rolling_entropy", "params": params, "escalation": escalation, "signal": SIGNAL}
    return ead_sdk.load_policy(spec)


def engines(small: FakeOpenAI, large: FakeOpenAI, read_timeout: float = 5.0) -> list[OpenAIEngine]:
    return [
        OpenAIEngine(
            fake.base_url, fake.model, vocab_size=VOCAB, name=name, num_params=params, read_timeout=read_timeout
        )
        for fake, name, params in ((small, "small", 1_000), (large, "large", 10_000))
    ]


def route(small: FakeOpenAI, large: FakeOpenAI, chosen, max_new: int = 24, **options):
    pair = engines(small, large, **options)
    router = HandoffRouter(pair, chosen)

    async def run():
        try:
            return await asyncio.wait_for(router.generate(PROMPTS, max_new_tokens=max_new), 30)
        finally:
            await router.aclose()
            for engine in pair:
                await engine.aclose()

    return asyncio.run(run())


def no_request_left_open(*fakes: FakeOpenAI) -> None:
    for fake in fakes:
        for record in fake.requests:
            assert record.wait_closed(5.0), f"request {record.index} of {fake.model} is still open"


@pytest.mark.parametrize(("model", "lm"), [(0, SMALL), (1, LARGE)])
def test_fixed_routes_give_that_models_greedy_tokens(model, lm):
    with FakeOpenAI(SMALL) as small, FakeOpenAI(LARGE) as large:
        result = route(small, large, policy(model=model))
        no_request_left_open(small, large)
    for prompt, lane in zip(PROMPTS, result, strict=True):
        assert lane.error is None
        assert list(lane.tokens) == lm.greedy(prompt, 24)
        assert list(lane.models) == [model] * 24


@pytest.mark.parametrize("escalation", ESCALATIONS)
def test_switching_lanes_emit_the_greedy_token_of_the_model_that_emitted_it(escalation):
    lms = (SMALL, LARGE)
    with FakeOpenAI(SMALL, token_delay=0.002) as small, FakeOpenAI(LARGE, token_delay=0.002) as large:
        result = route(small, large, policy(escalation))
        no_request_left_open(small, large)
        assert any(r.outcome == "disconnected" for r in small.requests + large.requests), "hand-offs cancel"
    switched = 0
    for prompt, lane in zip(PROMPTS, result, strict=True):
        assert lane.error is None and len(lane.tokens) == 24
        context = list(prompt)
        for token, model in zip(lane.tokens, lane.models, strict=True):
            assert token == int(np.argmax(lms[model].logprobs(context)))
            context.append(token)
        switched += len(lane.handoffs)
        log = lane.decisions
        for t, m, signal in zip(log.index.tolist(), log.model.tolist(), log.signal.tolist(), strict=True):
            top = np.sort(lms[m].logprobs(list(prompt) + list(lane.tokens[:t])))[::-1][:K]
            assert signal == pytest.approx(float(topk_entropy_estimate(top, VOCAB)), abs=1e-9)
    assert switched, "the threshold should make some lanes switch"


FAULTS = [
    (Fault.disconnect(after=3), "the stream broke after 3 tokens"),
    (Fault.malformed(after=2), "malformed event"),
    (Fault.error_event(after=1, message="engine died"), "engine died"),
    (Fault.no_done(after=4), "without data: [DONE]"),
    (Fault.stall(after=2), "no data from the server for 1.0 s"),
    (Fault.http_error(500, "internal failure"), "HTTP 500: internal failure"),
]


@pytest.mark.parametrize(("fault", "message"), FAULTS, ids=[f.kind for f, _ in FAULTS])
def test_a_fault_on_one_lane_fails_that_lane_while_the_others_finish(fault, message):
    def faulty_lane(record):
        return fault if record.body["prompt"][0] == 9 else None

    with FakeOpenAI(SMALL) as small, FakeOpenAI(LARGE, faults=faulty_lane) as large:
        result = route(small, large, policy(model=1), read_timeout=1.0)
        no_request_left_open(small, large)
    bad = result[0]
    assert isinstance(bad.error, UpstreamError) and bad.finish_reason == "error"
    assert bad.error.lane == 0 and bad.error.engine == "large"
    assert message in str(bad.error) and "lane 0" in str(bad.error)
    assert list(bad.tokens) == LARGE.greedy(PROMPTS[0], 24)[: len(bad.tokens)]
    for prompt, lane in zip(PROMPTS[1:], list(result)[1:], strict=True):
        assert lane.error is None and list(lane.tokens) == LARGE.greedy(prompt, 24)


def test_a_lane_stream_raises_its_upstream_error_and_the_other_lanes_stream_on():
    def faulty_lane(record):
        return Fault.disconnect(after=2) if record.body["prompt"][0] == 9 else None

    async def consume(lane):
        tokens = []
        try:
            async for event in lane:
                tokens.append(event.token)
        except UpstreamError as exc:
            return exc
        return tokens

    with FakeOpenAI(SMALL, faults=faulty_lane, token_delay=0.002) as small, FakeOpenAI(LARGE) as large:
        pair = engines(small, large)
        router = HandoffRouter(pair, policy(model=0))

        async def run():
            lanes = [router.open_lane(p, max_new_tokens=16) for p in PROMPTS]
            try:
                return await asyncio.wait_for(asyncio.gather(*(consume(lane) for lane in lanes)), 30)
            finally:
                await router.aclose()
                for engine in pair:
                    await engine.aclose()

        outcomes = asyncio.run(run())
        no_request_left_open(small, large)
    assert isinstance(outcomes[0], UpstreamError) and outcomes[0].lane == 0
    assert "broke after 2 tokens" in str(outcomes[0])
    for prompt, tokens in zip(PROMPTS[1:], outcomes[1:], strict=True):
        assert tokens == SMALL.greedy(prompt, 16)

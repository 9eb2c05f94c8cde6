"""The hand-off router over OpenAI-compatible servers (`OpenAIEngine` against two fake upstreams).

Each fake (`ead_sdk.testing.fake_openai.FakeOpenAI`) serves a toy model over real HTTP on
127.0.0.1 and returns only top-k log-probabilities, so the policy reads the top-k entropy
estimate. Faults scripted per lane (a stream that breaks mid-way, malformed chunks, an HTTP
error, a stalled or slow upstream) must end only their own lane with a clear error, let the
other lanes finish exactly as without faults, and never hang.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import ead_sdk
from ead_sdk.errors import UpstreamError
from ead_sdk.handoff import HandoffRouter
from ead_sdk.interface import ESCALATIONS
from ead_sdk.signal_spec import SignalSpec

pytest.importorskip("httpx_sse")
pytest.importorskip("uvicorn")
openai_engine = pytest.importorskip("ead_sdk.backends.openai_engine", reason="the OpenAI-compatible adapter")
fake_openai = pytest.importorskip("ead_sdk.testing.fake_openai")

K = 5
PROMPTS = [[i, (5 * i + 1) % 64, (11 * i + 3) % 64] for i in range(8)]


def topk_spec(escalation: str, threshold: float = 1.0) -> dict:
    return {
        "policy": "rolling_entropy",
        "params": {"threshold": threshold, "window": 1, "unit": "nats"},
        "escalation": escalation,
        "signal": {"kind": "topk_entropy", "k": K},
    }


def topk_policy(escalation: str, threshold: float = 1.0):
    return ead_sdk.load_policy(topk_spec(escalation, threshold))


def run(policy, faults=None, **engine_options):
    """Route PROMPTS over two fakes (small, large); the `HandoffResult` and the fakes' request logs."""
    lms = [fake_openai.ToyLM(seed=1), fake_openai.ToyLM(seed=2)]
    fakes = [fake_openai.FakeOpenAI(lm, faults=faults) for lm in lms]

    async def main():
        engines = [
            openai_engine.OpenAIEngine(
                f.base_url, "fake-model", vocab_size=64, name=n, num_params=p, k=K, **engine_options
            )
            for f, n, p in zip(fakes, ("small", "large"), (100, 1000), strict=True)
        ]
        try:
            router = HandoffRouter(engines, policy, timeout=5.0)
            return await asyncio.wait_for(router.generate(PROMPTS, max_new_tokens=20), 60)
        finally:
            for e in engines:
                await e.aclose()

    for f in fakes:
        f.start()
    try:
        return asyncio.run(main()), fakes, lms
    finally:
        for f in fakes:
            f.stop()


@pytest.mark.parametrize("escalation", ESCALATIONS)
def test_lanes_over_http_emit_each_models_greedy_tokens_and_replay(escalation):
    result, fakes, lms = run(topk_policy(escalation, 1.0))
    assert not result.errors
    for lane in result:
        context = list(lane.prompt)
        for tok, m in zip(lane.tokens, lane.models, strict=True):
            assert tok == int(np.argmax(lms[m].logprobs(context)))
            context.append(tok)
        fresh = ead_sdk.load_policy(topk_spec(escalation))
        assert fresh.signal == SignalSpec.topk(K)
        assert lane.decisions.replay(fresh).tolist() == lane.decisions.route.tolist()
    assert result.report.switches > 0 and result.report.emitted[1] > 0
    for f in fakes:
        for req in f.requests:
            assert isinstance(req.body["prompt"], list)  # token ids, never text
            assert req.wait_closed()


def lane_policy_spec(escalation):
    return {
        "policy": "rolling_entropy",
        "params": {"threshold": 1.0, "window": 1, "unit": "nats"},
        "escalation": escalation,
    }


FAULTS = {  # on every request of the lane, on either server
    1: fake_openai.Fault.disconnect(after=1),
    2: fake_openai.Fault.malformed(after=1),
    3: fake_openai.Fault.http_error(503),
    4: fake_openai.Fault.stall(after=1),
    5: fake_openai.Fault.slow(0.02),
    6: fake_openai.Fault.error_event(after=1),
}


def test_upstream_faults_end_only_their_lane_and_nothing_hangs():
    policy = topk_policy("retry", 1.0)
    clean, _, _ = run(policy)
    by_prompt = {tuple(p): FAULTS.get(i) for i, p in enumerate(PROMPTS)}
    result, fakes, _ = run(policy, lambda req: by_prompt.get(tuple(req.body["prompt"][:3])), read_timeout=1.0)
    assert set(result.errors) == {1, 2, 3, 4, 6}
    for i, err in result.errors.items():
        assert isinstance(err, UpstreamError) and err.engine in ("small", "large") and err.lane == result[i].lane
        assert f"lane {result[i].lane}" in str(err)
        assert result[i].finish_reason == "error"
        assert result[i].tokens == clean[i].tokens[: len(result[i].tokens)]
    for i in (0, 5, 7):
        assert (result[i].tokens, result[i].models) == (clean[i].tokens, clean[i].models)
    for f in fakes:
        assert all(req.wait_closed() for req in f.requests)

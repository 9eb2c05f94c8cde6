"""The hand-off router's lanes: hold-back, batching, stop conditions, sampling, faults, cancellation, many lanes.

Toy engines (`ead_sdk.testing.serving.ToyEngine`) are deterministic toy language models whose
tokens depend on the model, so a retried token really changes; `FaultyEngine` breaks requests.
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ead_sdk
from ead_sdk.backend import Sampling
from ead_sdk.errors import (
    BackendError,
    CostModelError,
    ModelCountError,
    PolicyError,
    SignalUnavailableError,
    UpstreamError,
)
from ead_sdk.handoff import HandoffRouter
from ead_sdk.interface import ESCALATIONS, Policy
from ead_sdk.signal_spec import SignalSpec
from ead_sdk.testing.serving import FaultyEngine, ToyEngine


def toys(**options) -> list[ToyEngine]:
    return [
        ToyEngine("small", seed=1, num_params=100, **options),
        ToyEngine("large", seed=2, num_params=1000, **options),
    ]


def eager(escalation: str, threshold: float = 1.2) -> Policy:
    """Escalates on roughly half of the toy engines' tokens."""
    return ead_sdk.load_policy(
        {
            "policy": "rolling_entropy",
            "params": {"threshold": threshold, "window": 1, "unit": "nats"},
            "escalation": escalation,
        }
    )


PROMPTS = [[i, i + 1, (3 * i) % 32] for i in range(8)]


class Watched(Policy):
    """Wraps a policy; records which (lane, position) it has decided, reading lanes from the router's table."""

    name = "watched"
    max_models = None

    def __init__(self, inner: Policy):
        self.inner, self.decided, self.router = inner, set(), None
        super().__init__(escalation=inner.escalation, initial_model=inner.initial_model)

    def init_state(self, n, xp, device=None):
        return self.inner.init_state(n, xp, device)

    def decide(self, state, step):
        for row in np.flatnonzero(step.live).tolist():
            self.decided.add((self.router.decider.rows[row].lane, int(step.index[row])))
        return self.inner.decide(state, step)


@settings(max_examples=12, deadline=None)
@given(
    escalation=st.sampled_from(["retry", "retry_token"]),
    threshold=st.floats(0.8, 1.6),
    delays=st.tuples(st.sampled_from([0.0, 0.0005, 0.002]), st.sampled_from([0.0, 0.001, 0.003])),
    slow_consumer=st.booleans(),
)
def test_a_token_a_retry_may_replace_is_never_handed_on_before_the_policy_decided(
    escalation, threshold, delays, slow_consumer
):
    """Hold-back, property over engine speeds and consumer speed: every event a consumer sees was
    decided on already, is final (the result's token at that position) and comes in order; the
    thrown-away small-model tokens never reach it."""
    policy = Watched(eager(escalation, threshold))
    engines = [ToyEngine("small", seed=1, delay=delays[0]), ToyEngine("large", seed=2, delay=delays[1])]
    router = HandoffRouter(engines, policy)
    policy.router = router

    async def main():
        lanes = [router.open_lane(p, max_new_tokens=30) for p in PROMPTS]
        seen = {lane.lane: [] for lane in lanes}

        async def consume(lane):
            async for event in lane:
                assert (event.lane, event.index) in policy.decided
                seen[event.lane].append(event)
                if slow_consumer:
                    await asyncio.sleep(0.001)
            return await lane.result()

        return await asyncio.gather(*(consume(lane) for lane in lanes)), seen

    results, seen = asyncio.run(main())
    replaced = 0
    for res in results:
        events = seen[res.lane]
        assert [e.token for e in events] == list(res.tokens)
        assert [e.model for e in events] == list(res.models)
        assert [e.index for e in events] == list(range(len(res.tokens)))
        log = res.decisions
        retried = log.route > log.model
        replaced += int(np.sum(log.token[retried] != np.asarray(res.tokens)[log.index[retried]]))
    assert sum(r.report.wasted[0] for r in results) > 10, "the policy must escalate often"
    assert replaced > 0, "some retried tokens must differ from the small model's"


@pytest.mark.parametrize("escalation", ESCALATIONS)
def test_batched_decisions_equal_one_lane_at_a_time(escalation):
    """Many lanes decided in batches route, emit and cost the same as each lane run alone."""
    engines = toys(delay=0.0)
    together = HandoffRouter(engines, eager(escalation)).generate_sync(PROMPTS, max_new_tokens=30)
    router = HandoffRouter(toys(), eager(escalation))
    assert router.decider.batches == 0
    for prompt, lane in zip(PROMPTS, together, strict=True):
        alone = router.generate_sync([prompt], max_new_tokens=30)[0]
        assert (alone.tokens, alone.models, alone.report) == (lane.tokens, lane.models, lane.report)
        assert alone.decisions.route.tolist() == lane.decisions.route.tolist()


def test_lanes_are_decided_in_batches():
    router = HandoffRouter(toys(), eager("next"))
    router.generate_sync(PROMPTS, max_new_tokens=20)
    assert router.decider.decided == 8 * 20
    assert router.decider.batches <= router.decider.decided / 4


@settings(max_examples=25, deadline=None)
@given(
    escalation=st.sampled_from(ESCALATIONS),
    threshold=st.floats(0.0, 3.5),
    max_new=st.integers(1, 25),
    eos=st.sampled_from([None, 3, 7]),
)
def test_a_lane_emits_what_its_emitting_model_would_at_each_position(escalation, threshold, max_new, eos):
    """Property: each final token is the greedy token of the model that emitted it, given the
    lane's tokens before it; a lane ends at its end-of-sequence token or at max_new_tokens."""
    engines = toys(eos_token_id=eos)
    result = HandoffRouter(engines, eager(escalation, threshold)).generate_sync(PROMPTS[:3], max_new_tokens=max_new)
    for lane in result:
        context = list(lane.prompt)
        for tok, m in zip(lane.tokens, lane.models, strict=True):
            assert tok == int(np.argmax(engines[m].logprobs(context)))
            context.append(tok)
        if lane.finish_reason == "stop":
            assert lane.tokens[-1] == eos and eos not in lane.tokens[:-1]
        else:
            assert lane.finish_reason == "length" and len(lane.tokens) == max_new
        assert lane.report.tokens == len(lane.tokens)


def test_stop_token_ids_and_stop_strings_end_a_lane():
    router = HandoffRouter(toys(), eager("retry"))
    free = router.generate_sync(PROMPTS[:4], max_new_tokens=30)
    stop_id = free[0].tokens[5]
    by_id = router.generate_sync(PROMPTS[:4], max_new_tokens=30, stop=[stop_id])
    for a, b in zip(free, by_id, strict=True):
        cut = a.tokens.index(stop_id) + 1 if stop_id in a.tokens else len(a.tokens)
        assert b.tokens == a.tokens[:cut]
        assert b.finish_reason == ("stop" if stop_id in a.tokens else a.finish_reason)
    text = free[1].text
    assert text == "".join(chr(ord("a") + t % 26) for t in free[1].tokens)
    stop = text[7:9]
    by_text = router.generate_sync(PROMPTS[1:2], max_new_tokens=30, stop=[stop])[0]
    assert by_text.text.endswith(stop) and stop not in by_text.text[:-1]
    assert by_text.finish_reason == "stop"


def test_sampling_is_passed_to_every_request_and_seeded_runs_repeat():
    sampling = Sampling(do_sample=True, temperature=0.8, top_p=0.9, seed=5)
    router = HandoffRouter(toys(), eager("retry"))
    a = router.generate_sync(PROMPTS[:3], max_new_tokens=20, sampling=sampling)
    b = router.generate_sync(PROMPTS[:3], max_new_tokens=20, sampling=sampling)
    greedy = router.generate_sync(PROMPTS[:3], max_new_tokens=20)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.tokens for x in a] != [x.tokens for x in greedy]
    requests = router.engines[0].log.requests + router.engines[1].log.requests
    sampled = [r for r in requests if r.sampling.do_sample]
    assert sampled and all(r.sampling.temperature == 0.8 and r.sampling.top_p == 0.9 for r in sampled)
    with pytest.raises(BackendError, match="top_h"):
        router.generate_sync(PROMPTS[:1], sampling=Sampling(do_sample=True, top_h=0.5))


def test_an_engine_failure_ends_only_its_lane():
    """A stream that breaks mid-way fails its lane with an UpstreamError naming engine and lane;
    the other lanes finish exactly as they would have without the fault."""
    clean = HandoffRouter(toys(), eager("next")).generate_sync(PROMPTS, max_new_tokens=25)
    bad = PROMPTS[2]
    small, large = toys()
    broken = FaultyEngine(large, when=lambda r: list(r.prompt[:3]) == bad, fail_after=1)
    result = HandoffRouter([small, broken], eager("next")).generate_sync(PROMPTS, max_new_tokens=25)
    assert set(result.errors) == {2}
    err = result.errors[2]
    assert isinstance(err, UpstreamError) and err.lane == result[2].lane and err.engine == "large"
    assert "broke" in str(err) and f"lane {result[2].lane}" in str(err)
    assert result[2].finish_reason == "error"
    assert result[2].tokens == clean[2].tokens[: len(result[2].tokens)]
    for i in set(range(8)) - {2}:
        assert (result[i].tokens, result[i].models) == (clean[i].tokens, clean[i].models)


def test_a_silent_engine_times_out_and_nothing_hangs():
    small, large = toys()
    hung = FaultyEngine(large, when=lambda r: list(r.prompt[:3]) == PROMPTS[1], hang_after=0)
    router = HandoffRouter([small, hung], eager("retry"), timeout=0.3)

    async def main():
        return await asyncio.wait_for(router.generate(PROMPTS, max_new_tokens=25), 20)

    result = asyncio.run(main())
    assert set(result.errors) == {1} and "sent no token for 0.3 s" in str(result.errors[1])
    assert hung.hanging >= 1
    assert all(lane.finish_reason in ("stop", "length") for i, lane in enumerate(result) if i != 1)
    assert large.log.streaming == 0 and small.log.streaming == 0


def test_an_engine_that_raises_a_foreign_error_or_sends_junk_fails_the_lane_clearly():
    small, large = toys()
    odd = FaultyEngine(large, fail_after=0, error=KeyError("boom"))
    result = HandoffRouter([small, odd], eager("next", 0.5)).generate_sync(PROMPTS[:2], max_new_tokens=20)
    assert all(isinstance(e, UpstreamError) and "KeyError" in str(e) for e in result.errors.values())
    assert result.errors

    class NoEntropy(ToyEngine):
        async def _serve(self, request):
            async for tok in super()._serve(request):
                yield dataclasses.replace(tok, entropy=None)

    lying = [ToyEngine("small", seed=1), NoEntropy("large", seed=2)]
    result = HandoffRouter(lying, eager("next", 0.5)).generate_sync(PROMPTS[:2], max_new_tokens=20)
    assert result.errors and all("exact entropy" in str(e) for e in result.errors.values())


def test_construction_refuses_what_cannot_be_routed():
    with pytest.raises(SignalUnavailableError, match="engine 0 \\('small'\\)"):
        HandoffRouter(toys(exact=False), eager("next"))
    with pytest.raises(ModelCountError):
        HandoffRouter(toys() + [ToyEngine("huge", seed=3)], eager("next"))
    with pytest.raises(CostModelError, match="parameter count"):
        HandoffRouter([ToyEngine("a", num_params=None), ToyEngine("b")], eager("next"))
    with pytest.raises(BackendError, match="top-20 at most"):
        HandoffRouter(toys(), eager("next"), logprobs=50)
    with pytest.raises(ead_sdk.ReplayOnlyPolicyError):
        HandoffRouter(toys(), {"policy": "oracle"})
    assert HandoffRouter(toys(), {"policy": "fixed", "params": {"model": 1}}).policy.name == "fixed"


def test_a_policy_error_is_raised_not_hidden():
    class Broken(Policy):
        name = "broken"

        def init_state(self, n, xp, device=None):
            return {"x": np.zeros(n)}

        def decide(self, state, step):
            raise ZeroDivisionError("bug")

    with pytest.raises(PolicyError, match="ZeroDivisionError"):
        HandoffRouter(toys(), Broken()).generate_sync(PROMPTS[:2], max_new_tokens=5)


def test_closing_a_lane_cancels_its_engine_request_and_the_others_finish():
    engines = toys(delay=0.002)
    router = HandoffRouter(engines, eager("next"))

    async def main():
        lanes = [router.open_lane(p, max_new_tokens=30) for p in PROMPTS[:3]]
        async for event in lanes[1]:
            if event.index == 4:
                break
        await lanes[1].aclose()
        results = [await lane.outcome() for lane in lanes]
        await asyncio.sleep(0)  # the decider drops the rows of lanes that left
        assert router.open_lanes == 0 and router.decider.rows == []
        return results

    results = asyncio.run(main())
    assert results[1].finish_reason == "cancelled" and 5 <= len(results[1].tokens) < 30
    cancelled = engines[0].log.cancelled + engines[1].log.cancelled
    assert any(rid.endswith(f"-{results[1].lane}-{n}") for rid in cancelled for n in range(1, 40))
    assert [r.finish_reason for r in (results[0], results[2])] == ["length", "length"]


def test_router_aclose_cancels_every_lane_and_refuses_new_ones():
    engines = toys(delay=0.005)
    router = HandoffRouter(engines, eager("next"))

    async def main():
        lanes = [router.open_lane(p, max_new_tokens=200) for p in PROMPTS]
        await asyncio.sleep(0.05)
        await router.aclose()
        with pytest.raises(ead_sdk.DecodeStreamError, match="closed"):
            router.open_lane(PROMPTS[0])
        return [await lane.outcome() for lane in lanes]

    results = asyncio.run(main())
    assert all(r.finish_reason == "cancelled" for r in results)
    assert engines[0].log.streaming == 0 and engines[1].log.streaming == 0


def test_many_concurrent_lanes_share_max_lanes_slots():
    engines = toys(delay=0.0)
    router = HandoffRouter(engines, eager("retry_token"), max_lanes=16)
    prompts = [[i % 32, (7 * i) % 32, (i // 32) % 32] for i in range(200)]
    result = router.generate_sync(prompts, max_new_tokens=12)
    assert len(result) == 200 and not result.errors
    assert all(len(lane.tokens) == 12 for lane in result)
    assert max(e.log.max_streaming for e in engines) <= 16
    assert sum(e.log.streaming for e in engines) == 0
    assert result.report.tokens == 200 * 12
    assert result.report.emitted[1] > 0 and result.report.wasted[0] > 0
    assert len(result.handoff_latencies) == sum(len(lane.handoffs) for lane in result)


def test_a_topk_signal_is_estimated_from_the_engines_top_logprobs():
    from ead_sdk.signals import topk_entropy_estimate

    spec = eager("next").spec()
    policy = ead_sdk.load_policy({**spec, "signal": SignalSpec.topk(5).as_json()})
    engines = toys(exact=False)
    result = HandoffRouter(engines, policy).generate_sync(PROMPTS[:2], max_new_tokens=10)
    for lane in result:
        log = lane.decisions
        context = list(lane.prompt)
        for d in range(len(log)):
            lp = np.sort(engines[int(log.model[d])].logprobs(context))[::-1][:5]
            assert log.signal[d] == pytest.approx(float(topk_entropy_estimate(lp, 32)), rel=1e-9)
            context.append(int(lane.tokens[d]))

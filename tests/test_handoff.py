"""The lane hand-off router against the decode loop: same trace, same policy, same tokens, routes and costs.

The correspondence: a `HandoffRouter` over `TraceEngine.ladder(trace)` (one in-memory engine per
recorded model, each serving that model's recorded signals along the trajectory) routing the
trace's prompts with ``max_new_tokens=T`` equals `ead_sdk.generate` over `TraceBackend(trace)`
with ``max_new_tokens=T`` lane by lane: tokens, emitting models, finish reasons, every count of
the cost report (emitted, forwards, catch-up, wasted, prefill, switches, cost), and the routes
the policy picked (the router's `DecisionLog` against a recording of ``decide``'s routes). The
router runs lanes as concurrent streaming requests and decides them in batches of whatever lanes
produced a token; the decode loop steps every lane together.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ead_sdk
from ead_sdk.backends.trace import TraceBackend
from ead_sdk.handoff import HandoffLaneResult, HandoffResult, HandoffRouter
from ead_sdk.interface import ESCALATIONS, Policy
from ead_sdk.simulators import synthetic_traces
from ead_sdk.testing.routers import example_spec
from ead_sdk.testing.serving import TraceEngine

SPECS = [
    {"policy": "rolling_entropy", "params": {"threshold": 0.9, "window": 3, "unit": "nats"}},
    {"policy": "rolling_entropy", "params": {"threshold": 0.6, "window": 2, "min_dwell": 3, "unit": "nats"}},
    {"policy": "hysteresis", "params": {"upper": 1.1, "lower": 0.4, "window": 2, "ema": 0.3, "unit": "nats"}},
    {"policy": "fixed", "params": {"model": 1}},
    {"policy": "fixed", "params": {"model": 0}},
    {"policy": "top_h", "params": {"alpha": 0.5, "max_kept": 2, "min_mass": 0.3}},
    {"policy": "confidence", "params": {"threshold": 0.6}},
    {"policy": "cost_budget", "params": {"budget": 0.3, "threshold": 0.8, "unit": "nats"}},
    {
        "policy": "cost_budget",
        "params": {"budget": 0.4, "inner": {"policy": "rolling_entropy", "params": {"threshold": 0.7, "unit": "nats"}}},
    },
    {"policy": "random", "params": {"p": 0.4, "seed": 7}},
    example_spec("learned"),
]
K = 4


class RecordingPolicy(Policy):
    """Wraps a policy and records the route it picks for every live lane at every position."""

    name = "recording"
    max_models = None

    def __init__(self, inner: Policy):
        self.inner, self.routes = inner, {}
        super().__init__(escalation=inner.escalation, initial_model=inner.initial_model)

    def check_models(self, num_models: int) -> None:
        self.inner.check_models(num_models)

    def init_state(self, n, xp, device=None):
        return self.inner.init_state(n, xp, device)

    def decide(self, state, step):
        routes, new = self.inner.decide(state, step)
        for lane in np.flatnonzero(step.live).tolist():
            self.routes[(lane, int(step.index[lane]))] = int(routes[lane])
        return routes, new


def _run_both(traces, policy, max_new):
    engines = TraceEngine.ladder(traces)
    prompts = [s.prompt_ids.tolist() for s in traces.sequences()]
    routed = HandoffRouter(engines, policy, logprobs=K).generate_sync(prompts, max_new_tokens=max_new)
    recorder = RecordingPolicy(policy)
    reference = ead_sdk.generate(TraceBackend(traces), recorder, max_new_tokens=max_new, logprobs=K)
    return routed, reference, recorder.routes, engines


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 5),
    spec=st.sampled_from(SPECS),
    escalation=st.sampled_from(ESCALATIONS),
    max_new=st.integers(1, 30),
)
def test_router_over_trace_engines_equals_generate_over_the_trace_backend(seed, n, spec, escalation, max_new):
    """Property: every live built-in policy, every escalation mode, any trace: the router's tokens,
    models, finish reasons, routes and cost reports equal `ead_sdk.generate`'s on the same trace."""
    traces = synthetic_traces(n, (0, 25), k=K, seed=seed, emitter="oracle")
    policy = ead_sdk.load_policy({**spec, "escalation": escalation})
    routed, reference, routes, _ = _run_both(traces, policy, max_new)
    assert isinstance(routed, HandoffResult) and len(routed) == n
    for lane, (got, want) in enumerate(zip(routed, reference, strict=True)):
        assert isinstance(got, HandoffLaneResult) and got.error is None
        assert got.tokens == want.tokens
        assert got.models == want.models
        assert got.finish_reason == want.finish_reason
        assert got.report == want.report
        log = got.decisions
        assert {(lane, int(t)): int(r) for t, r in zip(log.index, log.route, strict=True)} == {
            key: r for key, r in routes.items() if key[0] == lane
        }
    assert routed.report == reference.report


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), spec=st.sampled_from(SPECS), escalation=st.sampled_from(ESCALATIONS))
def test_the_routers_routes_equal_a_replay_of_its_own_recorded_signals(seed, spec, escalation):
    """Property: replaying the same spec one lane at a time on the signals the router recorded
    (`DecisionLog.replay`) gives the router's routes, though the router decided lanes in batches."""
    traces = synthetic_traces(6, (5, 30), k=K, seed=seed)
    policy = ead_sdk.load_policy({**spec, "escalation": escalation})
    engines = TraceEngine.ladder(traces, delay=0.0)
    prompts = [s.prompt_ids.tolist() for s in traces.sequences()]
    result = HandoffRouter(engines, policy, logprobs=K).generate_sync(prompts, max_new_tokens=40)
    fresh = ead_sdk.load_policy(policy.spec())
    for lane in result:
        assert lane.decisions.replay(fresh).tolist() == lane.decisions.route.tolist()


def test_handoffs_are_new_requests_whose_prompt_is_the_lanes_token_ids():
    """Each hand-off closes the old stream (the engine's request is cancelled) and sends the lane's
    prompt and tokens so far; the catch-up counted is what the new model had not consumed."""
    traces = synthetic_traces(3, 30, k=K, seed=3, emitter="oracle")
    policy = ead_sdk.load_policy({**SPECS[0], "escalation": "next"})
    routed, _, _, engines = _run_both(traces, policy, 30)
    for lane in routed:
        assert lane.handoffs, "the policy should switch on these traces"
        for h in lane.handoffs:
            assert h.prompt_tokens == len(lane.prompt) + h.position
            assert h.reason == "switch" and h.from_model != h.to_model
            assert h.latency_s is not None and h.latency_s >= 0
        assert lane.report.switches == sum(1 for a, b in zip(lane.models, lane.models[1:], strict=False) if a != b)
    trajectories = [s.prompt_ids.tolist() + s.token_ids.tolist() for s in traces.sequences()]
    for engine in engines:
        for request in engine.log.requests:
            prompt = list(request.prompt)
            assert any(prompt == whole[: len(prompt)] for whole in trajectories)
    small = engines[0].log
    assert small.cancelled, "a switch away from the small model cancels its request"


def test_generate_sync_refuses_an_empty_batch_and_bad_prompts():
    traces = synthetic_traces(1, 5, k=K, seed=0)
    router = HandoffRouter(TraceEngine.ladder(traces), ead_sdk.load_policy(SPECS[0]))
    with pytest.raises(ValueError, match="non-empty"):
        router.generate_sync([])
    with pytest.raises(TypeError, match="integers"):
        router.generate_sync([[1.5, 2]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        router.generate_sync([[10**6]])
    with pytest.raises(ead_sdk.BackendError, match="tokenizer"):
        router.generate_sync([[1, 2]], stop=["x"])


def test_open_lane_needs_a_running_loop():
    traces = synthetic_traces(1, 5, k=K, seed=0)
    router = HandoffRouter(TraceEngine.ladder(traces), ead_sdk.load_policy(SPECS[0]))
    with pytest.raises(ead_sdk.DecodeStreamError, match="running event loop"):
        router.open_lane([1, 2, 3])
    assert asyncio.run(router.generate([traces[0].prompt_ids.tolist()], max_new_tokens=3)).lanes[0].tokens


LADDER_SPECS = [
    {"policy": "rolling_entropy", "params": {"threshold": [0.5, 1.4], "window": 2, "unit": "nats"}},
    {"policy": "fixed", "params": {"model": 2}},
    {"policy": "fixed", "params": {"model": 1}},
]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    spec=st.sampled_from(LADDER_SPECS),
    escalation=st.sampled_from(ESCALATIONS),
    max_new=st.integers(1, 30),
)
def test_a_three_model_ladder_routes_as_generate_does(seed, spec, escalation, max_new):
    """Property: over three engines (small, medium, large) the router equals `generate` on the trace."""
    traces = synthetic_traces(4, (0, 25), num_models=3, k=K, seed=seed, emitter="oracle")
    policy = ead_sdk.load_policy({**spec, "escalation": escalation})
    routed, reference, _, _ = _run_both(traces, policy, max_new)
    for got, want in zip(routed, reference, strict=True):
        assert (got.tokens, got.models, got.finish_reason, got.report) == (
            want.tokens,
            want.models,
            want.finish_reason,
            want.report,
        )
    assert routed.report == reference.report


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    spec=st.sampled_from(SPECS[:3] + SPECS[7:9]),
    escalation=st.sampled_from(ESCALATIONS),
    k=st.integers(1, K),
)
def test_a_topk_signal_routes_as_generate_does(seed, spec, escalation, k):
    """Property: a spec calibrated on the top-k estimate, routed over engines that give top-k
    log-probabilities only (no exact entropy), equals `generate` over the trace with that spec."""
    traces = synthetic_traces(4, (0, 25), k=K, seed=seed, emitter="oracle")
    policy = ead_sdk.load_policy({**spec, "escalation": escalation, "signal": {"kind": "topk_entropy", "k": k}})
    engines = TraceEngine.ladder(traces, exact=False)
    prompts = [s.prompt_ids.tolist() for s in traces.sequences()]
    routed = HandoffRouter(engines, policy).generate_sync(prompts, max_new_tokens=25)
    reference = ead_sdk.generate(TraceBackend(traces), policy, max_new_tokens=25)
    for got, want in zip(routed, reference, strict=True):
        assert (got.tokens, got.models, got.report) == (want.tokens, want.models, want.report)
        assert all(r.top_k == k for e in engines for r in e.log.requests)


def test_a_spec_on_the_exact_entropy_is_refused_by_top_k_only_engines():
    traces = synthetic_traces(1, 5, k=K, seed=0)
    with pytest.raises(ead_sdk.SignalUnavailableError, match="engine 0"):
        HandoffRouter(TraceEngine.ladder(traces, exact=False), ead_sdk.load_policy(SPECS[0]))
    too_many = ead_sdk.load_policy({**SPECS[0], "signal": {"kind": "topk_entropy", "k": K + 1}})
    with pytest.raises(ead_sdk.SignalUnavailableError, match=f"top-{K + 1}"):
        HandoffRouter(TraceEngine.ladder(traces), too_many)

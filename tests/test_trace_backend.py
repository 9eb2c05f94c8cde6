"""The decode loop on the trace backend, against a plain-Python per-lane reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk.backends.trace import TraceBackend
from ead_sdk.cost import CostModel
from ead_sdk.decode import generate
from ead_sdk.errors import BackendError
from ead_sdk.interface import Policy, Step
from ead_sdk.policies.fixed import FixedPolicy
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy
from ead_sdk.simulators.replay import replay
from ead_sdk.simulators.synthetic import synthetic_traces


def reference(policy: Policy, seq: Any, num_models: int, costs: np.ndarray) -> dict[str, Any]:
    """One lane, one position at a time, with the cost convention written out by hand."""
    state = policy.init_state(1, np)
    m = policy.initial_model
    consumed = np.zeros(num_models, int)
    forwards = np.zeros(num_models, int)
    wasted = np.zeros(num_models, int)
    models = []
    for t in range(seq.length):
        forwards[m] += t + 1 - consumed[m]
        consumed[m] = t + 1
        top = (
            {}
            if seq.top_logprobs is None
            else {"logprobs": seq.top_logprobs[t, m][None], "token_ids": seq.top_ids[t, m][None].astype(np.int64)}
        )
        step = Step(
            entropy=np.array([seq.entropy[t, m]]),
            model=np.array([m]),
            index=np.array([t]),
            live=np.array([True]),
            token=np.array([int(seq.token_ids[t])]),
            vocab_size=None,
            **top,
        )
        r, state = policy.decide(state, step)
        r = int(r[0])
        emitter = m
        if policy.escalation == "retry" and r > m:
            forwards[r] += t + 1 - consumed[r]
            consumed[r] = t + 1
            wasted[m] += 1
            emitter = r
        models.append(emitter)
        m = r
    return {"models": models, "forwards": forwards, "wasted": wasted, "cost": float((forwards * costs).sum())}


@settings(max_examples=30)
@given(
    seed=st.integers(0, 2**16),
    num_models=st.integers(2, 3),
    window=st.integers(1, 6),
    threshold=st.floats(0.5, 4.0),
    retry=st.booleans(),
)
def test_trace_backend_matches_per_lane_reference(
    seed: int, num_models: int, window: int, threshold: float, retry: bool
) -> None:
    """On a trace, every lane emits its trajectory; routes, forwards (catch-up included), wasted
    retries and cost equal a one-lane-at-a-time reference with the cost convention by hand,
    and equal the vectorised replay's."""
    traces = synthetic_traces(5, (0, 12), num_models=num_models, vocab_size=50, k=3, seed=seed)
    thresholds = threshold if num_models == 2 else [threshold, threshold + 0.7]
    policy = RollingEntropyPolicy(
        window=window, threshold=thresholds, unit="nats", escalation="retry" if retry else "next"
    )
    backend = TraceBackend(traces)
    out = generate(backend, policy)
    costs = np.asarray(traces.meta.param_counts, float)
    for lane, seq in zip(out, traces.sequences(), strict=True):
        ref = reference(policy, seq, num_models, costs)
        assert list(lane.tokens) == seq.token_ids.tolist()
        assert list(lane.models) == ref["models"]
        assert lane.report.forwards == tuple(ref["forwards"])
        assert lane.report.wasted == tuple(ref["wasted"])
        assert lane.report.cost == pytest.approx(ref["cost"])
        assert lane.finish_reason == "stop"
    assert out.report.tokens == sum(seq.length for seq in traces.sequences())
    replayed = replay(traces, policy)
    for i, lane in enumerate(out):
        assert replayed.routes(i).tolist() == list(lane.models)
        assert replayed.report(np.array([i])) == lane.report


def test_trace_backend_fills_step_like_replay() -> None:
    """Step carries entropy[t, m], top_logprobs[t, m], top_ids[t, m] and token_ids[t]."""
    traces = synthetic_traces(3, 6, num_models=2, vocab_size=40, k=4, seed=1)
    steps: list[Step] = []

    class Spy(FixedPolicy):
        def decide(self, state, step):  # type: ignore[no-untyped-def]
            steps.append(step)
            return super().decide(state, step)

    generate(TraceBackend(traces), Spy(model=1))
    seqs = traces.sequences()
    for t, step in enumerate(steps):
        m = np.asarray(step.model)
        assert np.array_equal(step.index, np.full(3, t))
        for i, seq in enumerate(seqs):
            assert step.entropy[i] == seq.entropy[t, m[i]]
            assert np.array_equal(step.logprobs[i], seq.top_logprobs[t, m[i]])
            assert np.array_equal(step.token_ids[i], seq.top_ids[t, m[i]])
            assert step.token[i] == seq.token_ids[t]


def test_trace_backend_limits_and_errors() -> None:
    """max_new_tokens cuts lanes short; empty trajectories emit nothing; bad requests are refused."""
    traces = synthetic_traces(3, (0, 6), num_models=2, vocab_size=40, k=2, seed=3)
    backend = TraceBackend(traces)
    out = generate(backend, FixedPolicy(model=0), max_new_tokens=2)
    for lane, seq in zip(out, traces.sequences(), strict=True):
        assert list(lane.tokens) == seq.token_ids[:2].tolist()
    cost = CostModel.from_seconds_per_token([1.0, 3.0])
    assert generate(backend, FixedPolicy(model=1), cost_model=cost).report.unit == "seconds"
    with pytest.raises(BackendError, match="not full rows"):
        generate(backend, FixedPolicy(), logprobs="full")
    with pytest.raises(BackendError, match="prompts for a trace"):
        generate(backend, FixedPolicy(), [[1, 2]])
    with pytest.raises(BackendError, match="TraceMeta"):
        TraceBackend(traces.sequences())


def test_start_hands_out_independent_batch_sessions():
    from ead_sdk.backend import BatchSession, DecodeRequest

    traces = synthetic_traces(3, 6, seed=4)
    backend = TraceBackend(traces)
    request = DecodeRequest(prompts=tuple(tuple(p) for p in backend.default_prompts()), max_new_tokens=6)
    lanes = np.arange(3)
    with backend.start(request) as first, backend.start(request) as second:
        assert isinstance(first, BatchSession)
        a = first.forward(0, lanes, 0)
        b = second.forward(1, lanes, 0)
        np.testing.assert_array_equal(a.token, b.token)  # one trajectory, whichever model
        np.testing.assert_array_equal(b.entropy, [s.entropy[0, 1] for s in traces.sequences()])
    with pytest.raises(BackendError, match="closed"):
        first.forward(0, lanes, 1)

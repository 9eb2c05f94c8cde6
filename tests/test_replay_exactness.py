"""The exactness link: the generic decode loop on the trace backend makes replay's decisions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import ead_sdk
from ead_sdk import load_policy
from ead_sdk.backends.trace import TraceBackend
from ead_sdk.interface import ESCALATIONS
from ead_sdk.simulators import replay, synthetic_traces

SPECS = [
    {"policy": "rolling_entropy", "params": {"threshold": 0.9, "window": 3, "unit": "nats"}},
    {"policy": "rolling_entropy", "params": {"threshold": 0.6, "window": 2, "min_dwell": 3, "unit": "nats"}},
    {"policy": "hysteresis", "params": {"upper": 1.1, "lower": 0.4, "window": 2, "ema": 0.3, "unit": "nats"}},
    {"policy": "fixed", "params": {"model": 1}},
    {"policy": "top_h", "params": {"alpha": 0.5, "max_kept": 2, "min_mass": 0.3}},
    {"policy": "confidence", "params": {"threshold": 0.6}},
    {"policy": "cost_budget", "params": {"budget": 0.3, "threshold": 0.8, "unit": "nats"}},
    {
        "policy": "cost_budget",
        "params": {"budget": 0.4, "inner": {"policy": "rolling_entropy", "params": {"threshold": 0.7, "unit": "nats"}}},
    },
    {"policy": "random", "params": {"p": 0.4, "seed": 7}},
]


@settings(max_examples=60)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 5),
    spec=st.sampled_from(SPECS),
    escalation=st.sampled_from(ESCALATIONS),
)
def test_generate_on_the_trace_backend_equals_replay(seed, n, spec, escalation):
    """Property: for any synthetic trace, policy and escalation mode, `ead_sdk.generate` on a
    `TraceBackend` emits every token from the same model as `replay`, and its cost reports
    (per lane and in total: forwards, catch-up, waste, prefill, switches) are equal."""
    traces = synthetic_traces(n, (1, 25), k=3, seed=seed, emitter="oracle")
    policy = load_policy({**spec, "escalation": escalation})
    live = ead_sdk.generate(TraceBackend(traces), policy, logprobs=3)
    fast = replay(traces, policy)
    assert len(live) == n
    for lane in range(n):
        assert list(live[lane].models) == fast.routes(lane).tolist()
        assert list(live[lane].tokens) == traces[lane].token_ids.tolist()
        assert live[lane].report == fast.report(np.array([lane]))
    assert live.report == fast.report()

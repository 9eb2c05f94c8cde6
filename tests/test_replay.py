"""Replay against a naive one-lane, one-token reference; the blocked ledger fill; metrics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk import CostLedger, Step, load_policy
from ead_sdk.errors import ModelCountError
from ead_sdk.interface import ESCALATIONS
from ead_sdk.policies.fixed import FixedPolicy
from ead_sdk.simulators import fill_ledger, replay, synthetic_traces
from ead_sdk.simulators.ledger import fill_ledger_stepwise

POLICIES = [
    {"policy": "rolling_entropy", "params": {"threshold": 0.9, "window": 3, "unit": "nats"}},
    {"policy": "rolling_entropy", "params": {"threshold": 0.6, "window": 1, "min_dwell": 3, "unit": "nats"}},
    {"policy": "hysteresis", "params": {"upper": 1.2, "lower": 0.5, "window": 2, "unit": "nats"}},
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
]


def naive_replay(traces, spec, escalation):
    """What a research script does: one sequence at a time, one token at a time, plain Python.

    Returns each sequence's emitting models and a CostLedger filled with the live decoder's calls.
    """
    seqs = traces.sequences()
    m_count = traces.meta.num_models
    ledger = CostLedger(len(seqs), m_count, [len(s.prompt_ids) for s in seqs])
    routes_out = []
    for lane, s in enumerate(seqs):
        policy = load_policy({**spec, "escalation": escalation})
        state = policy.init_state(1, np)
        model = policy.initial_model
        emitted = []
        for t in range(s.length):
            step = Step(
                entropy=np.array([s.entropy[t, model]]),
                model=np.array([model]),
                index=np.array([t]),
                live=np.array([True]),
                logprobs=None if s.top_logprobs is None else s.top_logprobs[t, model][None],
                token_ids=None if s.top_ids is None else s.top_ids[t, model][None],
                token=np.array([s.token_ids[t]]),
                vocab_size=traces.meta.vocab_size,
            )
            r, state = policy.decide(state, step)
            r = int(np.asarray(r)[0])
            ledger.compute(np.array([lane]), np.array([model]), np.array([t]))
            out = model
            if escalation != "next" and r > model:
                ledger.compute(np.array([lane]), np.array([r]), np.array([t]))
                ledger.waste(np.array([lane]), np.array([model]))
                out = r
            ledger.emit(np.array([lane]), np.array([out]))
            emitted.append(out)
            model = min(r, model) if escalation == "retry_token" else r
        routes_out.append(emitted)
    return routes_out, ledger


READS_TOPK = ("top_h", "confidence")


@settings(max_examples=60)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 6),
    spec=st.sampled_from(POLICIES),
    escalation=st.sampled_from(ESCALATIONS),
    k=st.sampled_from([0, 3]),
)
def test_replay_equals_the_naive_loop(seed, n, spec, escalation, k):
    """Property: batched replay gives every sequence exactly the emitting models and the cost
    report (every forward, catch-up and wasted retry) of a one-lane, one-token Python loop."""
    if spec["policy"] in READS_TOPK:
        k = 3  # these read Step.logprobs: replay gathers each model's recorded top-k
    traces = synthetic_traces(n, (0, 25), k=k, seed=seed, emitter="oracle")
    policy = load_policy({**spec, "escalation": escalation})
    result = replay(traces, policy)
    want_routes, ledger = naive_replay(traces, spec, escalation)
    for lane, want in enumerate(want_routes):
        assert result.routes(lane).tolist() == want
    cost = traces.meta.cost_model()
    assert result.report() == ledger.report(cost)
    for name in ("steps", "catchup", "wasted", "emitted", "prefill", "consumed", "switches"):
        np.testing.assert_array_equal(getattr(result.ledger, name), getattr(ledger, name), err_msg=name)


@settings(max_examples=40)
@given(data=st.data(), m_count=st.integers(1, 3), lanes=st.integers(1, 5), t_max=st.integers(0, 40))
def test_blocked_ledger_fill_equals_stepwise_calls(data, m_count, lanes, t_max):
    """Property: for any route history (any escalation), filling the ledger with whole-array
    reductions gives exactly the counters of the decoder's step-by-step compute/waste/emit."""
    lengths = np.array(data.draw(st.lists(st.integers(0, t_max), min_size=lanes, max_size=lanes)))
    escalation = data.draw(st.sampled_from(ESCALATIONS))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    routes = rng.integers(0, m_count, (t_max + 1, lanes))
    computed = np.full((t_max, lanes), -1, np.int8)
    emitted = np.full((t_max, lanes), -1, np.int8)
    for i in range(lanes):
        model = 0
        for t in range(lengths[i]):
            r = routes[t, i]
            computed[t, i] = model
            emitted[t, i] = max(r, model) if escalation != "next" else model
            model = min(r, model) if escalation == "retry_token" else r
    prompts = rng.integers(0, 4, lanes)
    fast, slow = CostLedger(lanes, m_count, prompts), CostLedger(lanes, m_count, prompts)
    fill_ledger(fast, computed, emitted, lengths, chunk=int(data.draw(st.integers(1, 8))))
    fill_ledger_stepwise(slow, computed, emitted)
    for name in ("steps", "catchup", "wasted", "emitted", "prefill", "consumed", "used", "switches", "last"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), escalation=st.sampled_from(ESCALATIONS))
def test_metrics_match_a_slow_reference(seed, escalation):
    """Property: agreement counts positions where the emitter's top token is the largest model's;
    log-likelihood sums the trajectory's log-probability under the emitter; quality weights the
    single-model labels by each model's share of emitted tokens."""
    traces = synthetic_traces(5, (1, 30), k=2, seed=seed)
    result = replay(
        traces,
        load_policy(
            {"policy": "rolling_entropy", "params": {"threshold": 0.8, "unit": "nats"}, "escalation": escalation}
        ),
    )
    for lane, s in enumerate(traces.sequences()):
        em = result.routes(lane)
        agree = sum(int(s.top_ids[t, em[t], 0] == s.top_ids[t, -1, 0]) for t in range(s.length))
        loglik = sum(float(s.token_logprob[t, em[t]]) for t in range(s.length))
        assert result.metrics["agreement"][lane] == pytest.approx(agree / s.length)
        assert result.metrics["loglik"][lane] == pytest.approx(loglik, rel=1e-5, abs=1e-5)
        share_large = float(np.mean(em == 1))
        quality = s.fields["correct"][0] * (1 - share_large) + s.fields["correct"][1] * share_large
        assert result.metrics["quality"][lane] == pytest.approx(quality)


def test_summary_and_single_model_baselines():
    traces = synthetic_traces(20, 40, seed=1)
    small = replay(traces, FixedPolicy(model=0)).summary()
    large = replay(traces, FixedPolicy(model=1)).summary()
    assert small["large_share"] == 0.0 and large["large_share"] == 1.0
    assert large["cost_ratio"] == pytest.approx(1.0) and large["agreement"] == 1.0
    assert small["cost_ratio"] == pytest.approx(traces.meta.param_counts[0] / traces.meta.param_counts[1])
    assert small["quality"] == pytest.approx(small["quality_small"])
    assert large["quality"] == pytest.approx(large["quality_large"])


def test_replay_checks_the_policy_and_routes():
    traces = synthetic_traces(3, 5, num_models=3, seed=0)
    with pytest.raises(ModelCountError, match="at most 2 models"):
        replay(traces, load_policy({"policy": "hysteresis", "params": {}}))

    class Wild:
        name, escalation, initial_model, replay_only = "wild", "next", 0, False

        def check_models(self, m):
            pass

        def init_state(self, n, xp, device=None):
            return {}

        def decide(self, state, step):
            return np.full(step.n, 7), state

    with pytest.raises(ModelCountError, match="policy 'wild' routed lane 0 to model 7, not one of 3 models"):
        replay(traces, Wild())


def test_replay_only_policies_see_the_future():
    """The oracle reads Step.future (the models' disagreement at the next position): replay runs it."""
    traces = synthetic_traces(10, 30, seed=2)
    oracle = load_policy({"policy": "oracle", "params": {}})
    result = replay(traces, oracle)
    flat = traces.flat()
    for lane, s in enumerate(traces.sequences()):
        em = result.routes(lane)
        disagree = s.top_ids[:, 0, 0] != s.top_ids[:, 1, 0]
        # positions t >= 1 are emitted by the large model exactly where the models disagree
        np.testing.assert_array_equal(em[1:] == 1, disagree[1:])
    assert flat.lengths.sum() == result.report().tokens

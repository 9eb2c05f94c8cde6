"""cost_budget: the hard cap holds for every prefix, in both escalation modes; soft steering."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ead_sdk.errors import ModelCountError, ParameterError
from ead_sdk.interface import ESCALATIONS, Step
from ead_sdk.policies.cost_budget import CostBudgetPolicy
from ead_sdk.testing import check_policy, run_episode
from ead_sdk.testing.strategies import episodes

INNERS = [
    None,
    {"policy": "rolling_entropy", "params": {"window": 2, "threshold": 0.3}},
    {"policy": "fixed", "params": {"model": 1}},
    {"policy": "random", "params": {"p": 0.7}},
]


def assert_within_budget(run, budget, burst, small_weight):
    for lane in range(run.emitted.shape[1]):
        emitted = run.emitted[run.live[:, lane], lane]
        large = np.cumsum(emitted == 1)
        weight = np.cumsum(np.where(emitted == 1, 1.0, small_weight[lane]))
        assert np.all(large <= budget[lane] * weight + burst[lane] + 1e-9), (lane, emitted)


@given(
    episode=episodes(max_steps=40),
    data=st.data(),
    escalation=st.sampled_from(ESCALATIONS),
    inner=st.sampled_from(INNERS),
    measure=st.sampled_from(["tokens", "cost"]),
    per_lane=st.booleans(),
)
def test_budget_holds_for_every_prefix(episode, data, escalation, inner, measure, per_lane):
    """For every prefix of every lane: large tokens <= budget * tokens + burst (tokens weighted by
    cost relative to the large model with measure='cost'), whatever proposes the escalations and
    whichever escalation mode emits them."""
    n = episode.lanes
    budgets = np.asarray(data.draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))
    bursts = np.asarray(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=n, max_size=n)))
    small = np.asarray(data.draw(st.lists(st.floats(0.05, 0.95), min_size=n, max_size=n)))
    if not per_lane:
        budgets[:], bursts[:], small[:] = budgets[0], bursts[0], small[0]
    params = {"budget": budgets if per_lane else float(budgets[0]), "burst": bursts if per_lane else float(bursts[0])}
    if measure == "cost":
        params.update(measure="cost", costs=np.stack([small, np.ones(n)], 1) if per_lane else [float(small[0]), 1.0])
    else:
        small[:] = 1.0
    policy = CostBudgetPolicy(inner=inner, escalation=escalation, threshold=0.0, unit="nats", **params)
    run = run_episode(policy, episode)
    assert_within_budget(run, budgets, bursts, small)


def test_budget_is_spent_when_the_inner_policy_always_asks():
    """An inner policy that always asks for the large model gets exactly the budget, no more."""
    entropy = np.ones(200)
    for escalation in ESCALATIONS:
        policy = CostBudgetPolicy(
            budget=0.3, burst=2, inner={"policy": "fixed", "params": {"model": 1}}, escalation=escalation
        )
        state, model, emitted = policy.init_state(1, np), 0, []
        for t, e in enumerate(entropy):
            step = Step(entropy=np.array([e]), model=np.array([model]), index=np.array([t]), live=np.array([True]))
            r, state = policy.decide(state, step)
            emitted.append(max(model, int(r[0])) if escalation != "next" else model)
            model = min(model, int(r[0])) if escalation == "retry_token" else int(r[0])
        share = np.mean(np.asarray(emitted) == 1)
        assert 0.27 <= share <= 0.31
        assert int(state["large"][0]) == sum(emitted)


def test_soft_mode_steers_the_share_to_the_target():
    """Soft mode has no cap: its controller moves the threshold until the share is near budget."""
    rng = np.random.default_rng(0)
    entropy = rng.gamma(2.0, 0.6, size=4000)
    for budget in (0.1, 0.4, 0.7):
        policy = CostBudgetPolicy(budget=budget, mode="soft", rate=0.02, threshold=0.0, unit="nats")
        state, routes = policy.init_state(1, np), []
        for t, e in enumerate(entropy):
            step = Step(entropy=np.array([e]), model=np.array([0]), index=np.array([t]), live=np.array([True]))
            r, state = policy.decide(state, step)
            routes.append(int(r[0]))
        assert abs(np.mean(routes[1000:]) - budget) < 0.03


def test_refusals():
    with pytest.raises(ParameterError, match="costs"):
        CostBudgetPolicy(measure="cost")
    with pytest.raises(ParameterError, match="costs"):
        CostBudgetPolicy(costs=[1.0, 2.0])
    with pytest.raises(ParameterError, match="costs"):
        CostBudgetPolicy(measure="cost", costs=[1.0, 2.0, 3.0])
    with pytest.raises(ParameterError, match="soft"):
        CostBudgetPolicy(mode="soft", inner={"policy": "fixed"})
    with pytest.raises(ParameterError, match="inner"):
        CostBudgetPolicy(inner={"policy": "hysteresis", "params": {"upper": 0.1, "lower": 0.5}})
    with pytest.raises(ParameterError, match="model 0"):
        CostBudgetPolicy(initial_model=1)
    with pytest.raises(ModelCountError):
        CostBudgetPolicy().check_models(3)


def test_conforms():
    check_policy(
        CostBudgetPolicy,
        params={"budget": 0.3, "burst": 1.0, "threshold": 0.5},
        lane_variants=[{"budget": 0.0}, {"budget": 1.0, "rate": 0.0}, {"burst": 4.0}],
    )
    check_policy(
        CostBudgetPolicy,
        params={"inner": INNERS[1], "measure": "cost", "costs": [1.0, 8.0]},
        lane_variants=[{"costs": [1.0, 2.0]}, {"budget": 0.6}],
    )
    check_policy(CostBudgetPolicy, params={"mode": "soft", "budget": 0.5})

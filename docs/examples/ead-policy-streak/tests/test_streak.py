"""Tests of the streak policy, written with ead-sdk's testing kit."""

from __future__ import annotations

import numpy as np
from ead_policy_streak import StreakPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk import Step
from ead_sdk.testing import check_policy
from ead_sdk.testing.strategies import entropy_streams


def test_conforms_to_the_policy_contract():
    """Determinism, purity, dead lanes, batching, per-lane parameters, spec round-trip, numpy == torch."""
    check_policy(
        StreakPolicy,
        params={"threshold": 1.0, "patience": 2},
        lane_variants=[{"patience": 1}, {"threshold": 3.0}, {"patience": 4}],
    )


@settings(deadline=None)  # the first examples import numpy/torch paths: timing is not the point
@given(stream=entropy_streams(max_size=40), patience=st.integers(1, 5))
def test_switches_exactly_after_a_full_streak(stream, patience):
    """The route is large after a full streak of hard tokens, small after easy ones, else kept.

    A streak is `patience` tokens in a row: the policy switches whenever, and only when, one is full.
    """
    policy = StreakPolicy(threshold=1.0, patience=patience, unit="nats")
    state, model = policy.init_state(1, np), 0
    for t, e in enumerate(stream):
        step = Step(entropy=np.array([e]), model=np.array([model]), index=np.array([t]), live=np.array([True]))
        route, state = policy.decide(state, step)
        recent = np.asarray(stream[max(0, t - patience + 1) : t + 1])
        full = len(recent) == patience
        want = 1 if full and np.all(recent > 1.0) else 0 if full and np.all(recent <= 1.0) else model
        assert int(route[0]) == want
        model = int(route[0])


def test_a_hard_streak_escalates_and_an_easy_one_comes_back():
    """One hard token does not move the route; two in a row do, and two easy ones bring it back."""
    policy = StreakPolicy(threshold=1.0, patience=2, unit="nats")
    state, model, routes = policy.init_state(1, np), 0, []
    for t, e in enumerate([2.0, 0.1, 2.0, 2.0, 0.1, 2.0, 0.1, 0.1]):
        step = Step(entropy=np.array([e]), model=np.array([model]), index=np.array([t]), live=np.array([True]))
        route, state = policy.decide(state, step)
        model = int(route[0])
        routes.append(model)
    assert routes == [0, 0, 0, 1, 1, 1, 1, 0]

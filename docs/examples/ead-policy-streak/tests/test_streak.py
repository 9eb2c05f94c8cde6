"""Tests of the streak policy, written with ead-sdk's testing kit."""

from __future__ import annotations

import numpy as np
from ead_policy_streak import StreakPolicy
from hypothesis import given
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


@given(stream=entropy_streams(max_size=40), patience=st.integers(1, 5))
def test_switches_only_after_a_full_streak(stream, patience):
    """The route changes only after `patience` tokens in a row on the same side of the threshold."""
    policy = StreakPolicy(threshold=1.0, patience=patience, unit="nats")
    state, model = policy.init_state(1, np), 0
    for t, e in enumerate(stream):
        step = Step(entropy=np.array([e]), model=np.array([model]), index=np.array([t]), live=np.array([True]))
        route, state = policy.decide(state, step)
        recent = stream[max(0, t - patience + 1) : t + 1]
        if int(route[0]) != model:
            assert len(recent) == patience
            assert np.all(recent > 1.0) if route[0] == 1 else np.all(recent <= 1.0)
        model = int(route[0])

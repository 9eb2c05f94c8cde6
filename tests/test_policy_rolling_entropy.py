"""rolling_entropy: EAD's rule against a plain-Python reference, dwell, conformance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ead_sdk.errors import ParameterError
from ead_sdk.interface import ESCALATIONS
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy
from ead_sdk.testing import check_policy, decide_along, run_episode
from ead_sdk.testing.strategies import entropy_streams, episodes

TIE = 1e-9


def reference_ead(entropies, models, window, thresholds, min_dwell, initial=0):
    """The paper's rule, one token at a time; ``None`` where the mean ties a threshold."""
    history, routes, current, dwell = [], [], initial, 0
    for e, m in zip(entropies, models, strict=False):
        history.append(float(e))
        recent = history[-window:]
        mean = math.fsum(recent) / len(recent)
        dwell = dwell + 1 if m == current else 1
        current = m
        if dwell < min_dwell:
            routes.append(m)
        elif any(abs(mean - t) < TIE for t in thresholds):
            routes.append(None)
        else:
            routes.append(sum(mean > t for t in thresholds))
    return routes


@given(
    data=st.data(),
    entropies=entropy_streams(max_size=40),
    window=st.integers(1, 8),
    min_dwell=st.integers(0, 5),
    ladder=st.booleans(),
)
def test_matches_the_papers_rule(data, entropies, window, min_dwell, ladder):
    """For any entropy stream and any sequence of emitting models, the route is the number of
    thresholds the mean entropy of the last `window` tokens exceeds, unless the current model
    has emitted fewer than `min_dwell` tokens in a row (then it is kept)."""
    if ladder:
        lo = data.draw(st.floats(0.0, 2.0))
        thresholds = [lo, lo + data.draw(st.floats(0.1, 3.0))]
    else:
        thresholds = [data.draw(st.floats(0.0, 4.0))]
    models = data.draw(st.lists(st.integers(0, len(thresholds)), min_size=len(entropies), max_size=len(entropies)))
    policy = RollingEntropyPolicy(
        window=window, threshold=thresholds if ladder else thresholds[0], min_dwell=min_dwell, unit="nats"
    )
    got = decide_along(policy, entropies, models)
    want = reference_ead(entropies, models, window, thresholds, min_dwell)
    assert [g for g, w in zip(got, want, strict=False) if w is not None] == [w for w in want if w is not None]


def test_threshold_in_bits_is_converted_to_nats():
    """A threshold of 1 bit is ln 2 nats: an entropy just above ln 2 escalates, just below does not."""
    policy = RollingEntropyPolicy(window=1, threshold=1.0, unit="bits")
    assert decide_along(policy, [math.log(2) + 1e-6, math.log(2) - 1e-6], [0, 1]) == [1, 0]


@given(episode=episodes(), min_dwell=st.integers(0, 6), escalation=st.sampled_from(ESCALATIONS))
def test_dwell_is_respected_in_closed_loop(episode, min_dwell, escalation):
    """Driving a trace, every stretch on one model (except a lane's last) lasts >= min_dwell tokens."""
    policy = RollingEntropyPolicy(window=2, threshold=0.8, min_dwell=min_dwell, unit="nats", escalation=escalation)
    run = run_episode(policy, episode)
    for lane in range(episode.lanes):
        models = run.models[run.live[:, lane], lane]
        changes = np.flatnonzero(np.diff(models)) + 1
        stretches = np.diff(np.concatenate([[0], changes]))
        assert np.all(stretches >= min_dwell)


def test_conforms():
    check_policy(
        RollingEntropyPolicy,
        params={"window": 3, "threshold": 0.7, "min_dwell": 2},
        lane_variants=[{"window": 1}, {"threshold": 2.0, "min_dwell": 0}, {"window": 6, "min_dwell": 4}],
    )
    check_policy(RollingEntropyPolicy, params={"threshold": [0.5, 1.5]}, lane_variants=[{"threshold": [0.2, 3.0]}, {}])


def test_window_is_bounded():
    """window holds that many past entropies per lane: at most 4096 (documented), else ParameterError."""
    assert RollingEntropyPolicy(window=4096).params["window"] == 4096
    with pytest.raises(ParameterError, match="policy 'rolling_entropy': parameter 'window' must be <= 4096, got 4097"):
        RollingEntropyPolicy(window=4097)

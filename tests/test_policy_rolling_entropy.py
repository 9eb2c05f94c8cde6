"""rolling_entropy: EAD's rule against a plain-Python reference, dwell, conformance."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ead_sdk.errors import ParameterError
from ead_sdk.interface import ESCALATIONS
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy
from ead_sdk.testing import check_policy, decide_along, dwell_violations, run_episode
from ead_sdk.testing.strategies import entropy_streams, episodes

TIE = 1e-9


def reference_ead(entropies, models, window, thresholds, min_dwell, initial=0, escalation="next", taken=None):
    """The paper's rule, one token at a time; ``None`` where the mean ties a threshold.

    The dwell counts the tokens each model emitted in a row: a retried escalation ends the
    current model's stretch before the token (which the larger model emits). Where the rule ties,
    ``taken[t]`` (the route actually taken) says who emitted the token.
    """
    history, routes, emitter, streak = [], [], initial, 0
    for t, (e, m) in enumerate(zip(entropies, models, strict=False)):
        history.append(float(e))
        recent = history[-window:]
        mean = math.fsum(recent) / len(recent)
        before = streak if m == emitter else 0  # tokens m emitted in a row just before this one
        want = None if any(abs(mean - x) < TIE for x in thresholds) else sum(mean > x for x in thresholds)
        wanted = taken[t] if want is None else want
        retried = escalation != "next" and wanted > m
        if wanted != m and (before if retried else before + 1) < min_dwell:
            want = wanted = m  # the stretch is too short to end here
            retried = False
        routes.append(want)
        emitter, streak = (wanted, 1) if retried else (m, before + 1)
    return routes


@given(
    data=st.data(),
    entropies=entropy_streams(max_size=40),
    window=st.integers(1, 8),
    min_dwell=st.integers(0, 5),
    ladder=st.booleans(),
    escalation=st.sampled_from(ESCALATIONS),
)
def test_matches_the_papers_rule(data, entropies, window, min_dwell, ladder, escalation):
    """For any entropy stream and any sequence of emitting models, the route is the number of
    thresholds the mean entropy of the last `window` tokens exceeds, unless the current model
    has emitted fewer than `min_dwell` tokens in a row (then it is kept; under the retrying modes
    an escalation needs that many before this token, which the larger model re-emits)."""
    if ladder:
        lo = data.draw(st.floats(0.0, 2.0))
        thresholds = [lo, lo + data.draw(st.floats(0.1, 3.0))]
    else:
        thresholds = [data.draw(st.floats(0.0, 4.0))]
    models = data.draw(st.lists(st.integers(0, len(thresholds)), min_size=len(entropies), max_size=len(entropies)))
    policy = RollingEntropyPolicy(
        window=window,
        threshold=thresholds if ladder else thresholds[0],
        min_dwell=min_dwell,
        unit="nats",
        escalation=escalation,
    )
    got = decide_along(policy, entropies, models)
    want = reference_ead(entropies, models, window, thresholds, min_dwell, escalation=escalation, taken=got)
    assert [g for g, w in zip(got, want, strict=False) if w is not None] == [w for w in want if w is not None]


def test_threshold_in_bits_is_converted_to_nats():
    """A threshold of 1 bit is ln 2 nats: an entropy just above ln 2 escalates, just below does not."""
    policy = RollingEntropyPolicy(window=1, threshold=1.0, unit="bits")
    assert decide_along(policy, [math.log(2) + 1e-6, math.log(2) - 1e-6], [0, 1]) == [1, 0]


@given(episode=episodes(), min_dwell=st.integers(0, 6), escalation=st.sampled_from(ESCALATIONS))
def test_dwell_is_respected_in_closed_loop(episode, min_dwell, escalation):
    """Driving a trace, the dwell promise holds on the models that *emitted* the tokens: every
    stretch except a lane's last lasts >= min_dwell tokens under next and retry (a retried token
    counts for the larger model); under retry_token the lane's model emits min_dwell tokens in a
    row before each one-token correction."""
    policy = RollingEntropyPolicy(window=2, threshold=0.8, min_dwell=min_dwell, unit="nats", escalation=escalation)
    run = run_episode(policy, episode)
    assert dwell_violations(run, min_dwell, escalation) == []


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

"""hysteresis: a plain-Python reference, the band property, dwell, refusals, conformance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ead_sdk.errors import ParameterError
from ead_sdk.interface import ESCALATIONS, Step
from ead_sdk.policies.hysteresis import HysteresisPolicy
from ead_sdk.testing import check_policy, decide_along, dwell_violations, run_episode
from ead_sdk.testing.strategies import entropy_streams, episodes

TIE = 1e-9


def reference(entropies, models, upper, lower, window, ema, min_dwell):
    """The rule one token at a time; ``None`` where the signal ties a threshold."""
    history, routes, signal, current, dwell = [], [], None, 0, 0
    for e, m in zip(entropies, models, strict=False):
        history.append(float(e))
        recent = history[-window:]
        mean = math.fsum(recent) / len(recent)
        signal = mean if signal is None else ema * signal + (1 - ema) * mean
        dwell = dwell + 1 if m == current else 1
        current = m
        if dwell < min_dwell:
            routes.append(m)
        elif min(abs(signal - upper), abs(signal - lower)) < TIE:
            routes.append(None)
        else:
            routes.append(1 if signal > upper else 0 if signal < lower else m)
    return routes


@given(
    data=st.data(),
    entropies=entropy_streams(max_size=40),
    lower=st.floats(0.0, 2.0),
    gap=st.floats(0.01, 3.0),
    window=st.integers(1, 6),
    ema=st.sampled_from([0.0, 0.5, 0.9]),
    min_dwell=st.integers(0, 4),
)
def test_matches_reference(data, entropies, lower, gap, window, ema, min_dwell):
    """Above `upper` the large model, below `lower` the small one, in between the current one;
    the signal is the window mean smoothed by `ema`; `min_dwell` keeps a fresh model."""
    models = data.draw(st.lists(st.integers(0, 1), min_size=len(entropies), max_size=len(entropies)))
    upper = lower + gap
    policy = HysteresisPolicy(upper=upper, lower=lower, window=window, ema=ema, min_dwell=min_dwell, unit="nats")
    got = decide_along(policy, entropies, models)
    want = reference(entropies, models, upper, lower, window, ema, min_dwell)
    assert [g for g, w in zip(got, want, strict=False) if w is not None] == [w for w in want if w is not None]


@given(data=st.data(), lower=st.floats(0.0, 3.0), gap=st.floats(0.0, 2.0), first=st.integers(0, 1))
def test_never_switches_inside_the_band(data, lower, gap, first):
    """While every signal stays within [lower, upper], the route is always the current model."""
    upper = lower + gap + 1e-3
    n = data.draw(st.integers(1, 30))
    entropies = data.draw(st.lists(st.floats(lower, upper), min_size=n, max_size=n))
    policy = HysteresisPolicy(upper=upper, lower=lower, unit="nats", initial_model=first)
    models, model = [], first
    state = policy.init_state(1, np)
    for t, e in enumerate(entropies):
        step = Step(entropy=np.array([e]), model=np.array([model]), index=np.array([t]), live=np.array([True]))
        r, state = policy.decide(state, step)
        models.append(model)
        model = int(r[0])
    assert set(models) == {first}


@given(episode=episodes(), min_dwell=st.integers(0, 6), escalation=st.sampled_from(ESCALATIONS))
def test_dwell_is_respected_in_closed_loop(episode, min_dwell, escalation):
    """The dwell promise holds on the models that emitted the tokens, in every escalation mode
    (see `dwell_violations`)."""
    policy = HysteresisPolicy(upper=1.0, lower=0.5, unit="nats", min_dwell=min_dwell, escalation=escalation)
    run = run_episode(policy, episode)
    assert dwell_violations(run, min_dwell, escalation) == []


def test_refuses_an_empty_band():
    with pytest.raises(ParameterError, match="'upper' must be greater than 'lower'"):
        HysteresisPolicy(upper=1.0, lower=1.0)
    with pytest.raises(ParameterError, match="hysteresis"):
        HysteresisPolicy(upper=np.array([2.0, 1.0]), lower=np.array([1.0, 1.5]))


def test_conforms():
    check_policy(
        HysteresisPolicy,
        params={"upper": 1.2, "lower": 0.6, "window": 2, "ema": 0.5, "min_dwell": 1},
        lane_variants=[{"upper": 3.0}, {"lower": 0.1, "ema": 0.0}, {"window": 5, "min_dwell": 3}],
    )


def test_window_is_bounded():
    """window holds that many past entropies per lane: at most 4096 (documented), else ParameterError."""
    assert HysteresisPolicy(window=4096).params["window"] == 4096
    with pytest.raises(ParameterError, match="policy 'hysteresis': parameter 'window' must be <= 4096, got 4097"):
        HysteresisPolicy(window=4097)

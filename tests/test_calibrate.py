"""Calibration: the searched value hits the target on the calibration split; held-out is reported."""

from __future__ import annotations

import pytest
from ead_sdk.simulators import calibrate, replay, synthetic_traces
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk import load_policy
from ead_sdk.errors import ParameterError


@settings(max_examples=8)
@given(target=st.floats(0.1, 0.8), window=st.integers(1, 6), seed=st.integers(0, 100))
def test_threshold_calibration_hits_the_target_share(target, window, seed):
    """Property: for a target large share between the extremes, the calibrated threshold's share on
    the calibration split is within a token-granularity tolerance of the target, and replaying the
    returned policy on the held-out split gives the reported held-out share."""
    traces = synthetic_traces(60, 60, seed=seed)
    policy = load_policy({"policy": "rolling_entropy", "params": {"window": window, "threshold": 1.0, "unit": "nats"}})
    result = calibrate(traces, policy, "threshold", target_large_share=target, seed=seed)
    assert result.calibration == pytest.approx(target, abs=0.02)
    held, _ = traces.split(0.5, seed)
    assert replay(held, result.policy).report().large_share == pytest.approx(result.held_out)
    assert result.policy.params["window"] == window and result.sequences == (30, 30)


def test_cost_ratio_target_and_stateful_hysteresis():
    traces = synthetic_traces(80, 50, seed=3)
    policy = load_policy({"policy": "hysteresis", "params": {"upper": 2.0, "lower": 0.2, "window": 3, "unit": "nats"}})
    result = calibrate(traces, policy, "upper", target_cost_ratio=0.9, bounds=(0.21, 4.0))
    assert result.metric == "cost_ratio" and result.calibration == pytest.approx(0.9, abs=0.03)
    assert 0.5 < result.held_out < 1.2  # reported, not promised: 40 held-out sequences vary


def test_bad_requests_are_refused():
    traces = synthetic_traces(10, 10, seed=0)
    policy = load_policy({"policy": "rolling_entropy", "params": {}})
    with pytest.raises(ParameterError, match="exactly one"):
        calibrate(traces, policy, "threshold")
    with pytest.raises(ParameterError, match="'unit' is not a numeric parameter"):
        calibrate(traces, policy, "unit", target_large_share=0.3)


@settings(max_examples=10, deadline=None)
@given(lower=st.floats(0.2, 3.0), target=st.floats(0.1, 0.6))
def test_a_parameter_bounded_by_another_calibrates_without_bounds(lower, target):
    """hysteresis.upper must exceed lower: with no bounds given, the search stays inside the valid values."""
    traces = synthetic_traces(24, 80, seed=3)
    policy = load_policy({"policy": "hysteresis", "params": {"lower": lower, "upper": lower + 1.0}})
    res = calibrate(traces, policy, "upper", target_large_share=target, held_out=0.0)
    assert res.value > lower
    assert res.policy.params["lower"] == lower
    direct = replay(traces, res.policy).report().large_share
    assert direct == pytest.approx(res.calibration)

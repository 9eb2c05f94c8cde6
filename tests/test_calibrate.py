"""Calibration: the searched value hits the target on the calibration split; held-out is reported."""

from __future__ import annotations

import importlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk import load_policy
from ead_sdk.errors import ParameterError
from ead_sdk.simulators import calibrate, replay, synthetic_traces


@settings(max_examples=8)
@given(target=st.floats(0.1, 0.8), window=st.integers(1, 6), seed=st.integers(0, 100))
def test_threshold_calibration_hits_the_target_share(target, window, seed):
    """Property: for a target large share between the extremes, the calibrated threshold's share on
    the calibration split is within a token-granularity tolerance of the target, and replaying the
    returned policy on the held-out split gives the reported held-out share."""
    traces = synthetic_traces(60, 60, seed=seed)
    policy = load_policy({"policy": "rolling_entropy", "params": {"window": window, "threshold": 1.0, "unit": "nats"}})
    result = calibrate(traces, policy, "threshold", target_large_share=target, seed=seed)
    held, calib = traces.split(0.5, seed)
    achieved = replay(calib, result.policy).report().large_share
    assert achieved == result.calibration
    assert achieved == pytest.approx(target, abs=0.02)
    assert replay(held, result.policy).report().large_share == pytest.approx(result.held_out)
    assert result.policy.params["window"] == window and result.sequences == (30, 30)


def test_cost_ratio_target_and_stateful_hysteresis():
    traces = synthetic_traces(80, 50, seed=3)
    policy = load_policy({"policy": "hysteresis", "params": {"upper": 2.0, "lower": 0.2, "window": 3, "unit": "nats"}})
    result = calibrate(traces, policy, "upper", target_cost_ratio=0.9, bounds=(0.21, 4.0))
    held, calib = traces.split(0.5, 0)
    achieved = replay(calib, result.policy).report().cost_ratio
    assert result.metric == "cost_ratio" and achieved == result.calibration
    assert achieved == pytest.approx(0.9, abs=0.03)
    assert replay(held, result.policy).report().cost_ratio == pytest.approx(result.held_out)
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
    """hysteresis.upper must exceed lower: with no bounds given, the search stays inside the valid
    values; a target above the share of the lowest valid upper is refused as not bracketed."""
    traces = synthetic_traces(24, 80, seed=3)
    policy = load_policy({"policy": "hysteresis", "params": {"lower": lower, "upper": lower + 1.0}})
    try:
        res = calibrate(traces, policy, "upper", target_large_share=target, held_out=0.0)
    except ParameterError as err:
        assert "not bracketed" in str(err)
        lowest = load_policy({"policy": "hysteresis", "params": {"lower": lower, "upper": lower * (1 + 1e-9)}})
        assert replay(traces, lowest).report().large_share < target
        return
    assert res.value > lower
    assert res.policy.params["lower"] == lower
    direct = replay(traces, res.policy).report().large_share
    assert direct == pytest.approx(res.calibration)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_large_share": 1.5}, r"target_large_share must be in \[0, 1\], got 1.5"),
        ({"target_large_share": -0.1}, r"target_large_share must be in \[0, 1\]"),
        ({"target_large_share": float("nan")}, r"target_large_share must be in \[0, 1\]"),
        ({"target_cost_ratio": 0.0}, r"target_cost_ratio must be a finite number > 0, got 0.0"),
        ({"target_cost_ratio": -1.0}, r"target_cost_ratio must be a finite number > 0"),
        ({"target_large_share": 0.3, "held_out": -1.0}, r"held_out must be in \[0, 1\), got -1.0"),
        ({"target_large_share": 0.3, "held_out": 1.0}, r"held_out must be in \[0, 1\)"),
        ({"target_large_share": 0.3, "bounds": (2.0, 1.0)}, r"bounds must be .* low < high"),
        ({"target_large_share": 0.3, "points": 1}, r"points must be >= 2"),
    ],
)
def test_impossible_requests_are_refused_before_any_replay(kwargs, match):
    traces = synthetic_traces(10, 10, seed=0)
    policy = load_policy({"policy": "rolling_entropy", "params": {}})
    with pytest.raises(ParameterError, match=match):
        calibrate(traces, policy, "threshold", **kwargs)


def test_an_unreachable_target_is_refused_with_the_range_reached():
    """Cost ratio 0.01 is below the cheapest the policy can do (the small model alone): the error
    names the target, the metric's range over the interval and the interval, instead of returning
    a boundary."""
    traces = synthetic_traces(20, 30, seed=1)
    policy = load_policy({"policy": "rolling_entropy", "params": {"unit": "nats"}})
    with pytest.raises(ParameterError, match=r"target cost_ratio=0.01 is not reached for 'threshold' in \[0, 20\]"):
        calibrate(traces, policy, "threshold", target_cost_ratio=0.01, bounds=(0.0, 20.0), held_out=0.0)


def test_bounds_that_do_not_bracket_the_target_are_refused():
    traces = synthetic_traces(20, 30, seed=1)
    policy = load_policy({"policy": "rolling_entropy", "params": {"unit": "nats"}})
    full = calibrate(traces, policy, "threshold", target_large_share=0.5, bounds=(0.0, 20.0), held_out=0.0)
    narrow = (full.value + 1.0, full.value + 2.0)  # every threshold here routes less than half to large
    with pytest.raises(ParameterError, match=r"large_share=0.5 is not reached .* ranges over \[.*\]; widen the bounds"):
        calibrate(traces, policy, "threshold", target_large_share=0.5, bounds=narrow, held_out=0.0)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 50), end=st.sampled_from(["lo", "hi"]))
def test_a_target_reached_exactly_at_a_bound_is_returned(seed, end):
    """Property: a target equal to the metric at an end of the bounds (an exact tie, not a
    crossing inside) is accepted, and the calibration reaches it exactly."""
    traces = synthetic_traces(12, 20, seed=seed)
    policy = load_policy({"policy": "rolling_entropy", "params": {"unit": "nats"}})
    value = 0.0 if end == "lo" else 50.0
    at_end = load_policy({"policy": "rolling_entropy", "params": {"threshold": value, "unit": "nats"}})
    share = replay(traces, at_end).report().large_share
    res = calibrate(traces, policy, "threshold", target_large_share=share, bounds=(0.0, 50.0), held_out=0.0)
    assert res.calibration == share


def test_an_open_upper_bound_that_never_brackets_is_refused():
    """min_dwell has no upper bound: a share the doubling never reaches is refused, not returned."""
    traces = synthetic_traces(10, 20, seed=2)
    policy = load_policy({"policy": "rolling_entropy", "params": {"threshold": 50.0, "unit": "nats"}})
    with pytest.raises(ParameterError, match=r"target large_share=0.9 not bracketed .* metric at lo=0 is 0"):
        calibrate(traces, policy, "min_dwell", target_large_share=0.9, held_out=0.0, rounds=1)


def _window_share(traces, window: int) -> float:
    policy = load_policy({"policy": "rolling_entropy", "params": {"threshold": 1.0, "unit": "nats", "window": window}})
    return replay(traces, policy).report().large_share


WINDOW_TRACES = synthetic_traces(6, 12, seed=0)
WINDOW_SHARES = {w: _window_share(WINDOW_TRACES, w) for w in range(1, 14)}
"""The share at every window that changes anything: no sequence is longer than 12 tokens, so a
window of 12 or more averages every entropy so far (checked in the test)."""


def _window_targets() -> list[float]:
    """Each share replay reaches, the midpoints between them, and values just outside their range."""
    shares = sorted(set(WINDOW_SHARES.values()))
    mids = [(a + b) / 2 for a, b in itertools.pairwise(shares)]
    return [shares[0] - 0.01, *shares, *mids, shares[-1] + 0.01]


@pytest.mark.parametrize("target", _window_targets())
def test_window_calibration_succeeds_exactly_where_replay_reaches_the_target(target):
    """The share is not monotone in window (here it dips from window 1 to 3, then rises): a target
    anywhere in the range replay reaches over [1, 4096] is calibrated, to a window next to one on
    the other side of the target (the bracket), and replaying the returned policy gives the
    reported share; a target outside that range is refused with the range."""
    assert max(WINDOW_TRACES.flat().lengths) <= 12
    assert {_window_share(WINDOW_TRACES, w) for w in (100, 4096)} == {WINDOW_SHARES[12]}
    shares = WINDOW_SHARES
    policy = load_policy({"policy": "rolling_entropy", "params": {"threshold": 1.0, "unit": "nats"}})
    if not min(shares.values()) <= target <= max(shares.values()):
        with pytest.raises(ParameterError, match=r"is not reached for 'window' in \[1, 4096\]: the large_share"):
            calibrate(WINDOW_TRACES, policy, "window", target_large_share=target, held_out=0.0)
        return
    res = calibrate(WINDOW_TRACES, policy, "window", target_large_share=target, held_out=0.0)
    assert 1 <= res.value <= 4096 and isinstance(res.value, int)
    assert replay(WINDOW_TRACES, res.policy).report().large_share == res.calibration
    assert res.calibration == _window_share(WINDOW_TRACES, res.value)
    # Some pair of adjacent windows brackets the target with an end no closer than the result.
    gap = abs(res.calibration - target)
    pairs = [(shares[w], shares[w + 1]) for w in range(1, 13)]
    assert any(min(a, b) <= target <= max(a, b) and min(abs(a - target), abs(b - target)) >= gap for a, b in pairs)


def test_a_calibration_over_the_memory_budget_is_refused(monkeypatch):
    """Each round replays every candidate as lanes of one run: past the sweep's memory budget that
    is refused (naming the remedy), not attempted."""
    module = importlib.import_module("ead_sdk.simulators.calibrate")
    monkeypatch.setattr(module, "MEMORY_BUDGET", 10_000)
    traces = synthetic_traces(10, 20, seed=0)
    policy = load_policy({"policy": "rolling_entropy", "params": {"unit": "nats"}})
    with pytest.raises(ParameterError, match=r"calibrating 'window' replays 16 values x 10 sequences .* RayEngine"):
        calibrate(traces, policy, "window", target_large_share=0.5, held_out=0.0)


def test_an_unregistered_policy_calibrates_and_sweeps_like_a_registered_one():
    from ead_sdk.params import Param
    from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy
    from ead_sdk.simulators import sweep

    class Private(RollingEntropyPolicy):  # a subclass no plugin registers, under a name nothing provides
        name = "private_rolling_entropy"
        parameters = tuple(p for p in RollingEntropyPolicy.parameters if p.name != "unit") + (
            Param("unit", "str", default="nats", choices=("bits", "nats"), lane=False),
        )

    traces = synthetic_traces(40, 40, seed=3)
    mine = Private(window=2, threshold=1.0)
    spec = {"policy": "rolling_entropy", "params": {"window": 2, "threshold": 1.0, "unit": "nats"}}
    theirs = load_policy(spec)
    a = calibrate(traces, mine, "threshold", target_large_share=0.3)
    b = calibrate(traces, spec, "threshold", target_large_share=0.3)
    assert type(a.policy) is Private and a.value == b.value and a.held_out == b.held_out
    grid = {"threshold": [0.5, 1.0, 2.0]}
    assert (
        sweep(traces, mine, grid)
        .table.drop(["param.threshold"])
        .equals(sweep(traces, theirs, grid).table.drop(["param.threshold"]))
    )

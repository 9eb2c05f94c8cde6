"""Sweeps: one batched run equals one replay per configuration; Pareto frontier; RouteLLM summary."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from ead_sdk.simulators import expand_grid, pareto_frontier, replay, routellm_summary, sweep, synthetic_traces
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk import load_policy
from ead_sdk.errors import ParameterError


@settings(max_examples=10)
@given(
    seed=st.integers(0, 1000),
    thresholds=st.lists(st.floats(0.1, 3.0), min_size=1, max_size=3),
    windows=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    escalation=st.sampled_from(["next", "retry"]),
)
def test_sweep_row_equals_a_replay_of_that_configuration(seed, thresholds, windows, escalation):
    """Property: each row of a sweep (all configurations as lanes of one run) equals the summary
    of replaying that configuration alone: lanes never influence each other."""
    traces = synthetic_traces(6, (0, 30), seed=seed)
    result = sweep(
        traces, "rolling_entropy", {"threshold": thresholds, "window": windows, "unit": ["nats"]}, escalation=escalation
    )
    rows = result.table.to_pylist()
    assert len(rows) == len(thresholds) * len(windows)
    for row, config in zip(rows, expand_grid({"threshold": thresholds, "window": windows}), strict=True):
        alone = replay(
            traces,
            load_policy({"policy": "rolling_entropy", "params": {**config, "unit": "nats"}, "escalation": escalation}),
        )
        want = alone.summary()
        for key in ("large_share", "cost_ratio", "switches", "tokens", "wasted"):
            assert row[key] == pytest.approx(want[key]), key
        assert row["agreement"] == pytest.approx(want["agreement"])


def test_non_lane_parameters_split_the_run_and_bad_grids_are_refused():
    traces = synthetic_traces(4, 20, seed=0)
    result = sweep(traces, "rolling_entropy", {"threshold": [0.5, 1.0], "unit": ["nats", "bits"]})
    assert result.table.num_rows == 4 and len(result.results) == 2
    with pytest.raises(ParameterError, match="unknown parameter 'thresh'"):
        sweep(traces, "rolling_entropy", {"thresh": [1.0]})
    with pytest.raises(ParameterError, match="must be a list"):
        sweep(traces, "rolling_entropy", {"threshold": 1.0})


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 1)), min_size=1, max_size=30))
def test_pareto_frontier_is_exactly_the_undominated_rows(points):
    """Property: a row is on the frontier iff no other row has cost <= and quality >, or cost < and
    quality >=; the frontier is sorted by cost with strictly increasing quality."""
    table = pa.table({"cost_ratio": [p[0] for p in points], "agreement": [p[1] for p in points]})
    front = pareto_frontier(table)
    xs, ys = front.column("cost_ratio").to_pylist(), front.column("agreement").to_pylist()
    assert xs == sorted(xs) and all(b > a for a, b in zip(ys, ys[1:], strict=False))
    for x, y in points:
        dominated = any((x2 <= x and y2 > y) or (x2 < x and y2 >= y) for x2, y2 in points)
        on = any(x == a and y == b for a, b in zip(xs, ys, strict=True))
        if dominated:
            assert not on
        else:  # undominated: on the frontier, or an exact duplicate of a frontier point
            assert any(a == x and b == y for a, b in zip(xs, ys, strict=True))


@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), max_size=10),
    st.floats(0, 0.5),
    st.floats(0.5001, 1),
)
def test_routellm_summary_properties(points, q_small, q_large):
    """Property: APGR lies in [0, 1] for qualities within the single-model range (0.5 for the
    straight line between them, more for a point above it); the shares for 50%/80% of the gap
    are ordered and in [0, 1]."""
    points = [(s, min(max(q, q_small), q_large)) for s, q in points]
    out = routellm_summary(points, q_small, q_large)
    assert -1e-9 <= out["apgr"] <= 1 + 1e-9
    assert 0 <= out["share_for_50pct_gap"] <= out["share_for_80pct_gap"] <= 1
    line = routellm_summary([], q_small, q_large)
    assert line["apgr"] == pytest.approx(0.5) and line["share_for_50pct_gap"] == pytest.approx(0.5)
    better = routellm_summary([(0.25, q_small + 0.75 * (q_large - q_small))], q_small, q_large)
    assert better["apgr"] > 0.5 and better["share_for_50pct_gap"] < 0.5


def test_sweep_routellm_and_frontier_on_labelled_traces():
    traces = synthetic_traces(60, 40, seed=4)
    result = sweep(
        traces, "rolling_entropy", {"threshold": list(np.linspace(0.2, 3, 8)), "unit": ["nats"]}, quality="quality"
    )
    summary = result.routellm()
    assert set(summary) == {"apgr", "share_for_50pct_gap", "share_for_80pct_gap"}
    assert result.frontier.num_rows >= 1

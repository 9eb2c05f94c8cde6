"""Sweeps: one batched run equals one replay per configuration; Pareto frontier; RouteLLM summary."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk import load_policy
from ead_sdk.cli.offline import parse_grid
from ead_sdk.errors import ParameterError, UserError
from ead_sdk.interface import ESCALATIONS
from ead_sdk.simulators import expand_grid, pareto_frontier, replay, routellm_summary, sweep, synthetic_traces
from ead_sdk.simulators.replay import ReplayData
from ead_sdk.simulators.sweep import config_groups, estimate_sweep_bytes, lane_policy

ROLLING = load_policy("rolling_entropy")


@settings(max_examples=10)
@given(
    seed=st.integers(0, 1000),
    thresholds=st.lists(st.floats(0.1, 3.0), min_size=1, max_size=3),
    windows=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    escalation=st.sampled_from(ESCALATIONS),
)
def test_sweep_row_equals_a_replay_of_that_configuration(seed, thresholds, windows, escalation):
    """Property: each row of a sweep (all configurations as lanes of one run) equals the summary
    of replaying that configuration alone: lanes never influence each other."""
    traces = synthetic_traces(6, (0, 30), seed=seed)
    result = sweep(
        traces,
        {"policy": "rolling_entropy", "escalation": escalation},
        {"threshold": thresholds, "window": windows, "unit": ["nats"]},
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


@settings(max_examples=40, deadline=None)
@given(value=st.integers(-3, 5000) | st.floats(-3, 10, allow_nan=False) | st.sampled_from(["a", "2", True]))
def test_grid_values_are_validated_like_load_policy(value):
    """Property: a grid value of a per-lane parameter is accepted exactly when `load_policy`
    accepts it, refused with the same `ParameterError` message, and never silently cast (an
    accepted integer-valued float runs as that integer)."""
    try:
        want = load_policy({"policy": "rolling_entropy", "params": {"window": value}}).params["window"]
    except ParameterError as err:
        with pytest.raises(ParameterError) as got:
            lane_policy(ROLLING, [{"window": value}], 1)
        assert str(got.value) == str(err)
        return
    policy = lane_policy(ROLLING, [{"window": value}, {"window": 3}], 2)
    assert policy.params["window"].tolist() == [want, want, 3, 3]


def test_a_fractional_window_is_refused_not_truncated():
    traces = synthetic_traces(3, 10, seed=0)
    with pytest.raises(
        ParameterError, match="policy 'rolling_entropy': parameter 'window' must be an integer, got float 1.5"
    ):
        sweep(traces, "rolling_entropy", {"window": [2, 1.5]})
    with pytest.raises(ParameterError, match="parameter 'window' must be an integer, got str 'a'"):
        sweep(traces, "rolling_entropy", {"window": ["a", "b"]})


@settings(max_examples=8, deadline=None)
@given(
    windows=st.lists(st.integers(1, 300), min_size=1, max_size=3),
    thresholds=st.lists(st.floats(0.1, 3.0), min_size=1, max_size=3),
    units=st.lists(st.sampled_from(["bits", "nats"]), min_size=1, max_size=2, unique=True),
    seed=st.integers(0, 100),
)
def test_the_memory_estimate_covers_what_the_replay_holds(windows, thresholds, units, seed):
    """Property: the estimate of a sweep's memory is at least the bytes its replays hold per lane
    (routes, ledger, initial policy state) and within a small factor of them."""
    traces = synthetic_traces(5, (1, 25), seed=seed)
    data = ReplayData.from_traces(traces)
    configs = expand_grid({"window": windows, "threshold": thresholds, "unit": units})
    estimate = estimate_sweep_bytes(data, ROLLING, configs)
    held = 0
    for members in config_groups(ROLLING, configs):
        policy = lane_policy(ROLLING, [configs[i] for i in members], data.num_sequences)
        lanes = len(members) * data.num_sequences
        result = replay(data, policy, lane_sequence=np.tile(np.arange(data.num_sequences), len(members)))
        ledger = sum(v.nbytes for v in vars(result.ledger).values() if isinstance(v, np.ndarray))
        state = sum(v.nbytes for v in policy.init_state(lanes, np).values())
        held += result.computed_by.nbytes + result.emitted_by.nbytes + ledger + state
    assert held <= estimate <= 2 * held + 512 * len(configs) * data.num_sequences


def test_a_sweep_over_the_memory_budget_is_refused_before_replaying():
    traces = synthetic_traces(4, 20, seed=0)
    with pytest.raises(ParameterError, match=r"2 configurations x 4 sequences x 20 positions .* RayEngine"):
        sweep(traces, "rolling_entropy", {"threshold": [0.5, 1.0]}, memory_budget=1000)
    assert sweep(traces, "rolling_entropy", {"threshold": [0.5, 1.0]}, memory_budget=1 << 20).table.num_rows == 2


def test_grid_sizes_are_bounded():
    with pytest.raises(ParameterError, match="the grid has 1,002,001 configurations, more than 1,000,000"):
        expand_grid({"threshold": range(1001), "window": range(1001)})
    with pytest.raises(UserError, match="COUNT >= 1 and <= 100,000"):
        parse_grid(["threshold=1:4:1000000000"])
    with pytest.raises(UserError, match="COUNT >= 1"):
        parse_grid(["threshold=1:4:0"])
    assert len(parse_grid(["threshold=1:4:100000"])["threshold"]) == 100_000


def test_an_unknown_quality_names_only_the_missing_column():
    traces = synthetic_traces(4, 20, seed=0)
    result = sweep(traces, "rolling_entropy", {"threshold": [0.5, 1.0]}, quality="bogus")
    with pytest.raises(ParameterError, match=r"^the table has no column 'bogus'; columns: .*agreement") as err:
        _ = result.frontier
    assert "'cost_ratio' or" not in str(err.value)

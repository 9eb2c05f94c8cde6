"""The shared window ring (`push_window`): a slow reference, any memory layout, torch without sync."""

from __future__ import annotations

import dataclasses

import array_api_compat.numpy as xp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ead_sdk
from ead_sdk.policies._common import push_window, window_history


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    lanes=st.integers(1, 6),
    wmax=st.integers(1, 6),
    steps=st.integers(1, 30),
    lane_major=st.booleans(),
)
def test_push_window_keeps_the_last_window_values(data, lanes, wmax, steps, lane_major):
    """Property: after any sequence of pushes with any live masks, each lane's mean is the mean of
    the last ``min(window, pushes)`` values it was given while live (0 before any), its state is
    untouched on steps where it is not live, and a lane-major (C-ordered) history, such as
    `select_lanes` returns, reads the same as the time-major one `push_window` writes."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    window = rng.integers(1, wmax + 1, lanes)
    history = window_history(lanes, wmax, np.float64, xp)
    if lane_major:
        history = np.ascontiguousarray(history)
    slot = np.zeros(lanes, np.int64)
    fill = np.zeros(lanes, np.int64)
    total = np.zeros(lanes)
    pushed: list[list[float]] = [[] for _ in range(lanes)]
    for _ in range(steps):
        value = rng.choice([0.0, 0.25, 0.5, 1.0, 2.0, 3.0], lanes)  # dyadic: sums are exact
        live = rng.random(lanes) < 0.8
        before = [a.copy() for a in (history, slot, fill, total)]
        history, slot, fill, total, mean = push_window(history, slot, fill, total, window, value, live, xp)
        for i in range(lanes):
            if live[i]:
                pushed[i].append(float(value[i]))
                recent = pushed[i][-int(window[i]) :]
                assert mean[i] == sum(recent) / len(recent)
            else:
                for old, new in zip(before, (history, slot, fill, total), strict=True):
                    np.testing.assert_array_equal(old[i], new[i])


@pytest.mark.parametrize(
    "spec",
    [
        {"policy": "rolling_entropy", "params": {"min_dwell": {"per_lane": [0, 2, 3, 1]}, "window": 3}},
        {"policy": "hysteresis", "params": {"min_dwell": 2, "ema": {"per_lane": [0.0, 0.5, 0.2, 0.9]}, "window": 2}},
        {"policy": "hysteresis", "params": {"window": {"per_lane": [1, 4, 2, 3]}}},
    ],
)
def test_dwell_and_smoothing_state_decide_on_torch_without_host_sync(spec):
    """With a min_dwell and EMA smoothing (their extra state in use), decide on torch tensors
    makes no host sync and matches the numpy routes."""
    torch = pytest.importorskip("torch")
    from ead_sdk.integrations.host_sync import forbid_host_sync

    policy = ead_sdk.load_policy({**spec, "params": {**spec["params"], "unit": "nats"}})
    gen = np.random.default_rng(3)
    n = 4
    states = {"np": policy.init_state(n, np), "torch": policy.init_state(n, torch)}
    routes = {"np": np.zeros(n, np.int64), "torch": torch.zeros(n, dtype=torch.int64)}
    for t in range(16):
        entropy = gen.uniform(0.0, 2.5, n)
        live = np.arange(n) != (t % 5)
        step = ead_sdk.Step(entropy=entropy, model=routes["np"], index=np.full(n, t), live=live)
        routes["np"], states["np"] = policy.decide(states["np"], step)
        tstep = dataclasses.replace(
            step,
            entropy=torch.tensor(entropy),
            model=routes["torch"],
            index=torch.full((n,), t),
            live=torch.tensor(live),
        )
        with forbid_host_sync():
            routes["torch"], states["torch"] = policy.decide(states["torch"], tstep)
        np.testing.assert_array_equal(routes["torch"].numpy(), routes["np"])

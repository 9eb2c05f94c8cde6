"""Generic state helpers: mask, select and concatenate lanes of any policy's state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ead_sdk
from ead_sdk import concat_states, lane_count, mask_state, select_lanes


@st.composite
def states(draw, n=None):
    n = draw(st.integers(1, 8)) if n is None else n
    width = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return {
        "a": rng.normal(size=n),
        "b": rng.integers(0, 9, size=(n, width)),
        "c": rng.random(n) > 0.5,
    }


@given(states(), st.data())
def test_mask_takes_new_on_live_lanes_only(state, data):
    """where(live, new, old) lane by lane, for every key and trailing shape."""
    n = lane_count(state)
    live = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    new = {k: (v + 1 if v.dtype != bool else ~v) for k, v in state.items()}
    out = mask_state(live, new, state)
    for key in state:
        np.testing.assert_array_equal(out[key][live], new[key][live])
        np.testing.assert_array_equal(out[key][~live], state[key][~live])


@given(states(), st.data())
def test_select_then_concat_restores_the_state(state, data):
    """Splitting lanes into two groups and concatenating them back is a permutation."""
    n = lane_count(state)
    perm = np.asarray(data.draw(st.permutations(range(n))))
    cut = data.draw(st.integers(0, n))
    parts = [select_lanes(state, perm[:cut]), select_lanes(state, perm[cut:])]
    joined = concat_states([p for p in parts if lane_count_or_zero(p)] or parts)
    inverse = np.argsort(perm)
    back = select_lanes(joined, inverse)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])


def lane_count_or_zero(state):
    return next(iter(state.values())).shape[0]


def test_policy_state_survives_lane_surgery():
    """A finished request leaves, a new one joins: routes of the others do not change."""
    policy = ead_sdk.load_policy({"policy": "rolling_entropy", "params": {"window": 3, "threshold": 0.5}})
    rng = np.random.default_rng(1)
    ent = rng.random((10, 4)) * 2
    state = policy.init_state(4, np)
    full_routes = []
    for t in range(10):
        step = ead_sdk.Step(entropy=ent[t], model=np.zeros(4, np.int64), index=np.full(4, t), live=np.ones(4, bool))
        r, state = policy.decide(state, step)
        full_routes.append(r)
    # Same run, but lane 1 leaves after step 4 and a fresh lane joins.
    state = policy.init_state(4, np)
    for t in range(5):
        step = ead_sdk.Step(entropy=ent[t], model=np.zeros(4, np.int64), index=np.full(4, t), live=np.ones(4, bool))
        _, state = policy.decide(state, step)
    state = concat_states([select_lanes(state, [0, 2, 3]), policy.init_state(1, np)])
    for t in range(5, 10):
        e = np.concatenate([ent[t, [0, 2, 3]], [0.0]])
        step = ead_sdk.Step(entropy=e, model=np.zeros(4, np.int64), index=np.full(4, t), live=np.ones(4, bool))
        r, state = policy.decide(state, step)
        np.testing.assert_array_equal(r[:3], full_routes[t][[0, 2, 3]])


def test_helpers_refuse_inconsistent_states():
    with pytest.raises(ead_sdk.EadError, match="different keys"):
        concat_states([{"a": np.zeros(2)}, {"b": np.zeros(2)}])
    with pytest.raises(ead_sdk.EadError, match="disagree"):
        lane_count({"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(ead_sdk.EadError, match="at least one"):
        concat_states([])


def test_select_lanes_on_torch():
    torch = pytest.importorskip("torch")
    state = {"x": torch.arange(5.0), "y": torch.zeros(5, 2)}
    out = select_lanes(state, np.array([4, 0]))
    assert out["x"].tolist() == [4.0, 0.0] and out["y"].shape == (2, 2)

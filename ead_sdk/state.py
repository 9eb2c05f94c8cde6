"""Generic operations on any policy's state: the ones a continuous-batching server needs.

A state is a dict of arrays with a leading lane dimension, so these work for every policy
without knowing what its keys mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ead_sdk.arrays import Array, device_of, is_torch, namespace, to_numpy
from ead_sdk.errors import StateError
from ead_sdk.interface import State


def lane_count(state: State) -> int:
    """The number of lanes in ``state`` (all arrays must agree)."""
    sizes = {int(v.shape[0]) for v in state.values()}
    if len(sizes) > 1:
        raise StateError(f"state arrays disagree on the lane count: {sorted(sizes)}")
    if not sizes:
        raise StateError("an empty state has no lane count")
    return sizes.pop()


def mask_state(live: Array, new: State, old: State) -> State:
    """Take ``new`` where ``live`` is true and ``old`` elsewhere, lane by lane."""
    if new.keys() != old.keys():
        raise StateError(f"states have different keys: {sorted(new)} vs {sorted(old)}")
    out: State = {}
    for key, value in new.items():
        xp = namespace(value)
        mask = xp.reshape(live, (live.shape[0],) + (1,) * (value.ndim - 1))
        out[key] = xp.where(mask, value, old[key])
    return out


def select_lanes(state: State, lanes: Array | Sequence[int]) -> State:
    """The state of the lanes at integer indices ``lanes`` (in that order)."""
    out: State = {}
    for key, value in state.items():
        xp = namespace(value)
        if is_torch(value) and is_torch(lanes):
            index = lanes
        else:
            index = xp.asarray(np.asarray(to_numpy(lanes), dtype=np.int64), device=device_of(value))
        out[key] = xp.take(value, index, axis=0)
    return out


def concat_states(states: Sequence[State]) -> State:
    """Lanes of several states of the same policy, one after another."""
    if not states:
        raise StateError("concat_states needs at least one state")
    keys = states[0].keys()
    for s in states[1:]:
        if s.keys() != keys:
            raise StateError(f"states have different keys: {sorted(keys)} vs {sorted(s)}")
    out: State = {}
    for key in keys:
        xp = namespace(states[0][key])
        out[key] = xp.concat([s[key] for s in states], axis=0)
    return out

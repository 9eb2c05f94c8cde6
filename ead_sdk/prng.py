"""A counter-based random number generator in pure array-API integer arithmetic.

Policies must be pure, so randomness comes from a per-lane key held in the state and the step
index: ``uniform(key, counter)`` is a deterministic hash, identical on numpy and torch, CPU or GPU,
and needs no host synchronisation.
"""

from __future__ import annotations

from typing import Any

from ead_sdk.arrays import Array

_MASK = 0xFFFFFFFF


def _mix32(x: Array, xp: Any) -> Array:
    """The 'lowbias32' integer finaliser (a bijection on 32-bit values), computed in int64."""
    x = x & _MASK
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    x = x ^ (x >> 16)
    return x


def uniform(key: Array, counter: Array, xp: Any) -> Array:
    """Uniform floats in [0, 1) from int64 arrays ``key`` and ``counter`` (broadcast together)."""
    key = xp.astype(key, xp.int64)
    counter = xp.astype(counter, xp.int64)
    h = _mix32(key ^ 0x9E3779B9, xp)
    h = _mix32(h ^ _mix32(counter + 0x632BE5AB, xp), xp)
    h = _mix32(h + (key >> 32), xp)
    return xp.astype(h, xp.float64 if hasattr(xp, "float64") else xp.float32) / 4294967296.0

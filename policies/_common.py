"""Pieces shared by the built-in policies: window smoothing, dwell counting, step-field checks."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ead_sdk.arrays import Array, logsumexp, to_numpy
from ead_sdk.errors import MissingStepFieldError
from ead_sdk.escalation import rule
from ead_sdk.interface import State, Step
from ead_sdk.params import is_lane_array


def require_logprobs(step: Step, policy: str) -> Array:
    """``step.logprobs``, or a clear error saying the policy needs the distribution."""
    if step.logprobs is None:
        raise MissingStepFieldError(
            f"policy {policy!r} reads the next-token distribution, but Step.logprobs is None: "
            "record top-k logprobs in the trace, or let the decoder pass logprobs to the policy"
        )
    return step.logprobs


def normalised_logprobs(step: Step, logprobs: Array, xp: Any) -> Array:
    """Log-probabilities of the full distribution for each lane.

    A full-vocabulary row (``token_ids is None``) may be raw logits: it is normalised here. A
    top-k row already holds log-probabilities of the full distribution and is kept as it is.
    """
    if step.token_ids is not None:
        return logprobs
    return logprobs - logsumexp(logprobs, xp)


MAX_WINDOW = 4096
"""The largest ``window`` a policy accepts: every lane holds ``window`` past values, and the
signal of a window longer than most sequences is their mean so far anyway."""


def window_history(n: int, wmax: int, dtype: Any, xp: Any, **kw: Any) -> Array:
    """A zero ``(n, wmax)`` window history laid out time-major in memory (see `push_window`)."""
    return xp.permute_dims(xp.zeros((wmax, n), dtype=dtype, **kw), (1, 0))


def window_value(value: Array, history: Array, xp: Any) -> Array:
    """``value`` ready to push into ``history``: cast to its dtype only where arithmetic would not.

    A value that promotes to the history's dtype (float32 entropies into a float64 history) is
    converted exactly inside the operations of `push_window`, which saves one pass.
    """
    if xp.result_type(value.dtype, history.dtype) == history.dtype:
        return value
    return xp.astype(value, history.dtype)


@lru_cache(maxsize=16)
def _lane_index(n: int, xp: Any, dtype: Any, device: Any) -> Array:
    """``arange(n)``, built once per size and device (a constant, never written)."""
    index = xp.arange(n, dtype=dtype, device=device)
    if hasattr(index, "flags"):  # numpy: make the shared constant read-only
        index.flags.writeable = False
    return index


def push_window(
    history: Array, slot: Array, fill: Array, total: Array, window: Array, value: Array, live: Array, xp: Any
) -> tuple[Array, Array, Array, Array, Array]:
    """Push ``value`` into each live lane's window; return history, slot, fill, total and the mean.

    O(lanes) work per step plus one copy of ``history``: each lane's first ``window`` entries of
    ``history`` are a ring buffer whose ``slot`` holds the oldest value (the one the new value
    replaces), ``fill`` counts the values in the window (at most ``window``), and ``total`` is
    the running sum of those values, so only the value leaving the window is read. ``history``
    must start as zeros (`window_history`): until a lane's ring is full, the slot it overwrites
    reads 0. Lanes with ``live`` false keep their state (the mean returned for them is
    meaningless). The running sum rounds like any float sum, so the mean is not bit-exact when
    values of very different magnitudes pass through the window (a window of one value is
    exact, and so is each lane's first mean).

    The ``(lanes, window)`` history is returned as a transposed view of a ``(window, lanes)``
    buffer: the lanes that read and write the same slot then touch neighbouring memory (about
    a third faster on 64k lanes than lane-major rows). Any layout is read correctly.
    """
    n, wmax = history.shape
    # One copy of the whole history per step (decide must not mutate its input), time-major.
    flat = xp.reshape(xp.permute_dims(history, (1, 0)), (-1,), copy=True)
    at = slot * n + _lane_index(n, xp, slot.dtype, getattr(history, "device", None))
    old = flat[at]
    # Subtract first: a window of one value then holds that value exactly ((v - v) + value).
    total = xp.where(live, (total - old) + value, total)
    flat[at] = xp.where(live, value, old)
    step_on = xp.astype(live, slot.dtype)
    slot = slot + step_on
    slot = xp.where(slot == window, 0, slot)
    fill = xp.minimum(fill + step_on, window)
    # Lanes that never stepped: a total of 0 over 1.
    mean = total / xp.astype(xp.maximum(fill, xp.ones_like(fill)), total.dtype)
    return xp.permute_dims(xp.reshape(flat, (wmax, n)), (1, 0)), slot, fill, total, mean


def has_nonzero(value: Any) -> bool:
    """Whether a parameter (a scalar or a per-lane array, read once on the host) is nonzero anywhere."""
    return bool(np.any(np.asarray(to_numpy(value)) != 0))


def window_state(window: Any, n: int, dtype: Any, xp: Any, **kw: Any) -> State:
    """The empty running window `push_window` keeps for ``n`` lanes: history, ring slot, fill, sum."""
    wmax = int(window.max()) if is_lane_array(window) else int(window)
    return {
        "history": window_history(n, wmax, dtype, xp, **kw),
        "slot": xp.zeros((n,), dtype=xp.int64, **kw),
        "fill": xp.zeros((n,), dtype=xp.int64, **kw),
        "total": xp.zeros((n,), dtype=dtype, **kw),
    }


def dwell_state(min_dwell: Any, n: int, initial_model: int, xp: Any, **kw: Any) -> State:
    """The dwell counters `route_with_dwell` needs, or none when no lane has a ``min_dwell``."""
    if not has_nonzero(min_dwell):
        return {}
    return {
        "current": xp.full((n,), initial_model, dtype=xp.int64, **kw),
        "dwell": xp.zeros((n,), dtype=xp.int64, **kw),
    }


def route_with_dwell(
    state: State, new: State, model: Array, target: Array, live: Array, xp: Any, escalation: str = "next"
) -> Array:
    """``target`` on live lanes, unless that would end a model's stretch of emitted tokens short of ``min_dwell``.

    The counters follow the model that *emitted* each token. A switch under ``"next"`` (and any
    move to a smaller model) ends the current model's stretch with this token. Under ``"retry"``
    and ``"retry_token"`` an escalation makes the larger model re-emit this token, so the
    current model's stretch ends before it (it must already hold ``min_dwell`` tokens) and the
    larger model's stretch starts with it. Finished lanes keep their model. The updated
    counters are written into ``new``.
    """
    if "dwell" not in state:
        return xp.where(live, target, model)
    run = xp.astype(model == state["current"], state["dwell"].dtype) * state["dwell"]  # emitted just before
    rules = rule(escalation)
    retrying = rules.retries
    if retrying:
        retried = rules.retried(target, model)
        stretch = xp.where(retried, run, run + 1)  # the stretch a switch here would end
    else:
        stretch = run + 1
    stay = (stretch < state["min_dwell"]) | ~live  # finished, or the stretch is too short to end
    routes = xp.where(stay, model, target)
    emitter, dwell = model, run + 1
    if retrying:
        taken = retried & ~stay  # this token is re-emitted by the larger model, its first
        emitter = xp.where(taken, rules.emitter(routes, model, xp), model)
        dwell = xp.where(taken, xp.ones_like(dwell), dwell)
    new["current"] = xp.where(live, emitter, state["current"])
    new["dwell"] = xp.where(live, dwell, state["dwell"])
    return routes

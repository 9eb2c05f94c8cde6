"""Pieces shared by the built-in policies: window smoothing, dwell counting, step-field checks."""

from __future__ import annotations

from typing import Any

from ead_sdk.arrays import Array
from ead_sdk.errors import EadError
from ead_sdk.interface import Step


class MissingStepFieldError(EadError, ValueError):
    """A policy needs a `Step` field (``logprobs``, ``future``) that the caller left empty."""


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
    m = xp.max(logprobs, axis=-1, keepdims=True)
    lse = m + xp.log(xp.sum(xp.exp(logprobs - m), axis=-1, keepdims=True))
    return logprobs - lse


def push_window(
    history: Array, count: Array, slot: Array, total: Array, window: Array, value: Array, live: Array, xp: Any
) -> tuple[Array, Array, Array, Array, Array]:
    """Push ``value`` into each live lane's window; return history, count, slot, total and the mean.

    O(lanes) per step: each lane's first ``window`` entries of ``history`` are a ring buffer whose
    ``slot`` holds the oldest value (the one the new value replaces), and ``total`` is the running
    sum of the last ``min(window, count)`` values, so only the value leaving the window is read.
    ``history`` must start as zeros: until a lane's ring is full, the slot it overwrites reads 0.
    Lanes with ``live`` false keep their state (the mean returned for them is meaningless). The
    running sum rounds like any float sum, so the mean is not bit-exact when values of very
    different magnitudes pass through the window (a window of one value
    is exact, and so is each lane's first mean).
    """
    n, wmax = history.shape
    at = xp.arange(0, n * wmax, wmax, dtype=slot.dtype, device=history.device) + slot
    flat = xp.reshape(history, (-1,))
    old = flat[at]
    # Subtract first: a window of one value then holds that value exactly ((v - v) + value).
    total = xp.where(live, (total - old) + value, total)
    flat = xp.asarray(flat, copy=True)
    flat[at] = xp.where(live, value, old)
    step_on = xp.astype(live, count.dtype, copy=False)
    count = count + step_on
    slot = slot + step_on
    slot = slot * xp.astype(slot != window, slot.dtype)
    k = xp.clip(xp.minimum(window, count), 1)  # lanes that never stepped: total 0 over 1
    mean = total / xp.astype(k, total.dtype)
    return xp.reshape(flat, (n, wmax)), count, slot, total, mean


def update_dwell(model: Array, current: Array, dwell: Array, xp: Any) -> Array:
    """Tokens the model of this step has produced in a row, this one included."""
    return xp.astype(model == current, dwell.dtype) * dwell + 1

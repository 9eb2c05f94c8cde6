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


def push_window(history: Array, count: Array, window: Array, value: Array, xp: Any) -> tuple[Array, Array, Array]:
    """Append ``value`` to each lane's ring buffer; return it, the new count and the window mean.

    The mean is over the last ``min(window, count)`` values of each lane.
    """
    wmax = history.shape[1]
    slot = xp.arange(wmax, device=history.device)[None, :]
    ptr = count % wmax
    history = xp.where(slot == ptr[:, None], value[:, None], history)
    count = count + 1
    age = (ptr[:, None] - slot) % wmax
    k = xp.minimum(window, count)
    inside = age < k[:, None]
    total = xp.sum(xp.where(inside, history, xp.zeros_like(history)), axis=1)
    return history, count, total / xp.astype(k, history.dtype)


def update_dwell(model: Array, current: Array, dwell: Array, xp: Any) -> Array:
    """Tokens the model of this step has produced in a row, this one included."""
    return xp.where(model == current, dwell + 1, xp.ones_like(dwell))

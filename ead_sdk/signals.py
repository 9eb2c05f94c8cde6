"""Uncertainty signals of next-token distributions: entropy from logits, bounds from top-k.

Every function works on numpy arrays and torch tensors alike (the last axis is the vocabulary)
and returns an array of the same kind, on the same device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ead_sdk.arrays import Array, floating, is_torch, namespace, to_numpy
from ead_sdk.errors import SignalError

Unit = Literal["nats", "bits"]
_UNITS = ("nats", "bits")
LN2 = math.log(2.0)


def _scale(unit: str) -> float:
    if unit not in _UNITS:
        raise SignalError(f"unit must be 'nats' or 'bits', got {unit!r}")
    return 1.0 if unit == "nats" else 1.0 / LN2


def to_nats(value: float | Array, unit: Unit) -> float | Array:
    """Convert an entropy (or threshold) from ``unit`` to nats."""
    return value / _scale(unit)


def from_nats(value: float | Array, unit: Unit) -> float | Array:
    """Convert an entropy (or threshold) from nats to ``unit``."""
    return value * _scale(unit)


def _first_bad_row(bad: Array) -> int | tuple[int, ...] | None:
    """Index of the first True row of a boolean mask (host sync: validation only)."""
    import numpy as np

    bad = to_numpy(bad)
    if not bad.any():
        return None
    row = tuple(int(i) for i in np.argwhere(bad)[0])
    return row[0] if len(row) == 1 else row


def check_logits(logits: Array, what: str = "logits") -> None:
    """Raise `SignalError` naming the first row with NaN, +inf, or no finite entry at all."""
    xp = namespace(logits)
    x = floating(logits, xp)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise SignalError(f"{what} must have a non-empty last (vocabulary) axis, got shape {tuple(x.shape)}")
    row = _first_bad_row(xp.any(xp.isnan(x), axis=-1))
    if row is not None:
        raise SignalError(f"{what} row {row} contains NaN")
    row = _first_bad_row(xp.any(x == math.inf, axis=-1))
    if row is not None:
        raise SignalError(f"{what} row {row} contains +inf")
    row = _first_bad_row(xp.all(x == -math.inf, axis=-1))
    if row is not None:
        raise SignalError(f"{what} row {row} is all -inf: no token can be drawn from it")


def entropy(logits: Array, unit: Unit = "nats", *, validate: bool = True) -> Array:
    """Shannon entropy of softmax(logits) along the last axis, in ``unit``.

    Stable for any finite logits and for ``-inf`` entries (masked tokens contribute nothing).
    Log-probabilities are logits too, so this is also the entropy of a full log-prob row.

    Args:
        logits: array of shape ``(..., V)``.
        unit: ``"nats"`` or ``"bits"``.
        validate: check for NaN/+inf/all-``-inf`` rows first (a host sync on GPU tensors;
            the live decoder validates once per step, policies never do).

    Raises:
        SignalError: a row with NaN or +inf, or a row that is entirely ``-inf``.
    """
    scale = _scale(unit)
    xp = namespace(logits)
    x = floating(logits, xp)
    if validate:
        check_logits(x)
    if is_torch(x):  # three fused kernels on the decode path; NaN and +inf rows give NaN alike
        import torch

        h = torch.special.entr(torch.softmax(x, -1)).sum(-1)
        return h * scale if scale != 1.0 else h
    m = xp.max(x, axis=-1, keepdims=True)
    # A row spanning the whole float range overflows to -inf here, which is exact (p = 0 there).
    with np.errstate(over="ignore"):
        shifted = x - m
    e = xp.exp(shifted)
    s = xp.sum(e, axis=-1, keepdims=True)
    p = e / s
    # Masked tokens (p == 0, shifted == -inf) contribute exactly nothing, not 0 * -inf = NaN.
    zero = xp.zeros_like(p)
    weighted = p * xp.where(p > 0, shifted, zero)
    h = xp.log(s[..., 0]) - xp.sum(weighted, axis=-1)
    h = xp.where(h < 0, xp.zeros_like(h), h)  # rounding can leave -1e-16
    return h * scale if scale != 1.0 else h


@dataclass(frozen=True)
class EntropyBounds:
    """What top-k log-probabilities say about the full entropy: an interval, not a value."""

    lower: Array
    upper: Array
    unit: Unit = "nats"


def _check_top_logprobs(lp: Array, xp: Any) -> None:
    """Refuse rows that are not log-probabilities (a host sync: validation only)."""
    if lp.ndim == 0 or lp.shape[-1] == 0:
        raise SignalError(f"top_logprobs must have a non-empty last (k) axis, got shape {tuple(lp.shape)}")
    if bool(xp.any(xp.isnan(lp))) or bool(xp.any(lp > 1e-6)):
        raise SignalError("top_logprobs must be log-probabilities (<= 0, no NaN)")


def _topk_parts(lp: Array, xp: Any, vocab_size: int | None) -> tuple[Array, Array, Array, Array, Array]:
    """``(lower, upper, h_top, rest, p_min)`` in nats of top-k log-probabilities ``lp`` (no checks)."""
    k = lp.shape[-1]
    p = xp.exp(lp)
    zero = xp.zeros_like(p)
    h_top = -xp.sum(p * xp.where(p > 0, lp, zero), axis=-1)
    rest = 1.0 - xp.sum(p, axis=-1)
    rest = xp.where(rest < 0, xp.zeros_like(rest), rest)
    p_min = xp.min(p, axis=-1)
    safe_min = xp.where(p_min > 0, p_min, xp.ones_like(p_min))
    # Fewest tokens able to hold `rest`: n of them at p_min, and a remainder.
    n_full = xp.floor(rest / safe_min)
    rem = rest - n_full * safe_min
    rem = xp.where(rem < 0, xp.zeros_like(rem), rem)
    safe_rem = xp.where(rem > 0, rem, xp.ones_like(rem))
    lower_rest = n_full * (-safe_min * xp.log(safe_min)) - xp.where(rem > 0, rem * xp.log(safe_rem), xp.zeros_like(rem))
    lower_rest = xp.where((p_min > 0) & (rest > 0), lower_rest, xp.zeros_like(rest))
    lower = h_top + lower_rest
    if vocab_size is None:
        upper = xp.where(rest > 0, xp.full_like(rest, math.inf), h_top)
    else:
        if vocab_size < k:
            raise SignalError(f"vocab_size {vocab_size} is smaller than k={k}")
        others = max(vocab_size - k, 1)
        safe_rest = xp.where(rest > 0, rest, xp.ones_like(rest))
        upper = h_top + xp.where(rest > 0, -rest * xp.log(safe_rest / others), xp.zeros_like(rest))
        upper = xp.where(upper < lower, lower, upper)
    return lower, upper, h_top, rest, p_min


def topk_entropy_bounds(top_logprobs: Array, vocab_size: int | None = None, unit: Unit = "nats") -> EntropyBounds:
    """Tight bounds on the entropy of a distribution known only through its top-k log-probs.

    The unseen mass ``r = 1 - sum(p_top)`` lies on tokens no more likely than the least likely
    listed one. The entropy is smallest when ``r`` is packed into as few such tokens as possible
    and largest when it is spread evenly over the other ``vocab_size - k`` tokens (unbounded when
    the vocabulary size is unknown).

    Args:
        top_logprobs: ``(..., k)`` normalised log-probabilities of the k most likely tokens.
        vocab_size: the full vocabulary size, for a finite upper bound.
        unit: ``"nats"`` or ``"bits"``.
    """
    scale = _scale(unit)
    xp = namespace(top_logprobs)
    lp = floating(top_logprobs, xp)
    _check_top_logprobs(lp, xp)
    lower, upper, _, _, _ = _topk_parts(lp, xp, vocab_size)
    return EntropyBounds(lower=lower * scale, upper=upper * scale, unit=unit)


def topk_entropy_estimate(
    top_logprobs: Array, vocab_size: int | None = None, unit: Unit = "nats", *, validate: bool = True
) -> Array:
    """The entropy of a distribution estimated from its top-k log-probabilities alone.

    The listed tokens contribute their exact share ``-sum(p log p)``. The unseen mass
    ``r = 1 - sum(p_top)`` is taken to continue the listed tokens' decay geometrically: tail
    token ``j = 1, 2, ...`` has probability ``p_min * q**j`` with ``q = r / (r + p_min)``, so the
    tail holds exactly ``r`` and no tail token is likelier than the least likely listed one
    (``p_min``). Its entropy has the closed form, with ``x = r / p_min``::

        r * log(1 / p_min) + r * (1 + x) * log(1 + 1 / x)

    The estimate is exact when the probabilities do decay geometrically past the listed ones, and
    always lies inside `topk_entropy_bounds`: a geometric tail is never below the
    packed tail of the lower bound, and where it would exceed the upper bound (a vocabulary too
    small for its length) it is clamped to it. So ``lower <= estimate <= upper`` and its error
    against the exact entropy is at most ``upper - lower``; with ``r = 0`` all three are exact.

    Args:
        top_logprobs: ``(..., k)`` normalised log-probabilities of the k most likely tokens
            (any order; a `-inf` entry is a token of probability 0).
        vocab_size: the full vocabulary size; only the clamp to the upper bound reads it.
        unit: ``"nats"`` or ``"bits"``.
        validate: refuse NaN or positive entries first (a host sync on GPU tensors; the live
            decoder passes ``False``).

    Returns:
        ``(...)`` estimates, an array of the input's kind on its device.
    """
    scale = _scale(unit)
    xp = namespace(top_logprobs)
    lp = floating(top_logprobs, xp)
    if validate:
        _check_top_logprobs(lp, xp)
    elif lp.ndim == 0 or lp.shape[-1] == 0:
        raise SignalError(f"top_logprobs must have a non-empty last (k) axis, got shape {tuple(lp.shape)}")
    lower, upper, h_top, rest, p_min = _topk_parts(lp, xp, vocab_size)
    tail = (rest > 0) & (p_min > 0)
    safe_min = xp.where(tail, p_min, xp.ones_like(p_min))
    safe_rest = xp.where(tail, rest, xp.ones_like(rest))
    x = safe_rest / safe_min
    geometric = safe_rest * (-xp.log(safe_min) + (1.0 + x) * (xp.log1p(x) - xp.log(x)))
    estimate = h_top + xp.where(tail, geometric, xp.zeros_like(rest))
    estimate = xp.where(estimate < lower, lower, estimate)
    estimate = xp.where(estimate > upper, upper, estimate)
    return estimate * scale if scale != 1.0 else estimate

"""``top_h``: route on the Top-H kept set (Baghaei et al., *Top-H Decoding*), vectorised.

Top-H keeps the longest prefix of the sorted distribution whose entropy stays within ``alpha``
times that of the top-N tokens. A small kept set with a large mass means a confident core; a
large set or a small mass means the model is unsure, and the large model should emit.

Two variants pick the set (they agree when the top-N holds all the probability mass):

- ``"reference"`` (the authors' code): the *unnormalised* partial entropy
  ``S_k = -sum_{i<k} p_i log p_i`` of the full distribution's probabilities must satisfy
  ``S_k <= alpha * S_N``.
- ``"transformers"`` (``transformers.TopHLogitsWarper``): the top-N is renormalised first,
  ``q = p / sum(p_top)``, and ``-sum_{i<k} q_i log q_i <= alpha * H(q)``.

Both keep at least the top token. Unlike the reference loop, this code is defined everywhere:
with ``alpha = 1`` it keeps every token of the top-N with non-zero probability (the reference
indexes past its top-N and crashes), zero probabilities or ``-inf`` logits are never kept and
add no entropy (the reference computes ``0 * log 0 = nan``), and a vocabulary (or a recorded
top-k) smaller than ``top_n`` simply shortens the top-N to what there is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ead_sdk.arrays import Array, as_namespace, floating, is_torch, logsumexp, namespace, to_numpy
from ead_sdk.hookspecs import hookimpl
from ead_sdk.interface import Policy, Routes, State, Step
from ead_sdk.params import Param, is_lane_array
from ead_sdk.policies._common import require_logprobs
from ead_sdk.state import mask_state

VARIANTS = ("reference", "transformers")


@dataclass(frozen=True)
class TopHKept:
    """The Top-H kept set of each row: how many tokens, and their probability in the full distribution."""

    size: Array
    mass: Array


def _largest(x: Array, n: int, xp: Any) -> Array:
    """The ``n`` largest entries of each row, sorted in decreasing order (one partial sort)."""
    v = x.shape[-1]
    if n >= v:
        return xp.sort(x, axis=-1, descending=True)
    if is_torch(x):
        import torch

        return torch.topk(x, n, dim=-1, largest=True, sorted=True).values
    if isinstance(x, np.ndarray):
        part = np.partition(x, v - n, axis=-1)[..., v - n :]
        return np.flip(np.sort(part, axis=-1), axis=-1)
    return xp.sort(x, axis=-1, descending=True)[..., :n]


def top_h_kept(
    scores: Array,
    alpha: float | Array,
    top_n: int | Array = 100,
    variant: str = "reference",
    *,
    normalised: bool = False,
    max_top_n: int | None = None,
) -> TopHKept:
    """The Top-H kept set of each row of ``scores``, without a loop over tokens.

    Args:
        scores: ``(B, V)`` logits of a full distribution (``normalised=False``), or ``(B, k)``
            log-probabilities of the full distribution (``normalised=True``: a trace's top-k;
            then the top-N is truncated to ``min(top_n, k)`` tokens).
        alpha: entropy scale in ``(0, 1]``, a scalar or one per row.
        top_n: tokens considered (the reference uses 100), a scalar or one per row.
        variant: ``"reference"`` or ``"transformers"`` (see the module docstring).
        normalised: ``scores`` are already log-probabilities.
        max_top_n: the largest ``top_n`` of the rows; give it with a per-row device array to
            avoid reading that array on the host.

    Returns:
        `TopHKept` with ``size`` (int64, ``(B,)``, at least 1) and ``mass`` (``(B,)``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"top_h variant must be one of {list(VARIANTS)}, got {variant!r}")
    xp = namespace(scores)
    x = floating(scores, xp)
    if max_top_n is None:
        max_top_n = int(to_numpy(top_n).max()) if is_lane_array(top_n) else int(top_n)
    top = _largest(x, min(max_top_n, x.shape[-1]), xp)
    if not normalised:
        top = top - logsumexp(x, xp)
    width = top.shape[-1]
    p = xp.exp(top)
    valid = p > 0
    if is_lane_array(top_n) or top_n < width:
        pos = xp.arange(width, device=top.device)[None, :]
        limit = xp.asarray(top_n, device=top.device)[:, None] if is_lane_array(top_n) else top_n
        valid = valid & (pos < limit)
        p = xp.where(valid, p, xp.zeros_like(p))
    if is_lane_array(alpha):
        alpha = xp.asarray(alpha, dtype=top.dtype, device=top.device)[:, None]
    # Invalid tokens have p == 0 and a log-prob of 0 here: they add exactly 0, not 0 * -inf.
    logp = xp.where(valid, top, xp.zeros_like(top))
    if variant == "transformers":
        total = xp.sum(p, axis=-1, keepdims=True)
        p, logp = p / total, xp.where(valid, logp - xp.log(total), logp)
    # Terms are >= 0, so `partial` is non-decreasing and the kept tokens form a prefix.
    partial = xp.cumulative_sum(-p * logp, axis=-1)
    size = xp.sum(xp.astype(valid & (partial <= alpha * partial[..., -1:]), xp.int64), axis=-1)
    size = xp.maximum(size, xp.ones_like(size))
    if variant == "transformers":
        p = p * total
    mass = xp.take_along_axis(xp.cumulative_sum(p, axis=-1), (size - 1)[:, None], axis=-1)[:, 0]
    return TopHKept(size=size, mass=mass)


class TopHPolicy(Policy):
    """Escalate when the Top-H kept set is large (more than ``max_kept`` tokens) or light (mass below ``min_mass``).

    Reads the distribution from ``Step.logprobs``: the full vocabulary in live decoding, or a
    trace's top-k (then the top-N is at most k tokens). See `top_h_kept` for the two variants.
    """

    name = "top_h"
    version = 1
    max_models = 2
    parameters = (
        Param(
            "alpha",
            "float",
            default=0.4,
            low=0.0,
            low_open=True,
            high=1.0,
            doc="entropy scale of the kept set, in (0, 1]",
        ),
        Param("top_n", "int", default=100, low=1, doc="tokens considered (the reference's N)"),
        Param("max_kept", "int", default=5, low=1, doc="a kept set larger than this escalates"),
        Param("min_mass", "float", default=0.0, low=0.0, high=1.0, doc="a kept set lighter than this escalates"),
        Param(
            "variant", "str", default="reference", choices=VARIANTS, lane=False, doc="which Top-H rule picks the set"
        ),
    )

    def configure(self) -> None:
        top_n = self.params["top_n"]
        self._max_top_n = int(to_numpy(top_n).max()) if is_lane_array(top_n) else int(top_n)

    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        return self.lane_params(n, as_namespace(xp), device)

    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        logprobs = require_logprobs(step, self.name)
        xp = namespace(state["alpha"])
        top_n = self.params["top_n"]
        kept = top_h_kept(
            logprobs,
            state["alpha"],
            state["top_n"] if is_lane_array(top_n) else top_n,
            self.params["variant"],
            normalised=step.token_ids is not None,
            max_top_n=self._max_top_n,
        )
        escalate = (kept.size > state["max_kept"]) | (xp.astype(kept.mass, state["min_mass"].dtype) < state["min_mass"])
        model = xp.astype(step.model, xp.int64)
        return xp.where(step.live, xp.astype(escalate, xp.int64), model), mask_state(step.live, state, state)


@hookimpl
def register_policies(register):
    """Register `TopHPolicy`."""
    register(TopHPolicy)

"""``confidence``: Big Little Decoder's fallback rule on the top token's probability."""

from __future__ import annotations

from typing import Any

from ead_sdk.arrays import as_namespace, namespace
from ead_sdk.hookspecs import hookimpl
from ead_sdk.interface import Policy, Routes, State, Step
from ead_sdk.params import Param
from ead_sdk.policies._common import normalised_logprobs, require_logprobs
from ead_sdk.state import mask_state


class ConfidencePolicy(Policy):
    """Escalate when the most likely token's probability is below ``threshold`` (BiLD's fallback).

    The probability is read from ``Step.logprobs`` (full vocabulary or top-k: the top token is
    in both), so the step must carry the distribution. At or above the threshold the next token
    goes to the small model.
    """

    name = "confidence"
    version = 1
    max_models = 2
    parameters = (
        Param(
            "threshold",
            "float",
            default=0.5,
            low=0.0,
            high=1.0,
            doc="max probability below which the large model emits",
        ),
    )

    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        return self.lane_params(n, as_namespace(xp), device)

    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        xp = namespace(state["threshold"])
        logprobs = normalised_logprobs(step, require_logprobs(step, self.name), xp)
        top = xp.exp(xp.astype(xp.max(logprobs, axis=-1), state["threshold"].dtype))
        model = xp.astype(step.model, xp.int64)
        routes = xp.astype(top < state["threshold"], xp.int64)
        return xp.where(step.live, routes, model), mask_state(step.live, state, state)


@hookimpl
def register_policies(register):
    """Register `ConfidencePolicy`."""
    register(ConfidencePolicy)

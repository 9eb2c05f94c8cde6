"""``random``: the large model with probability ``p``, from a seeded counter-based generator."""

from __future__ import annotations

from typing import Any

from ead_sdk.arrays import as_namespace, namespace
from ead_sdk.hookspecs import hookimpl
from ead_sdk.interface import Policy, Routes, State, Step
from ead_sdk.params import Param
from ead_sdk.prng import uniform
from ead_sdk.state import mask_state


class RandomPolicy(Policy):
    """Route each token to the large model with probability ``p``: the signal-free baseline.

    The draw for a token is ``prng.uniform(seed, step.index)``: a pure function of the lane's
    seed and the position, so replay, batching and reruns agree exactly. Lanes with the same
    seed make the same draws; give per-lane seeds for independent lanes.
    """

    name = "random"
    version = 1
    max_models = 2
    parameters = (
        Param("p", "float", default=0.5, low=0.0, high=1.0, doc="probability that the large model emits"),
        Param("seed", "int", default=0, low=0, doc="key of the counter-based generator"),
    )

    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        return self.lane_params(n, as_namespace(xp), device)

    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        xp = namespace(state["p"])
        u = uniform(state["seed"], step.index, xp)
        model = xp.astype(step.model, xp.int64)
        # Compared in float64: rounding u to float32 could turn 0.9999999998 into 1.0 and break p = 1.
        routes = xp.astype(u < xp.astype(state["p"], u.dtype), xp.int64)
        return xp.where(step.live, routes, model), mask_state(step.live, state, state)


@hookimpl
def register_policies(register):
    """Register `RandomPolicy`."""
    register(RandomPolicy)

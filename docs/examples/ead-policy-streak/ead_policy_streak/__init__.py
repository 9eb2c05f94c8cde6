"""``streak``: switch models only after a streak of tokens that agree about it."""

from __future__ import annotations

from typing import Any

from ead_sdk import Param, Policy, Step, as_namespace, hookimpl, mask_state, namespace, to_nats

__all__ = ["StreakPolicy", "register_policies"]


class StreakPolicy(Policy):
    """Escalate after ``patience`` hard tokens in a row; come back after ``patience`` easy ones.

    A token is hard when its entropy is above ``threshold``. One surprising token does not
    move the route; a run of them does.
    """

    name = "streak"
    version = 1
    max_models = 2
    parameters = (
        Param("threshold", "float", default=1.0, low=0.0, doc="entropy above which a token is hard (in `unit`)"),
        Param("patience", "int", default=3, low=1, doc="tokens in a row needed to switch"),
        Param("unit", "str", default="bits", choices=("bits", "nats"), lane=False, doc="unit of `threshold`"),
    )

    def init_state(self, n: int, xp: Any, device: Any = None) -> dict:
        xp = as_namespace(xp)
        state = self.lane_params(n, xp, device)  # per-lane parameters live in the state
        state["threshold"] = to_nats(state["threshold"], self.params["unit"])
        kw = {"device": device} if device is not None else {}
        state["hard_run"] = xp.zeros((n,), dtype=xp.int64, **kw)
        state["easy_run"] = xp.zeros((n,), dtype=xp.int64, **kw)
        return state

    def decide(self, state: dict, step: Step) -> tuple[Any, dict]:
        xp = namespace(state["threshold"])
        hard = xp.astype(step.entropy, state["threshold"].dtype) > state["threshold"]
        zero = xp.zeros_like(state["hard_run"])
        hard_run = xp.where(hard, state["hard_run"] + 1, zero)
        easy_run = xp.where(hard, zero, state["easy_run"] + 1)
        model = xp.astype(step.model, xp.int64)
        routes = xp.where(hard_run >= state["patience"], xp.ones_like(model), model)
        routes = xp.where(easy_run >= state["patience"], xp.zeros_like(model), routes)
        new = dict(state, hard_run=hard_run, easy_run=easy_run)
        # Finished lanes keep their model and their state: the contract every policy honours.
        return xp.where(step.live, routes, model), mask_state(step.live, new, state)


@hookimpl
def register_policies(register):
    """Called by ead-sdk's plugin manager: hand over every policy this package provides."""
    register(StreakPolicy)

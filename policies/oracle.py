"""``oracle``: escalate exactly where the models disagree (replay only: it reads the future)."""

from __future__ import annotations

from typing import Any

from ead_sdk.arrays import namespace
from ead_sdk.errors import MissingStepFieldError
from ead_sdk.hookspecs import hookimpl
from ead_sdk.interface import Policy, Routes, State, Step


class OraclePolicy(Policy):
    """Route the next token to the large model exactly where the small model's top token differs.

    An upper reference for what any signal-based policy could achieve on a trace: it reads
    ``step.future["disagree"]`` (at the *next* position, the small model's top token is not the
    large model's), which only a replay of a recorded trace can provide.
    """

    name = "oracle"
    version = 1
    max_models = 2
    replay_only = True
    parameters = ()

    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        return {}  # the look-ahead says everything: nothing to remember

    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        if step.future is None or "disagree" not in step.future:
            raise MissingStepFieldError(
                "policy 'oracle' is replay-only: it needs Step.future['disagree'] (the models' top "
                "tokens differ at the next position), which only a trace replay provides"
            )
        xp = namespace(step.entropy)
        routes = xp.astype(step.future["disagree"], xp.int64)
        model = xp.astype(step.model, xp.int64)
        return xp.where(step.live, routes, model), state


@hookimpl
def register_policies(register):
    """Register `OraclePolicy`."""
    register(OraclePolicy)

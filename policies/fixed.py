"""``fixed``: always the same model. The single-model baselines (small-only, large-only)."""

from __future__ import annotations

from typing import Any

from ead_sdk.arrays import as_namespace
from ead_sdk.errors import ModelCountError
from ead_sdk.hookspecs import hookimpl
from ead_sdk.interface import Policy, Routes, State, Step
from ead_sdk.params import Param, is_lane_array
from ead_sdk.state import mask_state


class FixedPolicy(Policy):
    """Always route to model ``model`` (0 = smallest): the single-model baseline."""

    name = "fixed"
    version = 1
    max_models = None
    parameters = (Param("model", "int", default=0, low=0, doc="the model index every token goes to"),)

    def __init__(self, **kwargs: Any):
        # A fixed policy starts on its own model unless told otherwise.
        if "initial_model" not in kwargs and not is_lane_array(kwargs.get("model", 0)):
            kwargs["initial_model"] = int(kwargs.get("model", 0))
        super().__init__(**kwargs)

    def check_models(self, num_models: int) -> None:
        # 'model' first: the initial model is derived from it, and the user set 'model'.
        model = self.params["model"]
        top = int(model.max()) if is_lane_array(model) else int(model)
        if top >= num_models:
            raise ModelCountError(f"policy 'fixed': model {top} is not one of {num_models} models")
        super().check_models(num_models)

    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        return self.lane_params(n, as_namespace(xp), device)

    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        return state["model"], mask_state(step.live, state, state)


@hookimpl
def register_policies(register):
    """Provide this module's policy (entry point of the ead_sdk group)."""
    register(FixedPolicy)

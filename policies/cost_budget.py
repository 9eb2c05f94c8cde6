"""``cost_budget``: a hard cap on the large model's share of each sequence, for every prefix."""

from __future__ import annotations

from typing import Any

from ead_sdk.arrays import Array, as_namespace, default_float, namespace
from ead_sdk.errors import ParameterError
from ead_sdk.hookspecs import hookimpl
from ead_sdk.interface import Policy, Routes, State, Step
from ead_sdk.params import Param, is_lane_array
from ead_sdk.signal_spec import SignalSpec
from ead_sdk.signals import to_nats
from ead_sdk.state import mask_state

INNER = "inner."


class CostBudgetPolicy(Policy):
    """Cap the large model's share: for every prefix, ``large <= budget * tokens + burst``.

    The proposal comes from ``inner`` (a nested policy spec) or, without one, from the entropy
    of each token against a threshold that a feedback controller (in the spirit of Mirostat)
    moves by ``rate * (proposed - budget)`` per token, so that the proposals settle at the target
    share. In ``mode="hard"`` a proposal is granted only if the cap still holds after it; in
    ``mode="soft"`` every proposal is granted and the controller alone steers the share (no
    guarantee). With ``measure="cost"`` tokens are weighted by ``costs`` (small, large): the
    large model's tokens are capped at ``budget`` times the cost of all emitted tokens, counted
    in large-model tokens, plus ``burst``.

    The policy counts the tokens it routed in its state. Under ``"retry"`` escalation a switch
    also makes the large model re-emit the current token, so it is granted only if both that
    token and the next fit in the cap; under ``"retry_token"`` only the re-emitted token is large.
    """

    name = "cost_budget"
    version = 1
    max_models = 2
    parameters = (
        Param("budget", "float", default=0.25, low=0.0, high=1.0, doc="largest share of the large model"),
        Param("burst", "float", default=0.0, low=0.0, doc="slack, in large-model tokens"),
        Param("inner", "spec", default=None, nullable=True, doc="the policy that proposes escalations (a spec)"),
        Param("threshold", "float", default=1.0, low=0.0, doc="initial entropy threshold without `inner` (in `unit`)"),
        Param(
            "rate", "float", default=0.1, low=0.0, doc="threshold step per token of the feedback controller (in `unit`)"
        ),
        Param(
            "mode", "str", default="hard", choices=("hard", "soft"), lane=False, doc="hard cap, or soft steering only"
        ),
        Param(
            "measure", "str", default="tokens", choices=("tokens", "cost"), lane=False, doc="share of tokens or of cost"
        ),
        Param(
            "costs",
            "float",
            default=None,
            nullable=True,
            ladder=True,
            low=0.0,
            low_open=True,
            doc="cost per token of (small, large), for measure='cost'",
        ),
        Param(
            "unit", "str", default="bits", choices=("bits", "nats"), lane=False, doc="unit of `threshold` and `rate`"
        ),
    )

    def __init__(self, **kwargs: Any):
        self.inner: Policy | None = None
        super().__init__(**kwargs)

    def configure(self) -> None:
        p = self.params
        if self.initial_model != 0:
            raise ParameterError("policy 'cost_budget': lanes must start on model 0 for the budget to hold")
        costs = p["costs"]
        if p["measure"] == "cost":
            if is_lane_array(costs):
                rungs = costs.shape[1] if costs.ndim == 2 else 1
            else:
                rungs = len(costs) if isinstance(costs, list) else 1
            if costs is None or rungs != 2:
                raise ParameterError(
                    "policy 'cost_budget': measure='cost' needs 'costs' = [small, large] (or a (lanes, 2) array)"
                )
        elif costs is not None:
            raise ParameterError("policy 'cost_budget': 'costs' is only read with measure='cost'")
        if p["inner"] is not None:
            if p["mode"] == "soft":
                raise ParameterError("policy 'cost_budget': mode='soft' steers its own threshold; it takes no 'inner'")
            from ead_sdk.specs import load_policy

            inner_signal = SignalSpec.from_json(p["inner"].get("signal", self.signal))
            if inner_signal != self.signal:
                raise ParameterError(
                    f"policy 'cost_budget': parameter 'inner' names signal {inner_signal.as_json()!r}, but the "
                    f"budget reads {self.signal.as_json()!r}: both see the same Step.entropy; give the signal once, "
                    "on the outer spec"
                )
            spec = dict(p["inner"], escalation=self.escalation, signal=self.signal.as_json())
            try:
                self.inner = load_policy(spec)
            except ParameterError as exc:
                raise ParameterError(f"policy 'cost_budget': parameter 'inner': {exc}") from None
            self.replay_only = self.inner.replay_only

    def check_models(self, num_models: int) -> None:
        super().check_models(num_models)
        if self.inner is not None:
            self.inner.check_models(num_models)

    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        xp = as_namespace(xp)
        p = self.lane_params(n, xp, device)
        unit = self.params["unit"]
        kw = {"device": device} if device is not None else {}
        fdt = default_float(xp)
        if self.params["measure"] == "cost":
            small_weight = p["costs"][:, 0] / p["costs"][:, 1]
        else:
            small_weight = xp.ones((n,), dtype=fdt, **kw)
        state: State = {
            "budget": p["budget"],
            "burst": p["burst"],
            "rate": to_nats(p["rate"], unit),
            "small_weight": small_weight,
            "threshold": to_nats(p["threshold"], unit),
            "large": xp.zeros((n,), dtype=xp.int64, **kw),
            "weight": xp.zeros((n,), dtype=fdt, **kw),
        }
        if self.inner is not None:
            state.update({INNER + k: v for k, v in self.inner.init_state(n, xp, device).items()})
        return state

    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        xp = namespace(state["budget"])
        model = xp.astype(step.model, xp.int64)
        new = dict(state)
        if self.inner is not None:
            inner_state = {k[len(INNER) :]: v for k, v in state.items() if k.startswith(INNER)}
            proposal, inner_new = self.inner.decide(inner_state, step)
            proposal = proposal >= 1
            new.update({INNER + k: v for k, v in inner_new.items()})
        else:
            proposal = xp.astype(step.entropy, state["threshold"].dtype) > state["threshold"]
            steer = xp.astype(proposal, state["threshold"].dtype) - state["budget"]
            threshold = state["threshold"] + state["rate"] * steer
            new["threshold"] = xp.where(threshold < 0, xp.zeros_like(threshold), threshold)

        large, weight = state["large"], state["weight"]
        budget, burst = state["budget"], state["burst"]
        escalation = self.escalation_rule
        if not escalation.retries:  # this token's model is settled: count it before the cap
            large, weight = _count(large, weight, model >= 1, state["small_weight"], xp)
        ahead = escalation.switch_tokens  # large tokens a granted switch adds, this one included under retries
        fits = xp.astype(large + ahead, weight.dtype) <= budget * (weight + ahead) + burst
        granted = proposal & fits if self.params["mode"] == "hard" else proposal
        routes = xp.astype(granted, xp.int64)
        if escalation.retries:  # this token is emitted by the model the rule names
            large, weight = _count(large, weight, escalation.emitter(routes, model, xp) >= 1, state["small_weight"], xp)
        new.update(large=large, weight=weight)
        return xp.where(step.live, routes, model), mask_state(step.live, new, state)


def _count(large: Array, weight: Array, on_large: Array, small_weight: Array, xp: Any) -> tuple[Array, Array]:
    """Add one emitted token to the large count and to the cost weight (large tokens weigh 1)."""
    large = large + xp.astype(on_large, xp.int64)
    return large, weight + xp.where(on_large, xp.ones_like(weight), small_weight)


@hookimpl
def register_policies(register):
    """Register `CostBudgetPolicy`."""
    register(CostBudgetPolicy)

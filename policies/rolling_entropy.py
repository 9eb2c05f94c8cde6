"""``rolling_entropy``: the rule of Entropy Adaptive Decoding (EAD, arXiv 2502.06833)."""

from __future__ import annotations

from typing import Any

from ead_sdk.arrays import as_namespace, default_float, namespace
from ead_sdk.hookspecs import hookimpl
from ead_sdk.interface import Policy, Routes, State, Step
from ead_sdk.params import Param, is_lane_array
from ead_sdk.policies._common import MAX_WINDOW, dwell_state, push_window, route_with_dwell, window_state, window_value
from ead_sdk.signals import to_nats


class RollingEntropyPolicy(Policy):
    """EAD's rule: the mean entropy of the last ``window`` tokens picks the model.

    The mean of the entropies of the last ``window`` emitted tokens (whichever model produced
    each; fewer at the start of a sequence) is compared with ``threshold``: above it the next
    token goes to the large model, at or below it to the small one. With a list of increasing
    thresholds over a ladder of models, the route is the number of thresholds exceeded. While
    the current model has produced fewer than ``min_dwell`` tokens, it is kept.

    The window holds the entropies the policy was shown: after a ``"retry"`` escalation that is
    the smaller model's entropy of the retried position.
    """

    name = "rolling_entropy"
    version = 1
    max_models = None
    parameters = (
        Param("window", "int", default=5, low=1, high=MAX_WINDOW, doc="tokens averaged (fewer at the start)"),
        Param(
            "threshold",
            "float",
            default=1.0,
            low=0.0,
            ladder=True,
            doc="mean entropy above which the larger model emits (in `unit`); a list for a ladder",
        ),
        Param("min_dwell", "int", default=0, low=0, doc="tokens the current model emits before any switch"),
        Param("unit", "str", default="bits", choices=("bits", "nats"), lane=False, doc="unit of `threshold`"),
    )

    def num_rungs(self) -> int:
        t = self.params["threshold"]
        if isinstance(t, list):
            return len(t) + 1
        if is_lane_array(t) and t.ndim == 2:
            return int(t.shape[1]) + 1
        return 2

    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        xp = as_namespace(xp)
        p = self.lane_params(n, xp, device)
        threshold = p["threshold"]
        if threshold.ndim == 1:
            threshold = threshold[:, None]
        fdt = default_float(xp)
        kw = {"device": device} if device is not None else {}
        state = {
            "window": p["window"],
            "min_dwell": p["min_dwell"],
            "threshold": to_nats(threshold, self.params["unit"]),
            **window_state(self.params["window"], n, fdt, xp, **kw),
            **dwell_state(self.params["min_dwell"], n, self.initial_model, xp, **kw),
        }
        return state

    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        xp = namespace(state["history"])
        live = step.live
        e = window_value(step.entropy, state["history"], xp)
        history, slot, fill, total, mean = push_window(
            state["history"], state["slot"], state["fill"], state["total"], state["window"], e, live, xp
        )
        threshold = state["threshold"]
        model = xp.astype(step.model, xp.int64, copy=False)
        new = dict(state, history=history, slot=slot, fill=fill, total=total)
        if threshold.shape[1] == 1:  # two models: the one threshold's pick is a bool
            target = xp.astype(mean > threshold[:, 0], xp.int64)
        else:
            target = xp.sum(xp.astype(mean[:, None] > threshold, xp.int64), axis=1)
        return route_with_dwell(state, new, model, target, live, xp, self.escalation), new


@hookimpl
def register_policies(register):
    """Provide this module's policy (entry point of the ead_sdk group)."""
    register(RollingEntropyPolicy)

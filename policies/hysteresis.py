"""``hysteresis``: escalate above an upper threshold, come back only below a lower one."""

from __future__ import annotations

from typing import Any

import numpy as np

from ead_sdk.arrays import as_namespace, default_float, namespace, to_numpy
from ead_sdk.errors import ParameterError
from ead_sdk.hookspecs import hookimpl
from ead_sdk.interface import Policy, Routes, State, Step
from ead_sdk.params import Param
from ead_sdk.policies._common import (
    MAX_WINDOW,
    dwell_state,
    has_nonzero,
    push_window,
    route_with_dwell,
    window_state,
    window_value,
)
from ead_sdk.signals import to_nats


class HysteresisPolicy(Policy):
    """Two thresholds: switch up when the signal exceeds ``upper``, down when it falls below ``lower``.

    The signal is the entropy of each token, optionally averaged over the last ``window`` tokens
    and then smoothed exponentially (``s = ema * s_prev + (1 - ema) * mean``; ``ema = 0`` is no
    smoothing). While the signal stays within ``[lower, upper]`` the current model is kept, so
    a signal hovering around one threshold does not make the route flap. While the current model
    has produced fewer than ``min_dwell`` tokens in a row, it is kept whatever the signal.
    """

    name = "hysteresis"
    version = 1
    max_models = 2
    parameters = (
        Param("upper", "float", default=1.5, low=0.0, doc="signal above which the large model emits (in `unit`)"),
        Param("lower", "float", default=0.75, low=0.0, doc="signal below which the small model emits (in `unit`)"),
        Param(
            "window",
            "int",
            default=1,
            low=1,
            high=MAX_WINDOW,
            doc="tokens averaged before smoothing (fewer at the start)",
        ),
        Param(
            "ema", "float", default=0.0, low=0.0, high=1.0, high_open=True, doc="exponential smoothing factor; 0 = none"
        ),
        Param("min_dwell", "int", default=0, low=0, doc="tokens the current model emits before any switch"),
        Param("unit", "str", default="bits", choices=("bits", "nats"), lane=False, doc="unit of `upper` and `lower`"),
    )

    def configure(self) -> None:
        upper = np.asarray(to_numpy(self.params["upper"]), dtype=float)
        lower = np.asarray(to_numpy(self.params["lower"]), dtype=float)
        if np.any(np.broadcast_to(upper, np.broadcast_shapes(upper.shape, lower.shape)) <= lower):
            raise ParameterError(
                f"policy 'hysteresis': 'upper' must be greater than 'lower', got upper={upper.tolist()} "
                f"and lower={lower.tolist()}"
            )

    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        xp = as_namespace(xp)
        p = self.lane_params(n, xp, device)
        kw = {"device": device} if device is not None else {}
        fdt = default_float(xp)
        unit = self.params["unit"]
        state = {
            "upper": to_nats(p["upper"], unit),
            "lower": to_nats(p["lower"], unit),
            "window": p["window"],
            "ema": p["ema"],
            "min_dwell": p["min_dwell"],
            **window_state(self.params["window"], n, fdt, xp, **kw),
            **dwell_state(self.params["min_dwell"], n, self.initial_model, xp, **kw),
        }
        if has_nonzero(self.params["ema"]):  # without smoothing the signal is the window mean
            state["signal"] = xp.zeros((n,), dtype=fdt, **kw)
        return state

    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        xp = namespace(state["history"])
        live = step.live
        e = window_value(step.entropy, state["history"], xp)
        fill = state["fill"]
        history, slot, new_fill, total, mean = push_window(
            state["history"], state["slot"], fill, state["total"], state["window"], e, live, xp
        )
        new = dict(state, history=history, slot=slot, fill=new_fill, total=total)
        if "signal" in state:
            # The first value is the signal itself: weight 0 on the (empty) previous signal.
            ema = state["ema"] * xp.astype(fill > 0, mean.dtype)
            signal = ema * state["signal"] + (1.0 - ema) * mean
            new["signal"] = xp.where(live, signal, state["signal"])
        else:
            signal = mean

        # Two models: up above `upper`; on the large one, stay unless below `lower` (upper > lower).
        model = xp.astype(step.model, xp.int64, copy=False)
        target = (signal > state["upper"]) | ((model == 1) & ~(signal < state["lower"]))
        target = xp.astype(target, xp.int64)
        return route_with_dwell(state, new, model, target, live, xp, self.escalation), new


@hookimpl
def register_policies(register):
    """Register `HysteresisPolicy`."""
    register(HysteresisPolicy)

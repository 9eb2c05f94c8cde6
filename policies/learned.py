"""``learned``: a router trained on traces (``ead train-router``) to predict where the large model differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ead_sdk.arrays import as_namespace, default_float, device_of, logsumexp, namespace
from ead_sdk.hookspecs import hookimpl
from ead_sdk.interface import Policy, Routes, State, Step
from ead_sdk.params import Param, is_lane_array
from ead_sdk.policies._common import (
    MissingStepFieldError,
    push_window,
    require_logprobs,
    window_state,
    window_value,
)
from ead_sdk.policies.top_h import _largest
from ead_sdk.router.features import feature_matrix
from ead_sdk.router.network import RouterNetwork, network_from_json, resolve_weights_path


class LearnedPolicy(Policy):
    """Escalate where a trained network's probability that the large model would differ exceeds ``threshold``.

    ``router`` holds the network (`ead_sdk.router`; written by ``ead train-router``): which features
    it reads (`ead_sdk.router.features`) and its weights, inline or in a safetensors file named with
    its SHA-256 (checked on load). ``decide`` builds the feature rows from the step, runs the dense
    layers and compares the logit with ``logit(threshold)``: array-API code that stays on the
    step's device. The step must carry the distribution (full vocabulary or a top-k of at least the
    router's ``k``). Calibrate ``threshold`` to a large-model share like any threshold.
    """

    name = "learned"
    version = 1
    max_models = 2
    parameters = (
        Param(
            "threshold",
            "float",
            default=0.5,
            low=0.0,
            high=1.0,
            doc="predicted probability of a differing token above which the large model emits",
        ),
        Param("router", "spec", doc="the trained network: features and weights (written by ead train-router)"),
    )

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.network: RouterNetwork = network_from_json(self.params["router"])
        self._on_device: dict[tuple[str, str, str], tuple[tuple[Any, Any], ...]] = {}

    @classmethod
    def resolve_spec_paths(cls, params: dict[str, Any], base: Path) -> dict[str, Any]:
        """A spec read from a file names its weights file relative to the spec's folder."""
        if "router" not in params:
            return params
        return {**params, "router": resolve_weights_path(params["router"], base)}

    def _layers(self, xp: Any, dtype: Any, device: Any) -> tuple[tuple[Any, Any], ...]:
        """The weights as arrays of ``xp`` on ``device``: copied there once, then reused (constants)."""
        key = (getattr(xp, "__name__", str(xp)), str(dtype), str(device))
        if key not in self._on_device:
            kw = {} if device is None or str(device) == "cpu" else {"device": device}
            self._on_device[key] = tuple(
                (xp.asarray(np.asarray(w), dtype=dtype, **kw), xp.asarray(np.asarray(b), dtype=dtype, **kw))
                for w, b in self.network.layers
            )
        return self._on_device[key]

    def init_state(self, n: int, xp: Any, device: Any = None) -> State:
        xp = as_namespace(xp)
        p = self.lane_params(n, xp, device)
        kw = {"device": device} if device is not None else {}
        fdt = default_float(xp)
        t = p["threshold"]
        # logit(threshold): 0 -> -inf (always escalate), 1 -> +inf (never).
        with np.errstate(divide="ignore"):
            cut = xp.log(t) - xp.log1p(-t)
        state: State = {"threshold": t, "cut": cut}
        names = self.network.features.names
        window = self.network.features.window
        if "window" in names:
            state.update({f"e_{k}": v for k, v in window_state(window, n, fdt, xp, **kw).items()})
        if "routes" in names:
            state.update({f"r_{k}": v for k, v in window_state(window, n, fdt, xp, **kw).items()})
        if "window" in names or "routes" in names:
            state["window"] = xp.full((n,), window, dtype=xp.int64, **kw)
        # The weights go to the state's device now, once, so that no decide step copies them there.
        self._layers(xp, cut.dtype, device_of(cut))
        return state

    def _top_id(self, step: Step, xp: Any) -> Any:
        """The most likely token's id: the first of a top-k, the argmax of a full distribution."""
        if step.token_ids is not None:
            return xp.astype(step.token_ids[:, 0], xp.int64)
        return xp.astype(xp.argmax(step.logprobs, axis=-1), xp.int64)

    def _top(self, step: Step, xp: Any) -> Any:
        """The ``k`` largest log-probabilities of the step's distribution, sorted."""
        k = self.network.features.k
        logprobs = require_logprobs(step, self.name)
        if logprobs.shape[-1] < k:
            raise MissingStepFieldError(
                f"policy 'learned' reads the top-{k} log-probabilities, but the step carries {logprobs.shape[-1]}: "
                f"record or request at least k={k}"
            )
        if step.token_ids is not None:  # a top-k of log-probabilities already
            return logprobs[:, :k]
        # A full row, maybe raw logits: the k largest first, then one fused normalisation pass.
        return _largest(logprobs, k, xp) - logsumexp(logprobs, xp)

    def decide(self, state: State, step: Step) -> tuple[Routes, State]:
        xp = namespace(state["cut"])
        dtype = state["cut"].dtype
        live = step.live
        spec = self.network.features
        new = dict(state)
        window_mean = route_share = None
        if "window" in spec.names:
            e = window_value(step.entropy, state["e_history"], xp)
            h, s, f, tot, window_mean = push_window(
                state["e_history"], state["e_slot"], state["e_fill"], state["e_total"], state["window"], e, live, xp
            )
            new.update(e_history=h, e_slot=s, e_fill=f, e_total=tot)
        if "routes" in spec.names:
            route_share = state["r_total"] / xp.astype(
                xp.maximum(state["r_fill"], xp.ones_like(state["r_fill"])), dtype
            )
        x = feature_matrix(
            spec,
            xp,
            entropy=xp.astype(step.entropy, dtype),
            top=xp.astype(self._top(step, xp), dtype),
            index=step.index,
            window_mean=None if window_mean is None else xp.astype(window_mean, dtype),
            route_share=route_share,
            top_id=self._top_id(step, xp) if "token" in spec.names else None,
        )
        z = self.network.logit(x, xp, self._layers(xp, dtype, device_of(x)))
        model = xp.astype(step.model, xp.int64)
        routes = xp.where(live, xp.astype(z > state["cut"], xp.int64), model)
        if "routes" in spec.names:
            emitted = self.escalation_rule.emitter(routes, model, xp)
            large = xp.astype(emitted == 1, dtype)
            h, s, f, tot, _ = push_window(
                state["r_history"], state["r_slot"], state["r_fill"], state["r_total"], state["window"], large, live, xp
            )
            new.update(r_history=h, r_slot=s, r_fill=f, r_total=tot)
        return routes, new

    def __repr__(self) -> str:
        t = self.params["threshold"]
        shown = "per-lane" if is_lane_array(t) else f"{t:g}"
        layers = " x ".join(str(w.shape[1]) for w, _ in self.network.layers)
        return (
            f"LearnedPolicy(threshold={shown}, features={list(self.network.features.names)}, "
            f"layers={self.network.features.width} x {layers}, escalation={self.escalation!r})"
        )


@hookimpl
def register_policies(register):
    """Register `LearnedPolicy`."""
    register(LearnedPolicy)

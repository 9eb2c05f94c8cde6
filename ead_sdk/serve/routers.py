"""The server's hand-off routers: one for its own spec, and one per policy override a request sends.

Every router shares the server's engines. An override (the request's ``ead`` extension object)
is honoured only when the server was started to allow it; it is either a whole spec
(``{"policy": {...}}``) or parameters merged into the server's spec (``{"params": {...}}``), and it
is checked like the server's own spec (model count, the upstreams' signal) before any token runs.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from ead_sdk.errors import EadError
from ead_sdk.interface import Policy
from ead_sdk.serve.schemas import bad
from ead_sdk.serving import ServingEngine
from ead_sdk.specs import load_policy

MAX_OVERRIDES = 32
"""Distinct override specs kept with a router of their own (least recently used dropped first)."""

OVERRIDE_KEYS = ("policy", "params")


class RouterPool:
    """The routers of one server over ``engines``.

    Args:
        engines: the ladder's engines, smallest first.
        policy: the server's policy (checked by the router's constructor).
        allow_overrides: honour a request's ``ead`` policy override.
        options: passed to each `ead_sdk.handoff.HandoffRouter` (``cost_model``, ``max_lanes``, ``timeout``).
    """

    def __init__(
        self, engines: Sequence[ServingEngine], policy: Policy, *, allow_overrides: bool = False, **options: Any
    ):
        from ead_sdk.handoff import HandoffRouter

        self._router_cls = HandoffRouter
        self.engines = tuple(engines)
        self.policy = policy
        self.allow_overrides = allow_overrides
        self.options = options
        self.default = HandoffRouter(self.engines, policy, **options)
        self._overrides: OrderedDict[str, Any] = OrderedDict()
        self._retired: list[Any] = []

    def spec_for(self, override: Mapping[str, Any]) -> dict[str, Any]:
        """The whole spec a request's override asks for."""
        unknown = sorted(set(override) - set(OVERRIDE_KEYS))
        if unknown or len(override) != 1:
            raise bad(f"ead must hold exactly one of {list(OVERRIDE_KEYS)}, got {sorted(override)}", "ead")
        if "policy" in override:
            spec = override["policy"]
            if not isinstance(spec, Mapping):
                raise bad("ead.policy must be a policy spec (an object)", "ead.policy")
            return dict(spec)
        params = override["params"]
        if not isinstance(params, Mapping):
            raise bad("ead.params must be an object of policy parameters", "ead.params")
        base = self.policy.spec()
        return {**base, "params": {**base.get("params", {}), **params}}

    def router_for(self, override: Mapping[str, Any] | None) -> Any:
        """The router for a request: the server's, or one built (and kept) for its override."""
        if override is None:
            return self.default
        if not self.allow_overrides:
            raise bad(
                "per-request policy overrides are off on this server (start ead serve with --allow-policy-override)",
                "ead",
                status=403,
                code="policy_override_disabled",
            )
        spec = self.spec_for(override)
        key = json.dumps(spec, sort_keys=True)
        router = self._overrides.get(key)
        if router is None:
            router = self._build(spec)
            self._overrides[key] = router
            if len(self._overrides) > MAX_OVERRIDES:
                self._retired.append(self._overrides.popitem(last=False)[1])
        self._overrides.move_to_end(key)
        return router

    def _build(self, spec: dict[str, Any]) -> Any:
        try:
            return self._router_cls(self.engines, load_policy(spec), **self.options)
        except EadError as exc:  # an unknown policy or parameter, a model count or signal the engines cannot serve
            raise bad(f"policy override: {exc}", "ead") from None

    def routers(self) -> list[Any]:
        """Every router built so far (the server's first)."""
        return [self.default, *self._overrides.values(), *self._retired]

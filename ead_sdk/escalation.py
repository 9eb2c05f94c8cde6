"""The escalation rule: what a switch to a larger model does, who emits the token, what it costs.

A policy decides, after seeing the distribution of position ``t`` computed by model ``m``, the
model ``r`` of position ``t + 1``. Its escalation mode says what a switch *up* (``r > m``) does:

- ``"next"``: nothing more; model ``r`` computes position ``t + 1``.
- ``"retry"``: model ``r`` also recomputes position ``t`` and emits it (``m``'s forward is paid
  and wasted); the lane stays on ``r``.
- ``"retry_token"``: model ``r`` recomputes and emits position ``t`` only; position ``t + 1``
  goes back to ``m`` (next model ``min(r, m)``), as in a per-token fallback.

The decode loop, replay, the testing kit's episodes and budget policies all ask this module,
so the modes cannot drift apart. Functions take arrays of any array-API namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Escalation = Literal["next", "retry", "retry_token"]
ESCALATIONS: tuple[str, ...] = ("next", "retry", "retry_token")
RETRYING: tuple[str, ...] = ("retry", "retry_token")
"""Modes in which a larger model recomputes and re-emits the token whose step escalated."""


@dataclass(frozen=True)
class EscalationRule:
    """The rule of one escalation mode (see the module docstring).

    Attributes:
        mode: ``"next"``, ``"retry"`` or ``"retry_token"``.
    """

    mode: str

    def __post_init__(self) -> None:
        if self.mode not in ESCALATIONS:
            from ead_sdk.errors import ParameterError

            raise ParameterError(f"escalation must be one of {list(ESCALATIONS)}, got {self.mode!r}")

    @property
    def retries(self) -> bool:
        """A switch up makes the larger model recompute and emit the current position."""
        return self.mode in RETRYING

    @property
    def returns(self) -> bool:
        """After a retried token the lane goes back to the model that escalated."""
        return self.mode == "retry_token"

    @property
    def switch_tokens(self) -> int:
        """Tokens a switch up from the smallest model hands the larger one, beyond those already emitted.

        ``"next"``: the next token; ``"retry"``: the current token and the next; ``"retry_token"``:
        the current token only. A budget that grants a switch must have room for all of them.
        """
        return {"next": 1, "retry": 2, "retry_token": 1}[self.mode]

    def retried(self, routes: Any, model: Any) -> Any:
        """Lanes whose current position a larger model recomputes (bool, one per lane)."""
        return (routes > model) & self.retries

    def emitter(self, routes: Any, model: Any, xp: Any = np, out: Any = None) -> Any:
        """The model that emits the current position of each lane.

        ``out`` (numpy only) receives the result in place, cast as needed, for replay's
        preallocated ``(T, lanes)`` tables.
        """
        if not self.retries:
            if out is None:
                return model
            out[...] = model
            return out
        if out is not None:
            return np.maximum(routes, model, out=out, casting="unsafe")
        return xp.maximum(routes, model)

    def next_model(self, routes: Any, model: Any, xp: Any = np) -> Any:
        """The model that computes each lane's next position."""
        return xp.minimum(routes, model) if self.returns else routes


def rule(mode: str) -> EscalationRule:
    """The `EscalationRule` of ``mode`` (a `ParameterError` names the modes for an unknown one)."""
    return _RULES.get(mode) or EscalationRule(mode)


_RULES = {mode: EscalationRule(mode) for mode in ESCALATIONS}

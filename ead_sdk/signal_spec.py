"""Which uncertainty signal a policy reads as `Step.entropy`: the exact entropy, or a top-k estimate.

A threshold calibrated on one signal means something else on the other: an OpenAI-compatible
server returns at most its top-k log-probabilities, whose entropy estimate runs below the exact
value. So a spec records its signal, replay computes that signal from a trace, and a place that
cannot give it (an engine, a trace recorded with a smaller k) refuses the spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ead_sdk.errors import SignalUnavailableError, SpecError

EXACT = "entropy"
TOPK = "topk_entropy"


@dataclass(frozen=True)
class SignalSpec:
    """A policy's signal: ``SignalSpec()`` is the exact entropy, ``SignalSpec.topk(20)`` the top-20 estimate.

    Attributes:
        kind: ``"entropy"`` (of the full distribution) or ``"topk_entropy"`` (estimated from the
            top-``k`` log-probabilities, `ead_sdk.signals.topk_entropy_estimate`).
        k: the number of log-probabilities the estimate reads (``None`` for the exact entropy).
    """

    kind: str = EXACT
    k: int | None = None

    def __post_init__(self) -> None:
        if self.kind == EXACT:
            if self.k is not None:
                raise SpecError(f"signal {EXACT!r} takes no k, got k={self.k!r}")
        elif self.kind == TOPK:
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
                raise SpecError(f"signal {TOPK!r} needs k, an integer >= 1, got {self.k!r}")
        else:
            raise SpecError(f"signal kind must be {EXACT!r} or {TOPK!r}, got {self.kind!r}")

    @classmethod
    def topk(cls, k: int) -> SignalSpec:
        """The entropy estimated from the top-``k`` log-probabilities."""
        return cls(TOPK, k)

    @property
    def exact(self) -> bool:
        """True for the exact entropy of the full distribution."""
        return self.kind == EXACT

    def as_json(self) -> str | dict[str, Any]:
        """The spec's ``"signal"`` value: ``"entropy"``, or ``{"kind": "topk_entropy", "k": k}``."""
        return EXACT if self.exact else {"kind": TOPK, "k": self.k}

    @classmethod
    def from_json(cls, value: Any) -> SignalSpec:
        """Read a spec's ``"signal"`` value (see `as_json`); a clear `SpecError` otherwise."""
        if isinstance(value, SignalSpec):
            return value
        if value is None or value == EXACT:
            return cls()
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"kind", "k"})
            if unknown:
                raise SpecError(f"signal has unknown key(s) {unknown}; allowed: ['kind', 'k']")
            return cls(value.get("kind", EXACT), value.get("k"))
        raise SpecError(f"signal must be {EXACT!r} or {{'kind': {TOPK!r}, 'k': K}}, got {value!r:.60}")

    def require(self, *, exact: bool, max_k: int, where: str) -> None:
        """Refuse with `SignalUnavailableError` unless a place offering ``exact``/top-``max_k`` can give this signal.

        Args:
            exact: the place can compute the exact entropy of the full distribution.
            max_k: the most top-k log-probabilities it returns per position (0: none).
            where: what the place is, for the message (``"engine 'small' (OpenAI server at ...)"``).
        """
        if self.exact and not exact:
            raise SignalUnavailableError(
                f"the policy was calibrated on the exact entropy, which {where} cannot give "
                f"(it returns top-{max_k} log-probabilities at most); recalibrate it on "
                f"signal {{'kind': {TOPK!r}, 'k': {max_k}}} or deploy it where the full distribution is seen"
            )
        if not self.exact and self.k > max_k:  # type: ignore[operator]
            raise SignalUnavailableError(
                f"the policy's signal is the top-{self.k} entropy estimate, but {where} returns "
                f"top-{max_k} log-probabilities at most"
            )

    def __str__(self) -> str:
        return "exact entropy" if self.exact else f"top-{self.k} entropy estimate"


def signal_of(policy: Any) -> SignalSpec:
    """The signal ``policy`` reads: its ``signal``, or the exact entropy for an object without one."""
    signal = getattr(policy, "signal", None)
    return signal if isinstance(signal, SignalSpec) else SignalSpec()

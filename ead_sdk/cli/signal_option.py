"""The ``--signal`` option of ``ead replay``, ``ead sweep`` and ``ead calibrate``."""

from __future__ import annotations

from typing import Any

from ead_sdk.errors import UserError
from ead_sdk.signal_spec import SignalSpec, signal_of

SIGNAL_HELP = (
    "the signal the policy reads: entropy (exact) or topk:K (the entropy estimated from the trace's top-K "
    "log-probabilities, what an OpenAI-compatible server with logprobs=K gives); default: the spec's"
)


def parse_signal(text: str) -> SignalSpec:
    """``"entropy"`` (or ``"exact"``) or ``"topk:K"`` as a `SignalSpec`; a `UserError` otherwise."""
    value = text.strip().lower()
    if value in ("entropy", "exact"):
        return SignalSpec()
    kind, _, k = value.partition(":")
    if kind in ("topk", "top-k", "topk_entropy") and k.isdigit() and int(k) >= 1:
        return SignalSpec.topk(int(k))
    raise UserError(f"--signal {text!r}: expected entropy or topk:K with K >= 1 (e.g. topk:20)")


def with_signal(policy: Any, signal: str | None) -> Any:
    """``policy`` reading ``signal`` instead of its spec's (itself when ``signal`` is ``None``)."""
    if signal is None:
        return policy
    from ead_sdk.specs import load_policy

    return load_policy({**policy.spec(), "signal": parse_signal(signal).as_json()})


def describe(policy: Any) -> str:
    """The policy's signal in words, for the output (``"exact entropy"``, ``"top-20 entropy estimate"``)."""
    return str(signal_of(policy))

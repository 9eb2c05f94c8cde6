"""The signal a spec was calibrated on, computed from a trace: exact entropy, or a top-k estimate.

A trace records each model's exact entropy and its top-k log-probabilities (``k`` in the
metadata). A spec whose signal is the top-``k`` estimate replays on the estimate computed from the
first ``k`` of them (they are sorted descending), so a threshold calibrated here means on an
OpenAI-compatible server returning ``logprobs=k`` what it meant in replay. A trace recorded with
a smaller ``k`` cannot give that signal and is refused.
"""

from __future__ import annotations

import numpy as np

from ead_sdk.errors import SignalUnavailableError
from ead_sdk.signal_spec import SignalSpec
from ead_sdk.signals import topk_entropy_estimate
from ead_sdk.traces.schema import TraceMeta


def require_trace_signal(signal: SignalSpec, meta: TraceMeta, source: str, *, has_topk: bool = True) -> None:
    """Refuse with `SignalUnavailableError` unless the trace at ``source`` can give ``signal``.

    Args:
        signal: the spec's signal.
        meta: the trace's metadata (its recorded ``k``).
        source: the trace's name, for the message.
        has_topk: whether the top-k log-probabilities are present (read) at all.
    """
    if signal.exact:
        return
    recorded = int(meta.k) if has_topk else 0
    if recorded >= signal.k:  # type: ignore[operator]
        return
    have = f"recorded top-{recorded} log-probabilities" if recorded else "recorded no top-k log-probabilities"
    raise SignalUnavailableError(
        f"trace {source!r} {have}; the policy's signal, the {signal}, needs top-{signal.k} or more: record the "
        f"trace with k >= {signal.k} (record_k=, ead record --k), or calibrate on signal "
        f"{{'kind': 'topk_entropy', 'k': {recorded}}}" + ("" if recorded else " after recording a top-k")
    )


def topk_signal(top_logprobs: np.ndarray, k: int, vocab_size: int) -> np.ndarray:
    """The top-``k`` entropy estimate of recorded ``(..., K)`` log-probabilities (``K >= k``), float32.

    Reads the first ``k`` entries (sorted descending in a trace). Padding past a sequence's end
    (zeros) gives 0, never NaN.
    """
    estimate = topk_entropy_estimate(top_logprobs[..., :k], vocab_size=vocab_size or None, validate=False)
    return np.asarray(estimate, np.float32)


__all__ = ["require_trace_signal", "topk_signal"]

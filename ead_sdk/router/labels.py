"""Labels for a learned router: where, along a trace, the largest model would emit another token.

A trace is teacher-forced: at every position every model's distribution was computed on the same
prefix, so each position says what the smallest model and the largest model would each have
emitted there. Two rules turn that into a yes/no label per position:

- ``"top1"``: the smallest model's most likely token is not the largest model's most likely token
  (greedy decoding would differ). Needs ``k >= 1``.
- ``"top_p"``: the smallest model's most likely token lies outside the largest model's top-p set
  (the fewest most likely tokens whose probability reaches ``p``), i.e. the large model, sampling
  with nucleus ``p``, could never have drawn it. Needs the recorded top-k of the large model to
  either contain that token or reach mass ``p``; where it does neither the label is unknown and
  the traces are refused.
"""

from __future__ import annotations

import numpy as np

from ead_sdk.errors import RouterTrainingError
from ead_sdk.traces.traceset import FlatTrace

LABELS = ("top1", "top_p")


def _position_of(flat: FlatTrace, row: int) -> str:
    seq = int(np.searchsorted(flat.offsets, row, side="right") - 1)
    return f"sequence {seq}, position {row - int(flat.offsets[seq])}"


def _need_topk(flat: FlatTrace, rule: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    if flat.meta.k < 1 or flat.top_ids is None or flat.top_logprobs is None:
        raise RouterTrainingError(
            f"{source}: label {rule!r} compares the models' top tokens, but the trace records no top-k "
            f"(k={flat.meta.k}); record it with k >= 1 (ead record --top-k)"
        )
    if flat.meta.num_models < 2:
        raise RouterTrainingError(f"{source}: a router label needs at least two models, the trace has one")
    return flat.top_ids, flat.top_logprobs


def label_positions(
    flat: FlatTrace, rule: str = "top1", *, p: float = 0.9, source: str = "traces"
) -> tuple[np.ndarray, np.ndarray]:
    """Per position of ``flat`` (flat row order): the label, and whether the recording decides it.

    Args:
        flat: the trace's flat columns (`TraceSet.flat`), with ``top_ids`` and ``top_logprobs``.
        rule: ``"top1"`` or ``"top_p"`` (see the module docstring).
        p: the nucleus mass of ``"top_p"``, in ``(0, 1]``.
        source: the trace's name, for error messages.

    Returns:
        ``(differ, known)``, bool ``(N,)`` each: whether the largest model would emit another token
        than the smallest one, and whether the recorded top-k decides it (always, for ``"top1"``;
        ``differ`` is False where it is not known).

    Raises:
        RouterTrainingError: no top-k recorded, an unknown rule, or a ``p`` out of range.
    """
    if rule not in LABELS:
        raise RouterTrainingError(f"unknown label rule {rule!r}; known: {list(LABELS)}")
    top_ids, top_lp = _need_topk(flat, rule, source)
    small_top = top_ids[:, 0, 0]
    large = flat.meta.num_models - 1
    if rule == "top1":
        differ = small_top != top_ids[:, large, 0]
        return differ, np.ones_like(differ)
    if not 0.0 < p <= 1.0:
        raise RouterTrainingError(f"label 'top_p': p must be in (0, 1], got {p}")
    probs = np.exp(top_lp[:, large, :].astype(np.float64))
    before = np.cumsum(probs, axis=1) - probs  # mass of the more likely tokens
    in_set = before < p  # rank j is in the top-p set iff the tokens before it weigh less than p
    match = top_ids[:, large, :] == small_top[:, None]
    found = match.any(axis=1)
    inside = (match & in_set).any(axis=1)
    known = found | (probs.sum(axis=1) >= p)
    return ~inside & known, known


def would_differ(
    flat: FlatTrace, rule: str = "top1", *, p: float = 0.9, max_unknown: float = 0.0, source: str = "traces"
) -> np.ndarray:
    """`label_positions`' labels, refusing traces whose top-k leaves too many positions undecided.

    Args:
        flat: the trace's flat columns.
        rule: ``"top1"`` or ``"top_p"``.
        p: the nucleus mass of ``"top_p"``.
        max_unknown: the largest share of positions the recording may leave undecided (their
            label reads False; a trainer drops them, see `label_positions`).
        source: the trace's name, for error messages.

    Raises:
        RouterTrainingError: as `label_positions`, or (``"top_p"``) more than ``max_unknown`` of the
            positions undecided: the message counts them and names the first.
    """
    differ, known = label_positions(flat, rule, p=p, source=source)
    check_unknown(flat, known, rule, p, max_unknown, source)
    return differ


def check_unknown(flat: FlatTrace, known: np.ndarray, rule: str, p: float, max_unknown: float, source: str) -> None:
    """Refuse when more than ``max_unknown`` of the positions have no label."""
    if not 0.0 <= max_unknown <= 1.0:
        raise RouterTrainingError(f"max_unknown must be a share in [0, 1], got {max_unknown}")
    unknown = ~known
    count = int(unknown.sum())
    if count and count > max_unknown * unknown.size:
        first = _position_of(flat, int(np.flatnonzero(unknown)[0]))
        raise RouterTrainingError(
            f"{source}: label {rule!r} with p={p:g} is undecidable at {count} of {unknown.size} positions "
            f"(first: {first}): the large model's recorded top-{flat.meta.k} neither holds the small model's "
            f"token nor reaches mass {p:g}; record a larger k, use a smaller p, or allow dropping them "
            f"(max_unknown, --max-unknown; now {max_unknown:g})"
        )

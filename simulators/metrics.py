"""Replay metrics: cost, routing, quality proxies, and the RouteLLM-style quality/cost summary.

Quality proxies on a fixed trajectory:

* ``agreement``: share of positions where the emitting model's most likely token is the largest
  model's most likely token (1 wherever the largest model emits);
* ``loglik``: log-likelihood of the trajectory under the emitting models;
* ``quality`` (with correctness labels): each sequence's expected correctness, the single-model
  runs' correctness weighted by the share of tokens each model emitted. This interpolation is
  an assumption of the proxy, not a measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ead_sdk.simulators.replay import ReplayData, ReplayResult


def _by_emitter(
    emitted: np.ndarray, per_seq: np.ndarray, seq: np.ndarray, num_models: int, chunk: int = 32
) -> np.ndarray:
    """Sum over positions of ``per_seq[t, seq[lane], emitted[t, lane]]`` for each lane."""
    n = seq.shape[0]
    n_seq = per_seq.shape[1]
    tiles = n // n_seq if n_seq and n % n_seq == 0 else 0
    tiled = tiles > 0 and np.array_equal(seq, np.tile(np.arange(n_seq), tiles))
    if per_seq.dtype == np.bool_:  # counts: exact in integers, whatever the order of the sums
        return _count_by_emitter(emitted, per_seq, seq, num_models, tiles if tiled else 0)
    total = np.zeros(n, np.float64)
    for t0 in range(0, emitted.shape[0], chunk):
        e = emitted[t0 : t0 + chunk]
        rows = e.shape[0]
        for m in range(num_models):
            values = per_seq[t0 : t0 + chunk, :, m].astype(np.float32)
            hit = e == m
            if tiled:  # lanes are configuration-major tiles of the sequences: broadcast, no gather
                part = (hit.reshape(rows, tiles, n_seq) * values[:, None, :]).sum(0, dtype=np.float64)
                total += part.reshape(n)
            else:
                total += (hit * np.take(values, seq, axis=1)).sum(0, dtype=np.float64)
    return total


def _count_by_emitter(
    emitted: np.ndarray, per_seq: np.ndarray, seq: np.ndarray, num_models: int, tiles: int, chunk: int = 100
) -> np.ndarray:
    """`_by_emitter` of a bool ``per_seq``: the count of positions where it holds, as float64."""
    n = seq.shape[0]
    n_seq = per_seq.shape[1]
    count = np.zeros(n, np.int64)
    for t0 in range(0, emitted.shape[0], chunk):  # at most 100 rows: per-block counts fit in int8
        e = emitted[t0 : t0 + chunk]
        rows = e.shape[0]
        for m in range(num_models):
            values = per_seq[t0 : t0 + chunk, :, m]
            hit = e == m
            if tiles:
                part = (hit.reshape(rows, tiles, n_seq) & values[:, None, :]).sum(0, dtype=np.int8)
                count += part.reshape(n)
            else:
                count += (hit & np.take(values, seq, axis=1)).sum(0, dtype=np.int8)
    return count.astype(np.float64)


def emitter_sums(emitted: np.ndarray, data: ReplayData, seq: np.ndarray) -> dict[str, np.ndarray]:
    """Per-lane sums over positions of the emitting model's agreement and token log-probability.

    Each lane's sums depend on its own column of ``emitted`` only, so lanes may be summed in
    separate blocks (or threads) and concatenated.
    """
    m_count = data.meta.num_models
    out: dict[str, np.ndarray] = {}
    if data.agree is not None:
        out["agreement_count"] = _by_emitter(emitted, data.agree, seq, m_count)
    if data.token_logprob is not None:
        out["loglik"] = _by_emitter(emitted, data.token_logprob, seq, m_count)
    return out


def lane_metrics(
    result: ReplayResult, data: ReplayData, sums: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Per-lane metrics: the ledger's cost figures plus agreement, log-likelihood and quality.

    ``sums`` are the lanes' `emitter_sums` when already computed (computed here otherwise).
    """
    out = result.ledger.per_lane(result.cost_model)
    seq = result.lane_sequence
    if sums is None:
        sums = emitter_sums(result.emitted_by, data, seq)
    tokens = out["tokens"]
    safe = np.maximum(tokens, 1)
    if "agreement_count" in sums:
        agree = sums["agreement_count"]
        out["agreement_count"] = agree
        out["agreement"] = np.where(tokens > 0, agree / safe, np.nan)
    if "loglik" in sums:
        out["loglik"] = sums["loglik"]
    flat = data.flat
    if flat.correct is not None and flat.has_correct is not None:
        labelled = flat.has_correct[seq]
        share = result.ledger.emitted / safe[:, None]
        quality = (share * flat.correct[seq]).sum(1)
        out["labelled"] = labelled
        out["quality"] = np.where(labelled & (tokens > 0), quality, np.nan)
    return out


def aggregate(result: ReplayResult, lanes: np.ndarray | None = None) -> dict[str, Any]:
    """Aggregate metrics over ``lanes``: token-weighted shares, totals, and per-sequence means.

    Computed by `Totals.summary` from the lanes' summed counters, the same function the
    streamed and Ray engines use, so every engine gives identical figures.
    """
    from ead_sdk.simulators.totals import Totals

    return Totals.of_lanes(result, lanes).summary(result.cost_model)


def pgr(quality: float, q_small: float, q_large: float) -> float:
    """Performance gap recovered: 0 at the small model's quality, 1 at the large model's."""
    gap = q_large - q_small
    return float("nan") if gap == 0 else (quality - q_small) / gap


def routellm_summary(points: Sequence[tuple[float, float]], q_small: float, q_large: float) -> dict[str, float]:
    """RouteLLM-style summary of quality versus large-model share.

    The curve runs through the Pareto-optimal points among the measured ``(large_share,
    quality)`` points and the two single-model runs ``(0, q_small)`` and ``(1, q_large)``, linear
    between them (what randomly mixing two neighbouring configurations achieves), flat after the
    best one.

    Returns:
        ``apgr``: area under the performance-gap-recovered curve over share in [0, 1] (0.5 is
        what randomly mixing the two models gives); ``share_for_50pct_gap`` and
        ``share_for_80pct_gap``: the smallest share whose curve reaches 50% / 80% of the gap
        (``nan`` when the gap is zero).
    """
    pts = [(0.0, q_small), *[(float(s), float(q)) for s, q in points], (1.0, q_large)]
    pts.sort(key=lambda p: (p[0], -p[1]))
    front: list[tuple[float, float]] = []
    for x, y in pts:  # the Pareto frontier: each kept point is strictly better than all cheaper ones
        if not front or y > front[-1][1]:
            front.append((x, y))
    if front[-1][0] < 1.0:
        front.append((1.0, front[-1][1]))
    xs = np.array([p[0] for p in front])
    ys = np.array([p[1] for p in front])
    gap = q_large - q_small
    if gap <= 0:
        return {"apgr": float("nan"), "share_for_50pct_gap": float("nan"), "share_for_80pct_gap": float("nan")}
    rec = (ys - q_small) / gap
    area = float(np.sum((xs[1:] - xs[:-1]) * (rec[1:] + rec[:-1]) / 2.0))
    out = {"apgr": area}
    for frac, key in ((0.5, "share_for_50pct_gap"), (0.8, "share_for_80pct_gap")):
        hit = np.flatnonzero(rec >= frac)
        i = int(hit[0])
        if i == 0:
            out[key] = 0.0
        else:  # interpolate on the segment that crosses
            x0, x1, r0, r1 = xs[i - 1], xs[i], rec[i - 1], rec[i]
            out[key] = float(x0 + (x1 - x0) * (frac - r0) / (r1 - r0)) if r1 > r0 else float(x1)
    return out

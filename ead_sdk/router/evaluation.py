"""Replayed frontiers: a router beside the hand-set rules and the oracle, on the same held-out traces.

Each policy's parameter is swept over a grid in one batched replay (each configuration a tile of
lanes); every configuration gives a point (large share, agreement). Agreement is the replay's
quality proxy on the teacher-forced trajectory: the share of positions where the emitting model's
most likely token is the largest model's. ``gap`` is the share of the small-to-large agreement gap
recovered, ``(a - a_small) / (1 - a_small)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ead_sdk.interface import Policy
from ead_sdk.params import Param
from ead_sdk.simulators.replay import ReplayData, replay
from ead_sdk.specs import load_policy
from ead_sdk.traces.traceset import TraceSet


@dataclass(frozen=True)
class FrontierCurve:
    """A policy's replayed points, sorted by large share."""

    label: str
    escalation: str
    share: np.ndarray
    agreement: np.ndarray
    cost_ratio: np.ndarray

    def at(self, share: float) -> float:
        """Agreement at ``share``, linearly interpolated between points (``nan`` outside them)."""
        if self.share.size == 0 or share < self.share[0] - 1e-9 or share > self.share[-1] + 1e-9:
            return float("nan")
        if self.share.size == 1:
            return float(self.agreement[0])
        # Several points at one share (a flat stretch of the grid): keep the best of each.
        shares, index = np.unique(self.share, return_inverse=True)
        best = np.full(shares.shape, -np.inf)
        np.maximum.at(best, index, self.agreement)
        return float(np.interp(share, shares, best))


def replayed_curve(data: ReplayData, policy: Policy, param: str | None, values: Any, label: str) -> FrontierCurve:
    """Replay ``policy`` with ``param`` at each of ``values`` (one batched run); no param: one point."""
    n = data.num_sequences
    if param is None:
        configs = 1
        pol = policy
    else:
        values = np.asarray(values)
        configs = values.size
        decl: Param = next(p for p in type(policy).parameters if p.name == param)
        dtype = np.int64 if decl.kind == "int" else np.float64
        params = {**dict(policy.params), param: np.repeat(values.astype(dtype), n)}
        pol = type(policy)(
            escalation=policy.escalation, initial_model=policy.initial_model, signal=policy.signal, **params
        )
    result = replay(data, pol, lane_sequence=np.tile(np.arange(n), configs))
    share, agree, cost = [], [], []
    for j in range(configs):
        summary = result.summary(np.arange(j * n, (j + 1) * n))
        share.append(summary["large_share"])
        agree.append(summary["agreement"])
        cost.append(summary["cost_ratio"])
    order = np.argsort(share, kind="stable")
    return FrontierCurve(
        label,
        policy.escalation,
        np.asarray(share)[order],
        np.asarray(agree)[order],
        np.asarray(cost)[order],
    )


RULES: tuple[tuple[str, dict[str, Any], str | None, tuple[float, float]], ...] = (
    ("random", {"policy": "random", "params": {"seed": 0}}, "p", (0.0, 1.0)),
    ("confidence", {"policy": "confidence"}, "threshold", (0.0, 1.0)),
    ("rolling_entropy w1", {"policy": "rolling_entropy", "params": {"window": 1}}, "threshold", (0.0, 8.0)),
    ("rolling_entropy w2", {"policy": "rolling_entropy", "params": {"window": 2}}, "threshold", (0.0, 8.0)),
    ("hysteresis", {"policy": "hysteresis", "params": {"lower": 1.0}}, "upper", (1.05, 8.0)),
    ("top_h", {"policy": "top_h", "params": {"max_kept": 8, "top_n": 8}}, "min_mass", (0.0, 1.0)),
    ("cost_budget", {"policy": "cost_budget", "params": {"mode": "hard"}}, "budget", (0.0, 1.0)),
)
"""The hand-set rules a router is compared with: label, base spec, swept parameter, its range."""


def compare_frontiers(
    traces: TraceSet,
    routers: Mapping[str, dict[str, Any]],
    *,
    escalations: tuple[str, ...] = ("next", "retry", "retry_token"),
    points: int = 41,
) -> dict[str, Any]:
    """Every rule of `RULES` in each escalation mode, each router, and the oracle, replayed on ``traces``.

    ``routers`` maps an escalation mode to the ``learned`` spec trained for it (a mode without one
    uses any given router). Returns ``{"small": agreement, "oracle": point, "curves": [FrontierCurve...]}``.
    """
    data = ReplayData.from_traces(traces)
    curves = []
    fallback = next(iter(routers.values()))
    entries = [*RULES, ("learned", None, "threshold", (0.0, 1.0))]
    for label, spec, param, (lo, hi) in entries:
        for esc in escalations:
            if label == "cost_budget" and esc != "next":
                continue  # a budget is a cap on shares, the same in every mode here
            base = spec if spec is not None else routers.get(esc, fallback)
            policy = load_policy({**base, "escalation": esc})
            values = np.linspace(lo, hi, points)
            if label == "hysteresis":
                values = values[values > 1.0]
            curves.append(replayed_curve(data, policy, param, values, label))
    small = replayed_curve(data, load_policy({"policy": "fixed", "params": {"model": 0}}), None, None, "small only")
    oracle = replayed_curve(data, load_policy({"policy": "oracle"}), None, None, "oracle")
    return {"small": float(small.agreement[0]), "oracle": oracle, "curves": curves}


def gap(agreement: float, small: float) -> float:
    """Share of the small-to-large agreement gap recovered."""
    return (agreement - small) / (1.0 - small) if small < 1.0 else float("nan")

"""Mergeable totals of replayed lanes: the one place a summary's figures are computed.

A summary (`aggregate`, a sweep row) is a function of sums over sequences: integer forward
counters, integer agreement counts, and float sums (log-likelihood, per-sequence quality). The
integers add exactly in any order; the float sums are kept as exact partials (`msum`: a few
floats whose exact sum is the exact sum of the values) and rounded once with `math.fsum`, so
totals built from any split of the sequences into batches (one process or many Ray workers) and
merged in any order give bit-identical figures. Ratios are computed once, from the merged
totals, by `Totals.summary`. How totals travel between processes is `ead_sdk.simulators.ray_wire`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ead_sdk.cost import CostLedger, CostModel, CostReport
from ead_sdk.errors import EngineError

if TYPE_CHECKING:
    from ead_sdk.simulators.replay import ReplayResult

COUNTERS = ("emitted", "steps", "catchup", "wasted", "prefill")


def msum(values: Iterable[float], partials: list[float] | None = None) -> list[float]:
    """Exact sum of ``values`` (and earlier ``partials``) as a short list of floats.

    The exact sum of the returned floats is the exact sum of the inputs, so ``math.fsum`` of
    them is the correctly rounded total, and the partials of two sets concatenated are exact
    partials of their union. Each float is the correctly rounded remainder left by the earlier
    ones (one C `math.fsum` pass each, usually two or three in all); the remainder shrinks by at
    least 52 binary orders per pass, so the loop ends. A non-finite input gives ``[nan or inf]``.
    """
    vals = list(values) if partials is None else [*partials, *values]
    out: list[float] = []
    while True:
        rest = math.fsum(itertools.chain(vals, (-p for p in out)))
        if rest == 0.0:
            return out
        if not math.isfinite(rest):
            return [rest]
        out.append(rest)


@dataclass
class Totals:
    """Sums over a set of lanes (sequences under one configuration), mergeable exactly.

    Attributes:
        num_models: models in the trace.
        sequences: lanes summed.
        emitted, steps, catchup, wasted, prefill: int64 ``(M,)`` summed `CostLedger` counters.
        switches: summed emitter changes.
        agreement: summed agreement counts (``None`` when the trace has no top-k).
        loglik: exact partials of the summed log-likelihood (``None`` without ``token_logprob``).
        has_labels: the trace carries a ``correct`` column.
        labelled: lanes with labels and at least one token (the quality mean's denominator).
        quality: exact partials of those lanes' quality values.
        correct_small, correct_large: those lanes' single-model runs that were correct.
    """

    num_models: int
    sequences: int = 0
    emitted: np.ndarray = field(default=None)  # type: ignore[assignment]
    steps: np.ndarray = field(default=None)  # type: ignore[assignment]
    catchup: np.ndarray = field(default=None)  # type: ignore[assignment]
    wasted: np.ndarray = field(default=None)  # type: ignore[assignment]
    prefill: np.ndarray = field(default=None)  # type: ignore[assignment]
    switches: int = 0
    agreement: int | None = None
    loglik: list[float] | None = None
    has_labels: bool = False
    labelled: int = 0
    quality: list[float] = field(default_factory=list)
    correct_small: int = 0
    correct_large: int = 0

    def __post_init__(self) -> None:
        for name in COUNTERS:
            value = getattr(self, name)
            arr = np.zeros(self.num_models, np.int64) if value is None else np.asarray(value, np.int64)
            if arr.shape != (self.num_models,):
                raise EngineError(f"totals: {name} has shape {arr.shape}, expected ({self.num_models},)")
            setattr(self, name, arr)

    @classmethod
    def of_lanes(cls, result: ReplayResult, lanes: np.ndarray | None = None) -> Totals:
        """The totals of ``lanes`` (all by default) of a local replay."""
        sel = np.arange(result.lanes) if lanes is None else np.asarray(lanes, np.int64)
        ledger, met = result.ledger, result.metrics
        out = cls(
            num_models=result.num_models,
            sequences=int(sel.shape[0]),
            switches=int(ledger.switches[sel].sum()),
            **{name: getattr(ledger, name)[sel].sum(0) for name in COUNTERS},
        )
        if "agreement_count" in met:
            out.agreement = int(met["agreement_count"][sel].sum())
        if "loglik" in met:
            out.loglik = msum(met["loglik"][sel].tolist())
        if "quality" in met:
            out.has_labels = True
            lab = met["labelled"][sel] & (met["tokens"][sel] > 0)
            seq = result.lane_sequence[sel][lab]
            out.labelled = int(lab.sum())
            out.quality = msum(met["quality"][sel][lab].tolist())
            out.correct_small = int(result.correct[seq, 0].sum())
            out.correct_large = int(result.correct[seq, -1].sum())
        return out

    def merge(self, other: Totals) -> Totals:
        """Add ``other`` into these totals (exactly; the order of merges does not matter)."""
        if other.num_models != self.num_models:
            raise EngineError(f"cannot merge totals of {other.num_models} and {self.num_models} models")
        self.sequences += other.sequences
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.switches += other.switches
        # Every batch of one trace has the same columns, so a figure is absent from all or none.
        if self.agreement is not None or other.agreement is not None:
            self.agreement = (self.agreement or 0) + (other.agreement or 0)
        if self.loglik is not None or other.loglik is not None:
            self.loglik = msum(other.loglik or [], list(self.loglik or []))
        self.has_labels = self.has_labels or other.has_labels
        self.labelled += other.labelled
        self.quality = msum(other.quality, list(self.quality))
        self.correct_small += other.correct_small
        self.correct_large += other.correct_large
        return self

    # -- figures ----------------------------------------------------------------------------
    def report(self, cost_model: CostModel) -> CostReport:
        """The `CostReport` of the summed lanes (`CostLedger.report` on the summed counters)."""
        ledger = CostLedger(1, self.num_models)
        for name in COUNTERS:
            getattr(ledger, name)[0] = getattr(self, name)
        ledger.switches[0] = self.switches
        return ledger.report(cost_model)

    def summary(self, cost_model: CostModel) -> dict[str, Any]:
        """Aggregate metrics: token-weighted shares, totals, and per-sequence means."""
        from ead_sdk.simulators.metrics import routellm_summary

        report = self.report(cost_model)
        tokens = max(report.tokens, 1)
        out: dict[str, Any] = {
            "sequences": self.sequences,
            "tokens": report.tokens,
            "large_share": report.large_share,
            "cost_ratio": report.cost_ratio,
            "switches": report.switches,
            "switches_per_1k_tokens": 1000.0 * report.switches / tokens,
            "wasted": int(sum(report.wasted)),
        }
        if self.agreement is not None:
            out["agreement"] = float(self.agreement / tokens)
        if self.loglik is not None:
            loglik = math.fsum(self.loglik)
            out["loglik"] = loglik
            out["loglik_per_token"] = float(loglik / tokens)
        if self.has_labels and self.labelled:
            out["quality"] = math.fsum(self.quality) / self.labelled
            out["quality_small"] = self.correct_small / self.labelled
            out["quality_large"] = self.correct_large / self.labelled
            out.update(
                routellm_summary([(out["large_share"], out["quality"])], out["quality_small"], out["quality_large"])
            )
        return out


__all__ = ["COUNTERS", "Totals", "msum"]

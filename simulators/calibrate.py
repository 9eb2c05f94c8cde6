"""Calibration: the parameter value that hits a target large-model share or cost ratio.

RouteLLM calibrates a router's threshold with a quantile of its scores on the user's data, which
is exact only for a memoryless rule. A stateful policy (a rolling window, hysteresis, a dwell)
routes each token on its history, so here the target is searched with replay itself: each round
replays a grid of candidate values as lanes of one batched run on the calibration split and
narrows to the bracket where the metric crosses the target. The chosen value is then replayed on
the held-out split, whose achieved share says how well the calibration transfers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ead_sdk.cost import CostModel, CostReport
from ead_sdk.errors import ParameterError
from ead_sdk.interface import Policy
from ead_sdk.simulators.engines import Engine, LocalEngine, RayEngine, as_engine
from ead_sdk.simulators.replay import ReplayData, replay
from ead_sdk.simulators.sweep import MEMORY_BUDGET, estimate_sweep_bytes, lane_policy
from ead_sdk.specs import as_policy
from ead_sdk.traces.reader import read_meta
from ead_sdk.traces.traceset import TraceSet


@dataclass(frozen=True)
class CalibrationResult:
    """The calibrated value and how it does on both splits.

    Attributes:
        parameter: the calibrated parameter.
        value: its chosen value.
        metric: ``"large_share"`` or ``"cost_ratio"``.
        target: the requested value of the metric.
        calibration: the metric on the calibration split at ``value``.
        held_out: the metric on the held-out split at ``value`` (``nan`` without a held-out split).
        policy: the policy configured with ``value``.
        evaluations: candidate values replayed in all.
        sequences: ``(calibration, held_out)`` sequence counts.
    """

    parameter: str
    value: float
    metric: str
    target: float
    calibration: float
    held_out: float
    policy: Policy
    evaluations: int
    sequences: tuple[int, int]


_TIE = 1e-12
"""Relative gap below which a metric counts as equal to the target (an exact tie)."""


def _check_request(
    metric: str, target: float, held_out: float, bounds: tuple[float, float] | None, points: int, rounds: int
) -> None:
    """Refuse a request no search can honour, before any replay."""
    if metric == "large_share" and not 0.0 <= target <= 1.0:
        raise ParameterError(f"target_large_share must be in [0, 1], got {target}")
    if metric == "cost_ratio" and not (math.isfinite(target) and target > 0.0):
        raise ParameterError(f"target_cost_ratio must be a finite number > 0, got {target}")
    if not 0.0 <= held_out < 1.0:
        raise ParameterError(f"held_out must be in [0, 1), got {held_out}")
    if bounds is not None:
        lo, hi = bounds
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ParameterError(f"bounds must be two finite numbers (low, high) with low < high, got {bounds}")
    if points < 2 or rounds < 1:
        raise ParameterError(f"points must be >= 2 and rounds >= 1, got points={points}, rounds={rounds}")


def _metric(result, metric: str, lanes: np.ndarray) -> float:
    return _report_metric(result.report(lanes), metric)


def _report_metric(report: CostReport, metric: str) -> float:
    return float(report.large_share if metric == "large_share" else report.cost_ratio)


def _valid(policy: Policy, options: dict[str, Any], base: dict[str, Any], parameter: str, value: Any) -> bool:
    try:
        type(policy)(**options, **{**base, parameter: value})
    except ParameterError:
        return False
    return True


def _valid_interval(
    policy: Policy,
    options: dict[str, Any],
    base: dict[str, Any],
    parameter: str,
    kind: str,
    lo: float,
    hi: float | None,
) -> tuple[float, float | None]:
    """Shrink the declared interval to values the policy accepts with its other parameters.

    A parameter may be bounded by another one (hysteresis: ``upper > lower``); the valid values
    are assumed to form one interval, whose ends are found by bisection.
    """
    cast = int if kind == "int" else float

    def ok(v: float) -> bool:
        return _valid(policy, options, base, parameter, cast(v))

    inside = [v for v in (lo, hi, float(policy.params[parameter])) if v is not None and ok(v)]
    if not inside:
        raise ParameterError(
            f"policy {policy.name!r}: found no valid value of {parameter!r} to search from; pass bounds"
        )
    for end in ("lo", "hi"):
        edge = lo if end == "lo" else hi
        if edge is None or ok(edge):
            continue
        bad, good = edge, (min(inside) if end == "lo" else max(inside))
        for _ in range(60):
            mid = (bad + good) / 2
            if kind == "int" and abs(good - bad) <= 1:
                break
            bad, good = (bad, mid) if ok(mid) else (mid, good)
        if kind == "int":  # the bisection ends between integers: round into the valid side
            good = math.ceil(good) if end == "lo" else math.floor(good)
        if end == "lo":
            lo = good
        else:
            hi = good
    return lo, hi


def calibrate(
    traces: TraceSet | str | os.PathLike[str],
    policy: Policy | Mapping[str, Any] | str,
    parameter: str,
    *,
    target_large_share: float | None = None,
    target_cost_ratio: float | None = None,
    held_out: float = 0.5,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
    points: int = 16,
    rounds: int = 4,
    cost_model: CostModel | None = None,
    engine: Engine | None = None,
) -> CalibrationResult:
    """Pick ``parameter`` of ``policy`` so that replay on a calibration split hits the target.

    Args:
        traces: the trace; a random ``held_out`` share of its sequences is kept for checking.
        policy: the policy to calibrate, an object (registered or not) or a spec (its other
            parameters, escalation and initial model are kept).
        parameter: a numeric parameter along which the metric is monotone (e.g. a threshold).
        target_large_share: the wanted share of tokens from the largest model, or
        target_cost_ratio: the wanted cost relative to the largest model alone.
        held_out: share of sequences held out (0: calibrate on everything, report ``nan``).
        seed: the split's seed.
        bounds: the search interval (default: the parameter's declared bounds; an open upper
            bound is found by doubling).
        points: candidate values replayed per round (one batched run each).
        rounds: refinement rounds (integer parameters stop once the bracket is adjacent).
        cost_model: per-model costs (default: the trace's parameter counts).
        engine: `LocalEngine` (default) or `RayEngine` (each round one Ray Data pass over the
            calibration split; identical results). With a `RayEngine`, ``traces`` may also be the
            path of a Parquet dataset when ``held_out=0``.

    Returns:
        A `CalibrationResult`.

    Raises:
        ParameterError: an impossible request (a share outside [0, 1], a cost ratio <= 0,
            ``held_out`` outside [0, 1), a parameter with choices), or a target the metric does
            not reach over the searched interval (the message gives the range it reached).
    """
    engine = as_engine(engine)
    policy = as_policy(policy)
    if not isinstance(traces, TraceSet) and (isinstance(engine, LocalEngine) or held_out > 0):
        raise ParameterError("calibrate splits a TraceSet in memory; a dataset path needs a RayEngine and held_out=0")
    if (target_large_share is None) == (target_cost_ratio is None):
        raise ParameterError("give exactly one of target_large_share and target_cost_ratio")
    metric = "large_share" if target_large_share is not None else "cost_ratio"
    target = float(target_large_share if target_large_share is not None else target_cost_ratio)
    _check_request(metric, target, held_out, bounds, points, rounds)
    declared = {p.name: p for p in type(policy).parameters}
    if parameter not in declared or declared[parameter].kind not in ("float", "int"):
        raise ParameterError(f"policy {policy.name!r}: {parameter!r} is not a numeric parameter")
    decl = declared[parameter]
    if decl.choices is not None:
        raise ParameterError(
            f"policy {policy.name!r}: {parameter!r} takes one of {list(decl.choices)}, not a continuous value; "
            "sweep its choices instead"
        )
    if held_out > 0:
        held, calib = traces.split(held_out, seed)
        if not len(calib):
            raise ParameterError(f"held_out={held_out} leaves no sequence of {len(traces)} to calibrate on")
    else:
        held, calib = None, traces
    base = {k: v for k, v in policy.params.items() if k != parameter}
    options = {"escalation": policy.escalation, "initial_model": policy.initial_model}
    evaluations = 0
    if isinstance(engine, RayEngine):
        from ead_sdk.simulators.ray_engine import connect, ray_sweep_totals, trace_dataset
        from ead_sdk.simulators.sweep import replay_columns

        connect(engine.address)
        meta = calib.meta if isinstance(calib, TraceSet) else read_meta(calib)
        dataset = trace_dataset(calib, replay_columns(meta, True))
        n = dataset[2]
        costs = cost_model or meta.cost_model()

        def run(configs: list[dict[str, Any]]) -> np.ndarray:
            totals = ray_sweep_totals(*dataset, policy, configs, cost_model=costs, batch_rows=engine.batch_rows)
            return np.array([_report_metric(t.report(costs), metric) for t in totals])
    else:
        data = ReplayData.from_traces(calib)
        n = data.num_sequences

        def run(configs: list[dict[str, Any]]) -> np.ndarray:
            need = estimate_sweep_bytes(data, policy, configs)
            if need > MEMORY_BUDGET:
                raise ParameterError(
                    f"calibrating {parameter!r} replays {len(configs)} values x {n:,} sequences at once, about "
                    f"{need / 2**30:.3g} GiB (budget {MEMORY_BUDGET / 2**30:.3g} GiB): pass fewer points, "
                    "narrower bounds or a RayEngine"
                )
            pol = lane_policy(policy, configs, n)
            seq = np.tile(np.arange(n), len(configs))
            result = replay(data, pol, cost_model=cost_model, lane_sequence=seq, engine=engine)
            return np.array([_metric(result, metric, np.arange(j * n, (j + 1) * n)) for j in range(len(configs))])

    def evaluate(values: np.ndarray) -> np.ndarray:
        nonlocal evaluations
        configs = [{**base, parameter: (int(v) if decl.kind == "int" else float(v))} for v in values]
        evaluations += len(values)
        return run(configs)

    lo, hi = bounds if bounds is not None else (decl.low if decl.low is not None else 0.0, decl.high)
    if bounds is None:
        lo, hi = _valid_interval(policy, options, base, parameter, decl.kind, lo, hi)
    if hi is None:  # an open upper bound: double until the metric is on the other side
        hi = max(1.0, 2.0 * abs(lo))
        m_lo = evaluate(np.array([lo]))[0]
        for _ in range(40):
            m_hi = evaluate(np.array([hi]))[0]
            if (m_hi - target) * (m_lo - target) <= 0:
                break
            hi *= 2.0
        else:
            raise ParameterError(
                f"policy {policy.name!r}: target {metric}={target:g} not bracketed by doubling {parameter!r}: "
                f"metric at lo={lo:g} is {m_lo:g}, at hi={hi / 2:g} is {m_hi:g}; pass bounds"
            )
    best_value, best_gap, best_metric = lo, np.inf, np.nan
    for round_ in range(rounds):
        if decl.kind == "int":
            values = np.unique(np.round(np.linspace(lo, hi, points)).astype(np.int64))
        else:
            values = np.linspace(lo, hi, points)
        got = evaluate(values)
        gap = np.abs(got - target)
        i = int(np.argmin(gap))
        if gap[i] < best_gap:
            best_value, best_gap, best_metric = values[i], gap[i], got[i]
        side = np.sign(got - target)
        cross = np.flatnonzero(side[:-1] * side[1:] <= 0)
        if round_ == 0 and cross.size == 0 and gap[i] > _TIE * max(1.0, abs(target)):
            raise ParameterError(
                f"policy {policy.name!r}: target {metric}={target:g} is not reached for {parameter!r} in "
                f"[{values[0]:g}, {values[-1]:g}]: the {metric} there ranges over [{got.min():g}, {got.max():g}]; "
                "widen the bounds or change the target"
            )
        if cross.size == 0 or (decl.kind == "int" and values.size <= 2):
            break
        j = int(cross[0])
        lo, hi = float(values[j]), float(values[j + 1])
        if decl.kind == "int" and hi - lo <= 1:
            break
    value: Any = int(best_value) if decl.kind == "int" else float(best_value)
    chosen = type(policy)(**options, **{**dict(policy.params), parameter: value})
    held_metric = float("nan")
    if held is not None and len(held):
        held_result = replay(held, chosen, cost_model=cost_model, engine=engine)
        held_metric = _report_metric(held_result.report(), metric)
    return CalibrationResult(
        parameter=parameter,
        value=value,
        metric=metric,
        target=target,
        calibration=float(best_metric),
        held_out=held_metric,
        policy=chosen,
        evaluations=evaluations,
        sequences=(n, 0 if held is None else len(held)),
    )

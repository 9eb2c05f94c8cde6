"""Calibration: the parameter value that hits a target large-model share or cost ratio.

RouteLLM calibrates a router's threshold with a quantile of its scores on the user's data, which
is exact only for a memoryless rule. A stateful policy (a rolling window, hysteresis, a dwell)
routes each token on its history, so here the target is searched with replay itself: each round
replays candidate values as lanes of one batched run on the calibration split. The metric need
not be monotone (a window's share may dip, then rise): the search splits the intervals where it
changes until two neighbouring values bracket the target, then narrows that bracket. The chosen
value is then replayed on the held-out split, whose achieved share says how well the calibration
transfers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
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

_WIDTH = 1e-9
"""Relative width below which an interval of a float parameter is not split further."""


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


Runner = Callable[[list[dict[str, Any]]], np.ndarray]
"""Replays one configuration per entry (as lanes of one run) and returns each one's metric."""


class _Probe:
    """The metric at every value of the parameter replayed so far (each value replayed once)."""

    def __init__(self, run: Runner, base: dict[str, Any], parameter: str, kind: str, target: float) -> None:
        self.run, self.base, self.parameter, self.kind, self.target = run, base, parameter, kind, target
        self.seen: dict[float, float] = {}

    def add(self, values: Any) -> None:
        """Replay the values not seen yet, all in one batched run."""
        cast = int if self.kind == "int" else float
        new = sorted({cast(v) for v in values} - set(self.seen))
        if new:
            got = self.run([{**self.base, self.parameter: v} for v in new])
            self.seen.update(zip(new, (float(g) for g in got), strict=True))

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """Values replayed so far in increasing order, and the metric at each."""
        xs = np.array(sorted(self.seen), dtype=float)
        return xs, np.array([self.seen[self._key(x)] for x in xs])

    def _key(self, x: float) -> float:
        return int(x) if self.kind == "int" else float(x)

    def best(self) -> tuple[float, float]:
        """The value whose metric is closest to the target (the smallest such value), and its metric."""
        value = min(self.seen, key=lambda v: (abs(self.seen[v] - self.target), v))
        return value, self.seen[value]

    def tied(self) -> bool:
        """Whether some value already gives the target (up to `_TIE`)."""
        _, metric = self.best()
        return abs(metric - self.target) <= _TIE * max(1.0, abs(self.target))


def _inside(lo: float, hi: float, count: int, kind: str) -> list[float]:
    """Up to ``count`` values spread strictly between ``lo`` and ``hi`` (every integer if they fit)."""
    if kind == "int":
        if hi - lo - 1 <= count:
            return list(range(int(lo) + 1, int(hi)))
        inner = np.unique(np.round(np.linspace(lo, hi, count + 2)[1:-1]))
        return [float(v) for v in inner if lo < v < hi]
    if hi - lo <= _WIDTH * max(1.0, abs(lo), abs(hi)):
        return []
    return [float(v) for v in np.linspace(lo, hi, count + 2)[1:-1]]


def _crossings(xs: np.ndarray, ms: np.ndarray, target: float) -> np.ndarray:
    """Indices ``i`` where the metric is on opposite sides of the target at ``xs[i]`` and ``xs[i + 1]``."""
    side = np.sign(ms - target)
    return np.flatnonzero(side[:-1] * side[1:] < 0)


def _explore(xs: np.ndarray, ms: np.ndarray, target: float, points: int, kind: str) -> list[float]:
    """New values inside the intervals where the metric changes, those nearest the target first.

    A metric that is not monotone in the parameter (a window's share may dip before it rises)
    can reach the target between two values whose metrics are both on one side of it; only an
    interval whose ends differ is known to hold values not seen yet, so those are split.
    """
    gaps = [i for i in range(len(xs) - 1) if ms[i] != ms[i + 1] and _inside(xs[i], xs[i + 1], 1, kind)]
    gaps.sort(key=lambda i: min(abs(ms[i] - target), abs(ms[i + 1] - target)))
    gaps = gaps[:points]
    share = max(1, points // max(1, len(gaps)))
    return [v for i in gaps for v in _inside(xs[i], xs[i + 1], share, kind)]


def _search(probe: _Probe, lo: float, hi: float, points: int, rounds: int, label: str) -> tuple[float, float]:
    """The value whose metric is nearest the target: bracket it, then narrow the bracket.

    Until the target is bracketed (the metric on both sides of it at two neighbouring values),
    each round splits the intervals where the metric changes (up to ``rounds`` such rounds);
    then ``rounds`` rounds narrow the first bracket (an integer one stops once adjacent).
    """
    probe.add([lo, hi, *_inside(lo, hi, points - 2, probe.kind)])
    explored = narrowed = 0
    while not probe.tied():
        xs, ms = probe.sorted()
        cross = _crossings(xs, ms, probe.target)
        if cross.size:
            j = int(cross[0])
            new = _inside(xs[j], xs[j + 1], points, probe.kind)
            if narrowed >= rounds or not new:
                break
            narrowed += 1
        else:
            new = _explore(xs, ms, probe.target, points, probe.kind)
            if explored >= rounds or not new:
                raise _unreached(probe, lo, hi, label, complete=not new)
            explored += 1
        probe.add(new)
    return probe.best()


def _unreached(probe: _Probe, lo: float, hi: float, label: str, *, complete: bool) -> ParameterError:
    """The refusal of a target outside the metric's range over the values replayed."""
    _, ms = probe.sorted()
    metric = label.rsplit(" ", 1)[-1]
    note = "" if complete else ", or search finer with more points or rounds"
    return ParameterError(
        f"{label}={probe.target:g} is not reached for {probe.parameter!r} in [{lo:g}, {hi:g}]: the {metric} "
        f"at the {len(ms)} values replayed there ranges over [{ms.min():g}, {ms.max():g}]; "
        f"widen the bounds or change the target{note}"
    )


def _open_upper(probe: _Probe, lo: float, label: str) -> float:
    """An upper end for a parameter without one: double until the metric is on the other side."""
    hi = max(1.0, 2.0 * abs(lo))
    probe.add([lo])
    m_lo = probe.seen[probe._key(lo)]
    for _ in range(40):
        probe.add([hi])
        m_hi = probe.seen[probe._key(hi)]
        if (m_hi - probe.target) * (m_lo - probe.target) <= 0:
            return hi
        hi *= 2.0
    raise ParameterError(
        f"{label}={probe.target:g} not bracketed by doubling {probe.parameter!r}: "
        f"metric at lo={lo:g} is {m_lo:g}, at hi={hi / 2:g} is {m_hi:g}; pass bounds"
    )


def _local_runner(data: ReplayData, policy: Policy, metric: str, cost_model, parameter, engine: LocalEngine):
    """Replays configurations as lane tiles of one in-memory run, within the sweep memory budget."""
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

    return run, n


def _ray_runner(calib, policy: Policy, metric: str, cost_model, engine: RayEngine):
    """Replays configurations as one Ray Data pass over the calibration split each."""
    from ead_sdk.simulators.ray_engine import connect, ray_sweep_totals, trace_dataset
    from ead_sdk.simulators.sweep import replay_columns
    from ead_sdk.simulators.trace_signal import require_trace_signal

    connect(engine.address)
    meta = calib.meta if isinstance(calib, TraceSet) else read_meta(calib)
    require_trace_signal(policy.signal, meta, calib.source if isinstance(calib, TraceSet) else str(calib))
    dataset = trace_dataset(calib, replay_columns(meta, True, policy.signal))
    costs = cost_model or meta.cost_model()

    def run(configs: list[dict[str, Any]]) -> np.ndarray:
        totals = ray_sweep_totals(*dataset, policy, configs, cost_model=costs, batch_rows=engine.batch_rows)
        return np.array([_report_metric(t.report(costs), metric) for t in totals])

    return run, dataset[2]


def _numeric_parameter(policy: Policy, parameter: str) -> Any:
    """The declaration of ``parameter``, refused unless it takes any number in an interval."""
    declared = {p.name: p for p in type(policy).parameters}
    if parameter not in declared or declared[parameter].kind not in ("float", "int"):
        raise ParameterError(f"policy {policy.name!r}: {parameter!r} is not a numeric parameter")
    decl = declared[parameter]
    if decl.choices is not None:
        raise ParameterError(
            f"policy {policy.name!r}: {parameter!r} takes one of {list(decl.choices)}, not a continuous value; "
            "sweep its choices instead"
        )
    return decl


def _target(target_large_share: float | None, target_cost_ratio: float | None) -> tuple[str, float]:
    """``(metric, target)`` from the two keyword arguments, exactly one of which is given."""
    if (target_large_share is None) == (target_cost_ratio is None):
        raise ParameterError("give exactly one of target_large_share and target_cost_ratio")
    if target_large_share is not None:
        return "large_share", float(target_large_share)
    return "cost_ratio", float(target_cost_ratio)


def _split(traces: Any, held_out: float, seed: int) -> tuple[Any, Any]:
    """``(held, calib)``: the held-out split (``None`` when ``held_out`` is 0) and the rest."""
    if held_out <= 0:
        return None, traces
    held, calib = traces.split(held_out, seed)
    if not len(calib):
        raise ParameterError(f"held_out={held_out} leaves no sequence of {len(traces)} to calibrate on")
    return held, calib


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
        parameter: a numeric parameter (a threshold, a window, a dwell); the metric need not be
            monotone in it.
        target_large_share: the wanted share of tokens from the largest model, or
        target_cost_ratio: the wanted cost relative to the largest model alone.
        held_out: share of sequences held out (0: calibrate on everything, report ``nan``).
        seed: the split's seed.
        bounds: the search interval (default: the parameter's declared bounds; an open upper
            bound is found by doubling).
        points: candidate values replayed per round (one batched run each).
        rounds: rounds spent looking for a bracket of the target where the metric changes, and
            again narrowing it (integer parameters stop once the bracket is adjacent).
        cost_model: per-model costs (default: the trace's parameter counts).
        engine: `LocalEngine` (default) or `RayEngine` (each round one Ray Data pass over the
            calibration split; identical results). With a `RayEngine`, ``traces`` may also be the
            path of a Parquet dataset when ``held_out=0``.

    Returns:
        A `CalibrationResult`.

    Raises:
        ParameterError: an impossible request (a share outside [0, 1], a cost ratio <= 0,
            ``held_out`` outside [0, 1), a parameter with choices), or a target outside the range
            the metric reached over the values replayed (the message gives that range).
    """
    engine = as_engine(engine)
    policy = as_policy(policy)
    if not isinstance(traces, TraceSet) and (isinstance(engine, LocalEngine) or held_out > 0):
        raise ParameterError("calibrate splits a TraceSet in memory; a dataset path needs a RayEngine and held_out=0")
    metric, target = _target(target_large_share, target_cost_ratio)
    _check_request(metric, target, held_out, bounds, points, rounds)
    decl = _numeric_parameter(policy, parameter)
    held, calib = _split(traces, held_out, seed)
    base = {k: v for k, v in policy.params.items() if k != parameter}
    options = {"escalation": policy.escalation, "initial_model": policy.initial_model, "signal": policy.signal}
    if isinstance(engine, RayEngine):
        run, n = _ray_runner(calib, policy, metric, cost_model, engine)
    else:
        run, n = _local_runner(ReplayData.from_traces(calib), policy, metric, cost_model, parameter, engine)
    evaluations = 0

    def counted(configs: list[dict[str, Any]]) -> np.ndarray:
        nonlocal evaluations
        evaluations += len(configs)
        return run(configs)

    probe = _Probe(counted, base, parameter, decl.kind, target)
    label = f"policy {policy.name!r}: target {metric}"
    lo, hi = bounds if bounds is not None else (decl.low if decl.low is not None else 0.0, decl.high)
    if bounds is None:
        lo, hi = _valid_interval(policy, options, base, parameter, decl.kind, lo, hi)
    if hi is None:
        hi = _open_upper(probe, lo, label)
    value, achieved = _search(probe, lo, hi, points, rounds, label)
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
        calibration=achieved,
        held_out=held_metric,
        policy=chosen,
        evaluations=evaluations,
        sequences=(n, 0 if held is None else len(held)),
    )

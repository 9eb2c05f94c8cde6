"""Parameter sweeps: every configuration of a grid replayed in one batched run.

Lanes are configuration-major tiles of the sequences (lane ``c * n + i`` replays sequence ``i``
under configuration ``c``) and each lane carries its configuration's parameter values, so the
whole grid is one `replay`. Only parameters that cannot be given per lane (strings, such as a
threshold's unit) split the grid into one run per distinct value.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from ead_sdk.simulators.metrics import routellm_summary
from ead_sdk.simulators.replay import ReplayData, ReplayResult, replay

from ead_sdk.cost import CostModel
from ead_sdk.errors import ParameterError
from ead_sdk.registry import default_registry
from ead_sdk.traces.traceset import TraceSet

Grid = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]


def expand_grid(grid: Grid) -> list[dict[str, Any]]:
    """The configurations of ``grid``: a mapping of value lists (their product) or a list of dicts."""
    if isinstance(grid, Mapping):
        names = list(grid)
        for name in names:
            if isinstance(grid[name], (str, bytes)) or not isinstance(grid[name], Sequence):
                raise ParameterError(f"grid values for {name!r} must be a list, got {grid[name]!r}")
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grid[n] for n in names))]
    return [dict(c) for c in grid]


def lane_policy(policy_name: str, configs: Sequence[Mapping[str, Any]], n: int, **options: Any):
    """One policy whose lanes ``c * n .. (c + 1) * n - 1`` carry configuration ``c``."""
    cls = default_registry().get(policy_name).cls
    declared = {p.name: p for p in cls.parameters}
    params: dict[str, Any] = {}
    names = sorted({k for c in configs for k in c})
    for name in names:
        if name not in declared:
            raise ParameterError(f"policy {policy_name!r}: unknown parameter {name!r} in the grid")
        values = [c.get(name, declared[name].default) for c in configs]
        p = declared[name]
        if not p.lane or p.kind not in ("float", "int", "bool"):
            if len({repr(v) for v in values}) > 1:
                raise ParameterError(f"parameter {name!r} cannot vary per lane; split the grid on it")
            params[name] = values[0]
            continue
        dtype = {"float": np.float64, "int": np.int64, "bool": np.bool_}[p.kind]
        arr = np.asarray(values, dtype=dtype)
        params[name] = np.repeat(arr, n, axis=0)
    return cls(**options, **params)


def sweep(
    traces: TraceSet | ReplayData,
    policy_name: str,
    grid: Grid,
    *,
    escalation: str = "next",
    initial_model: int = 0,
    cost_model: CostModel | None = None,
    with_topk: bool | None = None,
    quality: str = "agreement",
) -> SweepResult:
    """Replay every configuration of ``grid`` of policy ``policy_name`` on ``traces``.

    Args:
        traces: the trace (a `ReplayData` prepared once is reused as is).
        policy_name: an installed policy.
        grid: ``{"param": [values...], ...}`` (their product) or a list of configurations.
        escalation: the escalation mode of every configuration.
        initial_model: the model every lane starts on.
        cost_model: per-model costs (default: the trace's parameter counts).
        with_topk: show policies the top-k (default: only when the trace has it).
        quality: the quality proxy of the Pareto frontier: ``"agreement"``, ``"loglik_per_token"``
            or ``"quality"`` (needs correctness labels).

    Returns:
        A `SweepResult`: `table` has one row per configuration (its parameters and aggregate
        metrics), `frontier` its Pareto-optimal rows (lower ``cost_ratio``, higher quality).
    """
    configs = expand_grid(grid)
    if not configs:
        raise ParameterError("the grid is empty")
    topk = with_topk is not False
    data = ReplayData.from_traces(traces, with_topk=topk)
    n = data.num_sequences
    fixed = _fixed_params(policy_name, configs)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(repr(sorted((k, c[k]) for k in fixed if k in c)), []).append(i)
    rows: list[dict[str, Any] | None] = [None] * len(configs)
    results: list[tuple[list[int], ReplayResult]] = []
    for members in groups.values():
        sub = [configs[i] for i in members]
        policy = lane_policy(policy_name, sub, n, escalation=escalation, initial_model=initial_model)
        seq = np.tile(np.arange(n), len(sub))
        result = replay(data, policy, cost_model=cost_model, lane_sequence=seq, with_topk=topk)
        results.append((members, result))
        for j, i in enumerate(members):
            summary = result.summary(np.arange(j * n, (j + 1) * n))
            rows[i] = {**{f"param.{k}": v for k, v in configs[i].items()}, **summary}
    table = pa.Table.from_pylist([dict(r) for r in rows if r is not None])
    return SweepResult(configs=configs, table=table, quality=quality, results=results)


def _fixed_params(policy_name: str, configs: Sequence[Mapping[str, Any]]) -> list[str]:
    cls = default_registry().get(policy_name).cls
    declared = {p.name: p for p in cls.parameters}
    names = {k for c in configs for k in c}
    per_lane = ("float", "int", "bool")
    return sorted(k for k in names if k in declared and (not declared[k].lane or declared[k].kind not in per_lane))


class SweepResult:
    """A sweep's table (one row per configuration) and its quality/cost Pareto frontier."""

    def __init__(self, configs: list[dict[str, Any]], table: pa.Table, quality: str, results: list):
        self.configs = configs
        self.table = table
        self.quality = quality
        self.results = results

    @property
    def frontier(self) -> pa.Table:
        """Rows not dominated by another (lower or equal ``cost_ratio`` and higher quality)."""
        return pareto_frontier(self.table, x="cost_ratio", y=self.quality)

    def routellm(self) -> dict[str, float]:
        """RouteLLM-style summary of quality versus large share over the grid (needs labels)."""
        if "quality" not in self.table.column_names:
            raise ParameterError("the trace has no correctness labels: no quality to summarise")
        share = self.table.column("large_share").to_numpy()
        q = self.table.column("quality").to_numpy()
        q_small = float(self.table.column("quality_small")[0].as_py())
        q_large = float(self.table.column("quality_large")[0].as_py())
        return routellm_summary(list(zip(share, q, strict=True)), q_small, q_large)

    def to_pandas(self):
        """The table as a pandas DataFrame (needs pandas)."""
        return self.table.to_pandas()

    def __repr__(self) -> str:
        return f"SweepResult({len(self.configs)} configurations, quality={self.quality!r})"


def pareto_frontier(table: pa.Table, x: str = "cost_ratio", y: str = "agreement") -> pa.Table:
    """The rows of ``table`` on the Pareto frontier of low ``x`` and high ``y``, sorted by ``x``."""
    if x not in table.column_names or y not in table.column_names:
        raise ParameterError(f"the table has no column {x!r} or {y!r}; columns: {table.column_names}")
    xs = np.asarray(table.column(x).to_numpy(zero_copy_only=False), float)
    ys = np.asarray(table.column(y).to_numpy(zero_copy_only=False), float)
    order = np.lexsort((-ys, xs))
    keep, best = [], -np.inf
    for i in order:
        if ys[i] > best:
            keep.append(i)
            best = ys[i]
    return table.take(pa.array(np.asarray(keep, np.int64)))

"""Parameter sweeps: every configuration of a grid replayed in one batched run.

Lanes are configuration-major tiles of the sequences (lane ``c * n + i`` replays sequence ``i``
under configuration ``c``) and each lane carries its configuration's parameter values, so the
whole grid is one `replay`. Only parameters that cannot be given per lane (strings, such as a
threshold's unit) split the grid into one run per distinct value.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ead_sdk.cost import CostModel
from ead_sdk.errors import ParameterError
from ead_sdk.interface import Policy
from ead_sdk.signal_spec import SignalSpec
from ead_sdk.simulators.engines import Engine, LocalEngine, RayEngine, as_engine
from ead_sdk.simulators.metrics import routellm_summary
from ead_sdk.simulators.replay import ReplayData, ReplayResult, replay
from ead_sdk.simulators.totals import Totals
from ead_sdk.simulators.trace_signal import require_trace_signal
from ead_sdk.specs import as_policy
from ead_sdk.traces.schema import TraceMeta
from ead_sdk.traces.traceset import TraceSet

MEMORY_BUDGET = 4 << 30
"""Default bytes of lane state a local in-memory sweep may hold (one replay of every lane)."""

MAX_CONFIGURATIONS = 1_000_000
"""The most configurations a grid may expand to (each is a row of the result)."""

Progress = Callable[[int, int], None]
"""A progress callback: ``(sequences done, sequences in all)``."""

Grid = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]


def expand_grid(grid: Grid) -> list[dict[str, Any]]:
    """The configurations of ``grid``: a mapping of value lists (their product) or a list of dicts."""
    if isinstance(grid, Mapping):
        names = list(grid)
        for name in names:
            if isinstance(grid[name], (str, bytes)) or not isinstance(grid[name], Sequence):
                raise ParameterError(f"grid values for {name!r} must be a list, got {grid[name]!r}")
        size = math.prod(len(grid[n]) for n in names)
        if size > MAX_CONFIGURATIONS:
            raise ParameterError(
                f"the grid has {size:,} configurations, more than {MAX_CONFIGURATIONS:,}: split it into several sweeps"
            )
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grid[n] for n in names))]
    return [dict(c) for c in grid]


def lane_policy(base: Policy, configs: Sequence[Mapping[str, Any]], n: int) -> Policy:
    """``base`` with lanes ``c * n .. (c + 1) * n - 1`` carrying configuration ``c``.

    Parameters a configuration does not name keep ``base``'s values, as do its escalation mode,
    initial model and signal; the class is ``base``'s own, registered or not.
    """
    cls, label = type(base), base.name
    declared = {p.name: p for p in cls.parameters}
    params: dict[str, Any] = dict(base.params)
    names = sorted({k for c in configs for k in c})
    for name in names:
        if name not in declared:
            raise ParameterError(f"policy {label!r}: unknown parameter {name!r} in the grid")
        values = [c.get(name, base.params[name]) for c in configs]
        p = declared[name]
        if not p.lane or p.kind not in ("float", "int", "bool"):
            if len({repr(v) for v in values}) > 1:
                raise ParameterError(f"parameter {name!r} cannot vary per lane; split the grid on it")
            params[name] = values[0]
            continue
        dtype = {"float": np.float64, "int": np.int64, "bool": np.bool_}[p.kind]
        arr = np.asarray([p.validate(label, v) for v in values], dtype=dtype)  # no silent casts
        params[name] = np.repeat(arr, n, axis=0)
    return cls(escalation=base.escalation, initial_model=base.initial_model, signal=base.signal, **params)


def sweep(
    traces: TraceSet | ReplayData | str | os.PathLike[str],
    policy: Policy | Mapping[str, Any] | str,
    grid: Grid,
    *,
    cost_model: CostModel | None = None,
    with_topk: bool | None = None,
    quality: str = "agreement",
    progress: Progress | None = None,
    memory_budget: int = MEMORY_BUDGET,
    engine: Engine | None = None,
) -> SweepResult:
    """Replay every configuration of ``grid`` of ``policy`` on ``traces``.

    Args:
        traces: the trace (a `ReplayData` prepared once is reused as is), or the path of a trace
            file or Parquet dataset, streamed ``engine.batch_rows`` sequences at a time.
        policy: the policy whose parameters the grid varies: a policy object, a spec or an
            installed policy's name. Parameters the grid does not name, the escalation mode and
            the initial model are the policy's.
        grid: ``{"param": [values...], ...}`` (their product) or a list of configurations.
        cost_model: per-model costs (default: the trace's parameter counts).
        with_topk: show policies the top-k (default: only when the trace has it).
        quality: the quality proxy of the Pareto frontier: ``"agreement"``, ``"loglik_per_token"``
            or ``"quality"`` (needs correctness labels).
        progress: called with ``(sequences done, sequences in all)`` as batches finish.
        memory_budget: bytes of lane state an in-memory local sweep may hold (every
            configuration's lanes are replayed at once); a larger grid is refused with
            `ParameterError` before any replay. Streamed and Ray runs are bounded by batches.
        engine: `LocalEngine` (default) or `RayEngine` (over a Parquet dataset or a `TraceSet`);
            both give identical figures.

    Returns:
        A `SweepResult`: `table` has one row per configuration (its parameters and aggregate
        metrics), `frontier` its Pareto-optimal rows (lower ``cost_ratio``, higher quality).
        Streamed and Ray runs keep no per-lane results (`results` is empty; `totals` holds the sums).
    """
    engine = as_engine(engine)
    base = as_policy(policy)
    configs = expand_grid(grid)
    if not configs:
        raise ParameterError("the grid is empty")
    topk = with_topk is not False
    if isinstance(engine, RayEngine):
        from ead_sdk.simulators.ray_engine import ray_sweep

        return ray_sweep(
            traces,
            base,
            configs,
            cost_model=cost_model,
            with_topk=topk,
            quality=quality,
            address=engine.address,
            batch_rows=engine.batch_rows,
            progress=progress,
        )
    if isinstance(traces, (str, os.PathLike)):
        return _sweep_streamed(traces, base, configs, cost_model, topk, quality, progress, engine)
    data = ReplayData.from_traces(traces, with_topk=topk)
    _check_memory(data, base, configs, memory_budget)
    return _sweep_in_memory(data, base, configs, cost_model, topk, quality, engine)


def _check_memory(data: ReplayData, base: Policy, configs: list[dict[str, Any]], memory_budget: int) -> None:
    need = estimate_sweep_bytes(data, base, configs)
    if need > memory_budget:
        raise ParameterError(
            f"the sweep of {len(configs):,} configurations x {data.num_sequences:,} sequences x {data.t_max:,} "
            f"positions would hold about {need / 2**30:.3g} GiB of lane state in memory (budget "
            f"{memory_budget / 2**30:.3g} GiB): split the grid, pass the trace's path (streamed in batches) "
            "or use a RayEngine"
        )


def _sweep_in_memory(
    data: ReplayData,
    base: Policy,
    configs: list[dict[str, Any]],
    cost_model: CostModel | None,
    with_topk: bool,
    quality: str,
    engine: LocalEngine,
) -> SweepResult:
    """Every configuration's lanes in one replay per group of configurations; per-lane results kept."""
    n = data.num_sequences
    rows: list[dict[str, Any] | None] = [None] * len(configs)
    results: list[tuple[list[int], ReplayResult]] = []
    for members in config_groups(base, configs):
        sub = [configs[i] for i in members]
        policy = lane_policy(base, sub, n)
        seq = np.tile(np.arange(n), len(sub))
        result = replay(data, policy, cost_model=cost_model, lane_sequence=seq, with_topk=with_topk, engine=engine)
        results.append((members, result))
        for j, i in enumerate(members):
            summary = result.summary(np.arange(j * n, (j + 1) * n))
            rows[i] = {**{f"param.{k}": v for k, v in configs[i].items()}, **summary}
    table = pa.Table.from_pylist([dict(r) for r in rows if r is not None])
    return SweepResult(configs=configs, table=table, quality=quality, results=results)


def estimate_sweep_bytes(data: ReplayData, base: Policy, configs: Sequence[Mapping[str, Any]]) -> int:
    """Bytes an in-memory sweep of ``configs`` holds: per lane, its routes, ledger and policy state.

    Each configuration replays every sequence of ``data`` (one lane each). A lane keeps two int8
    routes per position, its cost ledger and its policy state; the state's size is measured on a
    few sample lanes per run (those with the extreme values of each parameter, since a lane's
    state, such as a window history, is sized by the largest value in its run).
    """
    n, m = data.num_sequences, data.meta.num_models
    fixed_per_lane = 2 * data.t_max + 49 * m + 16 * int(data.meta.k) + 128  # routes, ledger, step buffers
    total = 0
    for members in config_groups(base, configs):
        group = [configs[i] for i in members]
        sample = _extreme_configs(group)
        policy = lane_policy(base, sample, 1)
        import array_api_compat.numpy as xp

        state_per_lane = _nbytes(policy.init_state(len(sample), xp)) / len(sample)
        total += len(group) * n * (fixed_per_lane + math.ceil(state_per_lane))
    return total


def _extreme_configs(group: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The first configuration and those holding each numeric parameter's least and greatest value."""
    picks = {0}
    for name in {k for c in group for k in c}:
        keyed = [(c[name], i) for i, c in enumerate(group) if isinstance(c.get(name), (int, float, np.number))]
        if keyed:
            picks.update((min(keyed)[1], max(keyed)[1]))
    return [group[i] for i in sorted(picks)]


def _nbytes(tree: Any) -> int:
    """Bytes of the arrays in a (nested) policy state."""
    if isinstance(tree, Mapping):
        return sum(_nbytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_nbytes(v) for v in tree)
    return int(getattr(tree, "nbytes", 0))


def config_groups(base: Policy, configs: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Indices of ``configs`` that can share one batched run (equal non-per-lane parameters)."""
    fixed = _fixed_params(base, configs)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(repr(sorted((k, c[k]) for k in fixed if k in c)), []).append(i)
    return list(groups.values())


def replay_columns(meta: TraceMeta, with_topk: bool, signal: SignalSpec | None = None) -> list[str]:
    """The trace columns a replay reads (column selection for streamed and Ray runs).

    A top-k ``signal`` reads the top-k log-probabilities even when policies are not shown them.
    """
    cols = ["prompt_ids", "token_ids", "entropy", "token_logprob"]
    if meta.k > 0:
        cols.append("top_ids")
        if with_topk or (signal is not None and not signal.exact):
            cols.append("top_logprobs")
    return [*cols, "correct"]


def sweep_totals(
    data: ReplayData,
    base: Policy,
    configs: Sequence[Mapping[str, Any]],
    *,
    cost_model: CostModel | None = None,
    with_topk: bool = True,
    max_lanes: int = 1 << 16,
    engine: LocalEngine | None = None,
) -> list[Totals]:
    """The `Totals` of every configuration of ``base`` on the sequences of ``data`` (one batch of a sweep).

    Configurations run as lanes of batched replays of at most ``max_lanes`` lanes each, so the
    memory of a batch is bounded whatever the grid size; ``engine`` as in `replay`.
    """
    n = data.num_sequences
    out: list[Totals] = [Totals(data.meta.num_models) for _ in configs]
    if n == 0:
        return out
    per_run = max(1, max_lanes // n)
    for members in config_groups(base, configs):
        for start in range(0, len(members), per_run):
            chunk = members[start : start + per_run]
            policy = lane_policy(base, [configs[i] for i in chunk], n)
            seq = np.tile(np.arange(n), len(chunk))
            result = replay(data, policy, cost_model=cost_model, lane_sequence=seq, with_topk=with_topk, engine=engine)
            for j, i in enumerate(chunk):
                out[i] = Totals.of_lanes(result, np.arange(j * n, (j + 1) * n))
    return out


def result_from_totals(
    configs: list[dict[str, Any]], totals: Sequence[Totals], cost_model: CostModel, quality: str
) -> SweepResult:
    """A `SweepResult` whose rows are the summaries of merged per-configuration totals."""
    rows = [
        {**{f"param.{k}": v for k, v in c.items()}, **t.summary(cost_model)}
        for c, t in zip(configs, totals, strict=True)
    ]
    table = pa.Table.from_pylist(rows)
    return SweepResult(configs=configs, table=table, quality=quality, results=[], totals=list(totals))


def check_grid(base: Policy, configs: Sequence[Mapping[str, Any]]) -> None:
    """Build every run's policy once on one lane: a bad grid fails before any batch is read."""
    for members in config_groups(base, configs):
        lane_policy(base, [configs[i] for i in members], 1)


def _sweep_streamed(
    path: str | os.PathLike[str],
    base: Policy,
    configs: list[dict[str, Any]],
    cost_model: CostModel | None,
    with_topk: bool,
    quality: str,
    progress: Progress | None,
    engine: LocalEngine,
) -> SweepResult:
    """The local engine over a trace on disk: ``engine.batch_rows`` sequences at a time, totals merged."""
    from ead_sdk.traces.reader import iter_trace_batches, read_meta

    meta = read_meta(path)
    require_trace_signal(base.signal, meta, str(path))
    check_grid(base, configs)
    cost_model = cost_model or meta.cost_model()
    total = _count_rows(path)
    merged = [Totals(meta.num_models) for _ in configs]
    done = 0
    for batch in iter_trace_batches(path, replay_columns(meta, with_topk, base.signal), batch_rows=engine.batch_rows):
        data = ReplayData.from_traces(batch, with_topk=with_topk)
        parts = sweep_totals(data, base, configs, cost_model=cost_model, with_topk=with_topk, engine=engine)
        for acc, part in zip(merged, parts, strict=True):
            acc.merge(part)
        done += len(batch)
        if progress is not None:
            progress(done, total)
    return result_from_totals(configs, merged, cost_model, quality)


def _count_rows(path: str | os.PathLike[str]) -> int:
    """Sequences in a trace on disk, from Parquet footers when it is Parquet (-1 if unknown)."""
    import pyarrow.parquet as pq

    from ead_sdk.traces.reader import _dataset_files, detect_format

    fmt = detect_format(path)
    if fmt == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "parquet-dataset":
        return sum(pq.ParquetFile(f).metadata.num_rows for f in _dataset_files(Path(path)))
    return -1


def _fixed_params(base: Policy, configs: Sequence[Mapping[str, Any]]) -> list[str]:
    declared = {p.name: p for p in type(base).parameters}
    names = {k for c in configs for k in c}
    per_lane = ("float", "int", "bool")
    return sorted(k for k in names if k in declared and (not declared[k].lane or declared[k].kind not in per_lane))


class SweepResult:
    """A sweep's table (one row per configuration) and its quality/cost Pareto frontier."""

    def __init__(
        self,
        configs: list[dict[str, Any]],
        table: pa.Table,
        quality: str,
        results: list,
        totals: list[Totals] | None = None,
    ):
        self.configs = configs
        self.table = table
        self.quality = quality
        self.results = results
        self.totals = totals

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
    for name in (x, y):
        if name not in table.column_names:
            raise ParameterError(f"the table has no column {name!r}; columns: {', '.join(table.column_names)}")
    xs = np.asarray(table.column(x).to_numpy(zero_copy_only=False), float)
    ys = np.asarray(table.column(y).to_numpy(zero_copy_only=False), float)
    order = np.lexsort((-ys, xs))
    keep, best = [], -np.inf
    for i in order:
        if ys[i] > best:
            keep.append(i)
            best = ys[i]
    return table.take(pa.array(np.asarray(keep, np.int64)))

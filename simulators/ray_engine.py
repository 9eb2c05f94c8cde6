"""The Ray engine: replay, sweeps and calibration over Ray Data, for traces beyond one machine.

Ray Data reads the Parquet trace dataset with column selection (only the columns replay reads),
and ``map_batches`` runs the same batched kernel as the local engine (`sweep_totals`) on batches
of whole rows; a row is a whole sequence, so no batch splits one. Each batch returns its exact
per-configuration `Totals` as a small Arrow table; the driver merges them (integer sums and exact
float partials, in any order) and computes every ratio once with `Totals.summary`, so the figures
are identical to the local engine's on the same data and grid.

Workers receive JSON (trace metadata, policy specs, grids) and Arrow tables, never serialised
Python objects of ours (Ray itself serialises the task function by reference to this module, so
every worker needs ``ead-sdk[ray]`` and the policy plugins installed). Needs the ``ray`` extra.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ead_sdk.cost import CostModel
from ead_sdk.errors import EadError, ParameterError, RayConnectionError, RayUnavailableError, TraceError
from ead_sdk.interface import Policy
from ead_sdk.simulators.ray_wire import error_table, merge_table, totals_table
from ead_sdk.simulators.totals import Totals
from ead_sdk.simulators.trace_signal import require_trace_signal
from ead_sdk.traces.schema import TraceMeta
from ead_sdk.traces.traceset import TraceSet

if TYPE_CHECKING:
    from ead_sdk.simulators.replay import ReplayResult
    from ead_sdk.simulators.sweep import Progress, SweepResult

Source = TraceSet | str | os.PathLike[str]


def connect(address: str | None = None) -> ModuleType:
    """Import Ray and join (or start) a cluster; an already initialised Ray is reused as is.

    Joining a cluster presents this machine's Ray token when there is one (a head started by
    ``ray start`` with a token refuses clients without it); a cluster that cannot be joined
    raises `RayConnectionError` saying what to set.

    Args:
        address: ``"auto"``, ``"ray://host:10001"``, ``"host:6379"``... (default: ``RAY_ADDRESS``
            when set, else a local instance on this machine's CPUs).
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayUnavailableError(f"RayEngine needs Ray Data: pip install 'ead-sdk[ray]' ({exc})") from None
    if not ray.is_initialized():
        joining = address is not None or bool(os.environ.get("RAY_ADDRESS"))
        if joining:
            _use_token_auth_if_available()
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            ray.shutdown()  # a half-made connection would be "reused as is" by the next call
            if not joining:
                raise
            raise RayConnectionError(_connection_message(address, exc)) from None
    return ray


RAY_TOKEN_HELP = (
    "a cluster started by `ray start` with a token (recent Ray turns token authentication on whenever "
    "one exists, e.g. ~/.ray/auth_token on the head node) admits only clients that present it: set "
    "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or the file ~/.ray/auth_token; "
    "`ray get-auth-token` on the head node prints it)"
)


def _ray_token_available() -> bool:
    """Whether this process can present a Ray authentication token (the places Ray looks, in its order)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).expanduser().is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()


def _use_token_auth_if_available() -> None:
    """Present the local token to the cluster being joined, as Ray itself does for ``address="auto"``.

    Ray only turns token mode on by itself for a cluster it finds on this machine; with an explicit
    address a client without ``RAY_AUTH_MODE=token`` is refused by a cluster started with a token. A
    token sent to a cluster without authentication is ignored, so presenting it is always safe. An
    explicit ``RAY_AUTH_MODE`` is respected as given.
    """
    if os.environ.get("RAY_AUTH_MODE") is not None or not _ray_token_available():
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its configuration; refresh it so that this process sees token mode
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):  # a Ray without token authentication: nothing to refresh
        pass


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (Ray wraps its authentication error twice)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _connection_message(address: str | None, exc: BaseException) -> str:
    where = address or os.environ.get("RAY_ADDRESS")
    reason = " ".join(str(exc).split())[:300]
    auth = any(type(e).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(e) for e in _chain(exc))
    if auth:
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        return f"the Ray cluster at {where} refused this client's token (RAY_AUTH_MODE={mode}): {RAY_TOKEN_HELP}"
    return (
        f"cannot connect to the Ray cluster at {where} ({type(exc).__name__}: {reason}); is it started "
        f"(`ray start --head`) and reachable from here? If it uses token authentication: {RAY_TOKEN_HELP}"
    )


def trace_dataset(source: Source | Any, columns: Sequence[str] | None = None):
    """A Ray dataset of the trace rows (only ``columns``), its metadata and its row count.

    Args:
        source: the path of a Parquet trace file or dataset directory (every worker must be able
            to read it at the same path: a shared file system), or a `TraceSet` in memory (sent to
            Ray's object store from the driver).
        columns: the columns to read (``None``: all).

    Returns:
        ``(dataset, meta, rows)``.
    """
    import ray.data

    if isinstance(source, TraceSet):
        table = source.table if columns is None else source.table.select(list(columns))
        return ray.data.from_arrow(table), source.meta, len(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TraceError(f"RayEngine reads a Parquet trace path or a TraceSet, got {type(source).__name__}")
    import pyarrow.parquet as pq

    from ead_sdk.traces.reader import _dataset_files, detect_format, read_meta

    path = Path(source).absolute()  # Ray's workers do not share the driver's current directory
    fmt = detect_format(path)
    if fmt not in ("parquet", "parquet-dataset"):
        raise TraceError(
            f"{path}: RayEngine reads Parquet; turn the {fmt} into a dataset first (ead_sdk.traces.compact)"
        )
    meta = read_meta(path)
    files = _dataset_files(path) if fmt == "parquet-dataset" else [path]
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    ds = ray.data.read_parquet(str(path), file_extensions=["parquet"])
    if columns is not None:
        ds = ds.select_columns(list(columns))
    return ds, meta, rows


def _cost_json(cost_model: CostModel) -> str:
    return json.dumps(cost_model.as_dict())


def _cost_from_json(text: str) -> CostModel:
    return CostModel(**json.loads(text))


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise ParameterError(f"grid value {value!r} is not a number, string or bool")


# -- the batch kernels (run on workers) -------------------------------------------------------
def sweep_batch(
    table: pa.Table,
    *,
    meta_json: str,
    spec_json: str,
    configs_json: str,
    cost_json: str,
    with_topk: bool,
    max_lanes: int,
    source: str = "<ray batch>",
) -> pa.Table:
    """Worker side of a sweep: the `Totals` of every configuration on one batch of sequences."""
    from ead_sdk.simulators.engines import LocalEngine
    from ead_sdk.simulators.replay import ReplayData
    from ead_sdk.simulators.sweep import sweep_totals
    from ead_sdk.specs import load_policy

    try:
        meta = TraceMeta.from_json(meta_json, source=source)
        configs = json.loads(configs_json)
        data = ReplayData.from_traces(_checked(meta, table, source), with_topk=with_topk)
        totals = sweep_totals(
            data,
            load_policy(json.loads(spec_json)),
            configs,
            cost_model=_cost_from_json(cost_json),
            with_topk=with_topk,
            max_lanes=max_lanes,
            engine=LocalEngine(threads=1),  # a Ray worker holds one CPU: its parallelism is Ray's
        )
    except EadError as exc:  # reported to the driver as data, raised there as its own class
        return error_table(exc)
    return totals_table(totals, list(range(len(configs))))


def replay_batch(
    table: pa.Table, *, meta_json: str, spec_json: str, cost_json: str, with_topk: bool, source: str = "<ray batch>"
) -> pa.Table:
    """Worker side of a replay: the `Totals` of one policy (built from its spec) on one batch."""
    from ead_sdk.simulators.engines import LocalEngine
    from ead_sdk.simulators.replay import ReplayData, replay
    from ead_sdk.specs import load_policy

    try:
        meta = TraceMeta.from_json(meta_json, source=source)
        data = ReplayData.from_traces(_checked(meta, table, source), with_topk=with_topk)
        if data.num_sequences == 0:
            return totals_table([Totals(meta.num_models)], [0])
        policy = load_policy(json.loads(spec_json))
        # A Ray worker holds one CPU: its parallelism is Ray's, not threads.
        engine = LocalEngine(threads=1)
        result = replay(data, policy, cost_model=_cost_from_json(cost_json), with_topk=with_topk, engine=engine)
    except EadError as exc:  # reported to the driver as data, raised there as its own class
        return error_table(exc)
    return totals_table([Totals.of_lanes(result)], [0])


def _checked(meta: TraceMeta, table: pa.Table, source: str) -> TraceSet:
    """The batch as a `TraceSet`, every value checked as the local reader checks it."""
    from ead_sdk.traces.validate import validate_batch

    where = f"{source} (a Ray batch; rows counted within it)"
    first = 0
    for batch in table.to_batches():
        validate_batch(meta, batch, where, first)
        first += batch.num_rows
    return TraceSet(meta, table, source)


# -- the driver side ---------------------------------------------------------------------------
def _run(ds, fn, kwargs: dict[str, Any], n_configs: int, rows: int, batch_rows: int, progress) -> list[Totals]:
    """Map ``fn`` over ``ds`` in batches of ``batch_rows`` sequences and merge the totals."""
    if batch_rows < 1:
        raise ParameterError(f"batch_rows must be >= 1, got {batch_rows}")
    out = ds.map_batches(fn, batch_format="pyarrow", batch_size=batch_rows, zero_copy_batch=True, fn_kwargs=kwargs)
    merged: dict[int, Totals] = {}
    lanes = 0
    for part in out.iter_batches(batch_format="pyarrow", batch_size=None):
        lanes += merge_table(part, merged)  # raises the error a worker reported, as its own class
        if progress is not None:
            progress(lanes // max(n_configs, 1), rows)
    return [merged[c] for c in range(n_configs)] if merged else []


def ray_sweep_totals(
    ds,
    meta: TraceMeta,
    rows: int,
    base: Policy,
    configs: list[dict[str, Any]],
    *,
    cost_model: CostModel,
    with_topk: bool = True,
    batch_rows: int = 1024,
    max_lanes: int = 1 << 16,
    progress: Progress | None = None,
    source: str = "<ray dataset>",
) -> list[Totals]:
    """The merged `Totals` of every configuration of ``base`` over a Ray dataset of trace rows.

    ``base`` travels as its spec and is rebuilt on each worker from the plugins installed there.
    """
    kwargs = {
        "meta_json": meta.to_json(),
        "spec_json": json.dumps(_scalar_spec(base)),
        "configs_json": json.dumps(configs, default=_json_value),
        "cost_json": _cost_json(cost_model),
        "with_topk": bool(with_topk),
        "max_lanes": int(max_lanes),
        "source": source,
    }
    totals = _run(ds, sweep_batch, kwargs, len(configs), rows, batch_rows, progress)
    return totals or [Totals(meta.num_models) for _ in configs]


def ray_sweep(
    source: Source,
    base: Policy,
    configs: list[dict[str, Any]],
    *,
    cost_model: CostModel | None = None,
    with_topk: bool = True,
    quality: str = "agreement",
    address: str | None = None,
    batch_rows: int = 1024,
    progress: Progress | None = None,
) -> SweepResult:
    """`ead_sdk.simulators.sweep` on Ray Data (see it for the arguments); identical figures."""
    from ead_sdk.simulators.sweep import check_grid, replay_columns, result_from_totals

    check_grid(base, configs)
    connect(address)
    meta = source.meta if isinstance(source, TraceSet) else _meta_of(source)
    require_trace_signal(base.signal, meta, _name(source))
    ds, meta, rows = trace_dataset(source, replay_columns(meta, with_topk, base.signal))
    cost_model = cost_model or meta.cost_model()
    cost_model.check_models(meta.num_models, "the trace")
    totals = ray_sweep_totals(
        ds,
        meta,
        rows,
        base,
        configs,
        cost_model=cost_model,
        with_topk=with_topk,
        batch_rows=batch_rows,
        progress=progress,
        source=_name(source),
    )
    return result_from_totals(configs, totals, cost_model, quality)


def _scalar_spec(policy: Policy) -> dict[str, Any]:
    """The spec a worker rebuilds ``policy`` from; per-lane parameters cannot travel in one."""
    from ead_sdk.params import is_lane_array

    for name, value in policy.params.items():
        if is_lane_array(value):
            raise ParameterError(
                f"policy {policy.name!r}: parameter {name!r} is per-lane; a RayEngine replays scalar "
                "parameters (use sweep for a grid)"
            )
    return policy.spec()


def ray_replay(
    source: Source,
    policy: Policy,
    *,
    cost_model: CostModel | None = None,
    with_topk: bool = True,
    address: str | None = None,
    batch_rows: int = 1024,
    progress: Progress | None = None,
    dataset: tuple[Any, TraceMeta, int] | None = None,
) -> ReplayResult:
    """`ead_sdk.simulators.replay` on Ray Data: the summed figures, equal to the local ones.

    The policy travels as its JSON spec and is rebuilt on each worker, so its parameters must be
    scalars (per-lane arrays belong to a sweep) and its plugin installed on every worker.
    """
    from ead_sdk.simulators.replay import ReplayResult
    from ead_sdk.simulators.sweep import replay_columns

    spec = _scalar_spec(policy)
    connect(address)
    if dataset is None:
        meta = source.meta if isinstance(source, TraceSet) else _meta_of(source)
        dataset = trace_dataset(source, replay_columns(meta, with_topk, policy.signal))
    ds, meta, rows = dataset
    policy.check_models(meta.num_models)
    require_trace_signal(policy.signal, meta, _name(source))
    cost_model = cost_model or meta.cost_model()
    cost_model.check_models(meta.num_models, "the trace")
    kwargs = {
        "meta_json": meta.to_json(),
        "spec_json": json.dumps(spec),
        "cost_json": _cost_json(cost_model),
        "with_topk": bool(with_topk),
        "source": _name(source),
    }
    totals = _run(ds, replay_batch, kwargs, 1, rows, batch_rows, progress)
    return ReplayResult(
        cost_model=cost_model,
        policy_spec=spec,
        num_models=meta.num_models,
        totals=totals[0] if totals else Totals(meta.num_models),
    )


def _name(source: Source | Any) -> str:
    return source.source if isinstance(source, TraceSet) else str(source)


def _meta_of(source: Source | Any) -> TraceMeta:
    if not isinstance(source, (str, os.PathLike)):
        raise TraceError(f"RayEngine reads a Parquet trace path or a TraceSet, got {type(source).__name__}")
    from ead_sdk.traces.reader import read_meta

    return read_meta(source)


__all__ = [
    "RayUnavailableError",
    "connect",
    "ray_replay",
    "ray_sweep",
    "ray_sweep_totals",
    "replay_batch",
    "sweep_batch",
    "trace_dataset",
]

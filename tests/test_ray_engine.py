"""The Ray engine gives the local engine's figures exactly, on a small local Ray instance.

One Ray instance (2 CPUs) serves the whole test session and is shut down at its end.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ead_sdk.interface import ESCALATIONS

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed (pip install 'ead-sdk[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ead-sdk[ray]')")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ead_sdk import load_policy  # noqa: E402
from ead_sdk.errors import EadError, ParameterError, TraceError  # noqa: E402
from ead_sdk.simulators import RayEngine, calibrate, replay, sweep, synthetic_traces  # noqa: E402
from ead_sdk.traces import compact, write_traces  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance for the session (2 CPUs, no dashboard), shut down afterwards."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


def same_tables(a, b) -> bool:
    """Exact equality of two sweep tables, row by row (NaN equals NaN, no tolerance)."""
    ra, rb = a.to_pylist(), b.to_pylist()
    if len(ra) != len(rb):
        return False
    for x, y in zip(ra, rb, strict=True):
        if x.keys() != y.keys():
            return False
        for k in x:
            if isinstance(x[k], float) and isinstance(y[k], float) and math.isnan(x[k]) and math.isnan(y[k]):
                continue
            if x[k] != y[k]:
                return False
    return True


def dataset(traces, path, rows_per_file: int = 7):
    """``traces`` written as an IPC stream and compacted into a Parquet dataset of several files."""
    write_traces(traces, path.with_suffix(".arrow"), format="ipc")
    return compact(path.with_suffix(".arrow"), path, rows_per_file=rows_per_file, row_group_rows=3)


GRID = {"threshold": [0.4, 1.1, 2.5], "window": [1, 4], "unit": ["nats", "bits"]}


@settings(max_examples=3, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    batch_rows=st.integers(1, 9),
    escalation=st.sampled_from(ESCALATIONS),
)
def test_ray_sweep_equals_the_local_sweep_exactly(ray_local, tmp_path_factory, seed, batch_rows, escalation):
    """Property: on the same Parquet dataset and grid, Ray Data (any batch size, several files,
    batches merged in whatever order they finish) gives the local engine's table exactly."""
    traces = synthetic_traces(17, (0, 60), seed=seed)
    ds = dataset(traces, tmp_path_factory.mktemp("ray") / "ds")
    base = load_policy({"policy": "rolling_entropy", "escalation": escalation})
    local = sweep(traces, base, GRID)
    seen = []
    on_ray = sweep(
        ds,
        base,
        GRID,
        engine=RayEngine(batch_rows=batch_rows),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert same_tables(local.table, on_ray.table)
    assert same_tables(local.frontier, on_ray.frontier)
    assert seen[-1] == (17, 17)


def test_ray_sweep_of_a_ladder_from_a_trace_set_in_memory(ray_local):
    traces = synthetic_traces(11, (0, 40), num_models=3, seed=4)
    grid = {"threshold": [[0.4, 1.5], [1.0, 2.2]], "window": [2], "unit": ["nats"]}
    base = load_policy({"policy": "rolling_entropy", "escalation": "retry"})
    local = sweep(traces, base, grid)
    on_ray = sweep(traces, base, grid, engine=RayEngine(batch_rows=4))
    assert same_tables(local.table, on_ray.table)
    assert on_ray.routellm() == local.routellm()


def test_ray_replay_equals_the_local_replay(ray_local, tmp_path):
    traces = synthetic_traces(13, (0, 50), seed=9)
    ds = dataset(traces, tmp_path / "ds", rows_per_file=5)
    policy = load_policy({"policy": "hysteresis", "params": {"upper": 1.2, "lower": 0.5, "unit": "nats"}})
    local = replay(traces, policy)
    on_ray = replay(ds, policy, engine=RayEngine(batch_rows=3))
    assert on_ray.report() == local.report()
    assert on_ray.summary().keys() == local.summary().keys()
    for k, v in local.summary().items():
        assert on_ray.summary()[k] == v or (math.isnan(v) and math.isnan(on_ray.summary()[k])), k


def test_a_relative_dataset_path_is_read_from_the_callers_directory(ray_local, tmp_path, monkeypatch):
    """Ray's workers run elsewhere: the driver resolves a relative path before handing it over."""
    traces = synthetic_traces(9, (0, 30), seed=4)
    dataset(traces, tmp_path / "ds", rows_per_file=4)
    monkeypatch.chdir(tmp_path)
    policy = load_policy({"policy": "rolling_entropy", "params": {"window": 2, "threshold": 1.0, "unit": "nats"}})
    assert replay("ds", policy, engine=RayEngine(batch_rows=4)).report() == replay(traces, policy).report()


def test_ray_replay_of_a_ladder_policy_equals_the_local_replay(ray_local):
    traces = synthetic_traces(7, (0, 30), num_models=3, seed=8)
    policy = load_policy({"policy": "rolling_entropy", "params": {"threshold": [0.6, 1.8], "unit": "nats"}})
    assert replay(traces, policy, engine=RayEngine(batch_rows=2)).report() == replay(traces, policy).report()


def test_ray_replay_with_catch_up_priced_apart_equals_the_local_replay(ray_local):
    """A cost model with its own catch-up prices travels to the workers intact."""
    from ead_sdk import CostModel

    traces = synthetic_traces(9, (0, 40), seed=4)
    costs = CostModel.from_seconds_per_token([0.002, 0.02], catchup_seconds=[0.0001, 0.001])
    policy = load_policy({"policy": "rolling_entropy", "params": {"threshold": 1.0, "unit": "nats"}})
    local = replay(traces, policy, cost_model=costs)
    assert replay(traces, policy, cost_model=costs, engine=RayEngine(batch_rows=4)).report() == local.report()
    flat = CostModel.from_seconds_per_token([0.002, 0.02])
    assert local.report().catchup[1] > 0  # the large model did catch up, so the cheaper price shows
    assert local.report().cost_ratio < replay(traces, policy, cost_model=flat).report().cost_ratio


def test_ray_calibrate_equals_the_local_calibrate(ray_local):
    traces = synthetic_traces(20, (5, 40), seed=2)
    policy = load_policy({"policy": "rolling_entropy", "params": {"window": 3, "unit": "nats"}})
    local = calibrate(traces, policy, "threshold", target_large_share=0.3, points=6, rounds=2, bounds=(0.0, 3.0))
    on_ray = calibrate(
        traces,
        policy,
        "threshold",
        target_large_share=0.3,
        points=6,
        rounds=2,
        bounds=(0.0, 3.0),
        engine=RayEngine(batch_rows=6),
    )
    assert (on_ray.value, on_ray.calibration, on_ray.held_out, on_ray.evaluations, on_ray.sequences) == (
        local.value,
        local.calibration,
        local.held_out,
        local.evaluations,
        local.sequences,
    )


def test_ray_refusals(ray_local, tmp_path):
    traces = synthetic_traces(4, 10, seed=0)
    write_traces(traces, tmp_path / "t.arrow", format="ipc")
    with pytest.raises(TraceError, match="RayEngine reads Parquet.*compact"):
        sweep(tmp_path / "t.arrow", "rolling_entropy", {"threshold": [1.0]}, engine=RayEngine())
    with pytest.raises(ParameterError, match="unknown parameter 'thresh'"):
        sweep(traces, "rolling_entropy", {"thresh": [1.0]}, engine=RayEngine())
    per_lane = load_policy({"policy": "rolling_entropy", "params": {"threshold": 1.0}})
    per_lane = type(per_lane)(threshold=np.array([0.5, 1.0, 1.5, 2.0]))
    with pytest.raises(ParameterError, match="per-lane"):
        replay(traces, per_lane, engine=RayEngine())
    with pytest.raises(EadError, match="lane_sequence"):
        replay(traces, per_lane, engine=RayEngine(), lane_sequence=np.arange(4))


def test_ray_tasks_record_one_shard_each_and_the_compacted_dataset_replays_on_ray(ray_local, tmp_path):
    """Each Ray task records its sequences to its own stream; compaction merges them; the Ray
    sweep of the result equals the local sweep of the same sequences."""
    parts = [synthetic_traces(4, (1, 20), seed=s) for s in range(3)]

    def record(directory: str, meta_json: str, seed: int) -> str:
        from ead_sdk.simulators import synthetic_traces
        from ead_sdk.traces import ShardedTraceWriter, TraceMeta

        meta = TraceMeta.from_json(meta_json)
        with ShardedTraceWriter(directory, meta, batch_rows=2) as writer:
            writer.write_many(synthetic_traces(4, (1, 20), seed=seed).sequences())
        return writer.path.name

    task = ray.remote(num_cpus=1)(record)
    names = ray.get([task.remote(str(tmp_path / "rec"), parts[0].meta.to_json(), s) for s in range(3)])
    assert len(set(names)) == 3
    out = compact(tmp_path / "rec", tmp_path / "ds")
    grid = {"threshold": [0.5, 1.5], "unit": ["nats"]}
    on_ray = sweep(out, "rolling_entropy", grid, engine=RayEngine(batch_rows=5))
    local = sweep(out, "rolling_entropy", grid)
    assert same_tables(local.table, on_ray.table) and on_ray.table.column("sequences").to_pylist() == [12, 12]


def test_ray_workers_check_every_value_like_the_local_reader(ray_local, tmp_path):
    traces = synthetic_traces(5, 8, seed=1)
    seqs = traces.sequences()
    bad = seqs[3].entropy.copy()
    bad[2, 0] = np.nan
    seqs[3] = type(seqs[3])(**{**seqs[3].__dict__, "entropy": bad})
    from ead_sdk.traces import TraceSet

    path = write_traces(TraceSet.from_sequences(traces.meta, seqs), tmp_path / "bad.parquet")
    with pytest.raises(TraceError, match=r"bad.parquet.*field 'entropy'"):
        sweep(path, "rolling_entropy", {"threshold": [1.0]}, engine=RayEngine())


def test_cli_sweep_engine_ray_prints_the_local_rows(ray_local, tmp_path):
    import json

    from typer.testing import CliRunner

    from ead_sdk.cli import app

    path = write_traces(synthetic_traces(9, (1, 30), seed=6), tmp_path / "t.parquet")
    args = ["sweep", str(path), "-p", "rolling_entropy", "-g", "threshold=0.5,1.5", "-g", "unit=nats", "--json"]
    local = CliRunner().invoke(app, args)
    on_ray = CliRunner().invoke(app, [*args, "--engine", "ray", "--batch-rows", "4"])
    assert local.exit_code == 0 and on_ray.exit_code == 0, on_ray.output
    assert json.loads(on_ray.stdout)["rows"] == json.loads(local.stdout)["rows"]
    bad = CliRunner().invoke(app, [*args, "--engine", "spark"])
    assert bad.exit_code != 0 and "expected local or ray" in bad.output


def test_ray_computes_a_topk_signal_like_the_local_engine(ray_local, tmp_path):
    """A top-k signal on Ray: the same figures as locally (replay, sweep, calibrate), a smaller k refused."""
    from ead_sdk import SignalUnavailableError
    from tests.test_signal_replay import zipf_traces

    traces = zipf_traces(11, (3, 30), k=4, seed=7)
    ds = dataset(traces, tmp_path / "ds", rows_per_file=4)
    spec = {"policy": "rolling_entropy", "params": {"window": 2, "threshold": 1.0, "unit": "nats"}}
    policy = load_policy({**spec, "signal": {"kind": "topk_entropy", "k": 3}})
    assert replay(ds, policy, engine=RayEngine(batch_rows=3)).report() == replay(traces, policy).report()
    assert replay(traces, policy).report() != replay(traces, load_policy(spec)).report()
    grid = {"threshold": [0.5, 1.0, 1.5]}
    local = sweep(traces, policy, grid, with_topk=False)
    assert same_tables(sweep(ds, policy, grid, with_topk=False, engine=RayEngine(batch_rows=5)).table, local.table)
    kw = {"target_large_share": 0.3, "points": 5, "rounds": 2, "bounds": (0.0, 3.0), "held_out": 0.0}
    on_ray = calibrate(ds, policy, "threshold", engine=RayEngine(batch_rows=4), **kw)
    assert on_ray.value == calibrate(traces, policy, "threshold", **kw).value
    too_big = load_policy({**spec, "signal": {"kind": "topk_entropy", "k": 5}})
    for run in (
        lambda: replay(ds, too_big, engine=RayEngine()),
        lambda: sweep(ds, too_big, grid, engine=RayEngine()),
        lambda: calibrate(ds, too_big, "threshold", engine=RayEngine(), **kw),
    ):
        with pytest.raises(SignalUnavailableError, match="recorded top-4 log-probabilities"):
            run()

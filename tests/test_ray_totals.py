"""Exact totals, the ground the Ray engine stands on: any split into batches gives identical figures.

These tests need no Ray: they run the worker-side kernel (`sweep_totals`) on batches in-process.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ead_sdk
from ead_sdk import load_policy
from ead_sdk.errors import ParameterError
from ead_sdk.interface import ESCALATIONS
from ead_sdk.simulators import LocalEngine, RayEngine, Totals, calibrate, replay, sweep, sweep_totals, synthetic_traces
from ead_sdk.simulators.ray_wire import merge_table, totals_table
from ead_sdk.simulators.replay import ReplayData
from ead_sdk.simulators.sweep import expand_grid
from ead_sdk.simulators.totals import msum
from ead_sdk.traces import compact, write_traces


def same(a, b) -> bool:
    """Exact equality of two summaries (NaN equals NaN; no tolerance)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y:
            return False
    return True


finite = st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, max_size=40), st.lists(finite, max_size=40))
def test_msum_partials_merge_exactly(a, b):
    """Property: msum's partials sum exactly (as rationals) to the values' sum, and the partials
    of two lists, concatenated, round (fsum) to the correctly rounded sum of both lists, whatever
    the order of the merge."""
    want = math.fsum(a + b)
    exact = sum((Fraction(x) for x in a + b), Fraction(0))  # the slow reference: rationals
    assert sum((Fraction(x) for x in msum(a + b)), Fraction(0)) == exact
    assert math.fsum(msum(a) + msum(b)) == want
    assert math.fsum(msum(b, msum(a))) == want
    assert math.fsum(msum(a, msum(b))) == want


GRID = {"threshold": [0.4, 1.1, 2.5], "window": [1, 4], "unit": ["nats"]}
LADDER_GRID = {"threshold": [[0.4, 1.5], [1.0, 2.2]], "window": [1, 4], "unit": ["nats"]}


@settings(max_examples=25)
@given(
    seed=st.integers(0, 10_000),
    num_models=st.sampled_from([2, 3]),
    escalation=st.sampled_from(ESCALATIONS),
    cuts=st.lists(st.integers(0, 12), max_size=5),
    order_seed=st.integers(0, 100),
    max_lanes=st.sampled_from([1, 7, 1 << 16]),
)
def test_totals_of_any_batching_equal_the_one_batch_sweep(seed, num_models, escalation, cuts, order_seed, max_lanes):
    """Property: splitting the sequences into batches at any cut points, running the worker
    kernel on each batch (with any lane cap), and merging the totals in any order gives the
    one-batch sweep's figures exactly (no tolerance)."""
    traces = synthetic_traces(12, (0, 40), num_models=num_models, seed=seed)
    grid = GRID if num_models == 2 else LADDER_GRID
    base = ead_sdk.load_policy({"policy": "rolling_entropy", "escalation": escalation})
    whole = sweep(traces, base, grid)
    bounds = sorted({0, 12, *cuts})
    configs = expand_grid(grid)
    parts = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        data = ReplayData.from_traces(traces.take(np.arange(lo, hi)))
        parts.append(sweep_totals(data, base, configs, max_lanes=max_lanes))
    order = np.random.default_rng(order_seed).permutation(len(parts))
    merged = [Totals(num_models) for _ in configs]
    for i in order:  # through Arrow, as the totals travel from Ray workers
        into = dict(enumerate(merged))
        merge_table(totals_table(parts[i], list(range(len(configs)))), into)
        merged = [into[c] for c in range(len(configs))]
    cost = traces.meta.cost_model()
    for row, total in zip(whole.table.to_pylist(), merged, strict=True):
        summary = {k: v for k, v in row.items() if not k.startswith("param.")}
        assert same(summary, total.summary(cost))


def test_aggregate_matches_a_slow_reference():
    """The summary's figures against plain per-lane sums computed here."""
    traces = synthetic_traces(9, (0, 30), seed=3)
    result = replay(traces, load_policy({"policy": "rolling_entropy", "params": {"threshold": 1.0, "unit": "nats"}}))
    s = result.summary()
    led = result.ledger
    tokens = int(led.emitted.sum())
    assert s["tokens"] == tokens and s["large_share"] == pytest.approx(led.emitted[:, -1].sum() / tokens)
    assert s["loglik"] == pytest.approx(sum(float(v) for v in result.metrics["loglik"]), rel=1e-12)
    lab = result.metrics["labelled"] & (result.metrics["tokens"] > 0)
    assert s["quality"] == pytest.approx(float(np.mean(result.metrics["quality"][lab])), rel=1e-12)


def test_streamed_local_sweep_of_a_dataset_equals_the_in_memory_sweep(tmp_path):
    traces = synthetic_traces(23, (0, 50), seed=7)
    write_traces(traces, tmp_path / "t.arrow", format="ipc")
    ds = compact(tmp_path / "t.arrow", tmp_path / "ds", rows_per_file=6, row_group_rows=4)
    seen = []
    streamed = sweep(
        ds, "rolling_entropy", GRID, engine=LocalEngine(batch_rows=5), progress=lambda d, n: seen.append((d, n))
    )
    memory = sweep(traces, "rolling_entropy", GRID)
    for a, b in zip(streamed.table.to_pylist(), memory.table.to_pylist(), strict=True):
        assert same(a, b)
    assert seen[-1] == (23, 23) and streamed.results == [] and len(streamed.totals) == 6


def test_bad_engines_are_refused():
    traces = synthetic_traces(3, 10, seed=0)
    with pytest.raises(ead_sdk.ArgumentTypeError, match="engine must be a LocalEngine or a RayEngine"):
        sweep(traces, "rolling_entropy", GRID, engine="spark")
    with pytest.raises(TypeError, match=r"engines are objects now: LocalEngine\(threads=...\)"):
        replay(traces, "rolling_entropy", engine="ray")
    for bad in (0, 1.5, True):
        with pytest.raises(ead_sdk.EngineError, match="batch_rows must be an integer >= 1"):
            RayEngine(batch_rows=bad)
        with pytest.raises(ValueError, match="batch_rows must be an integer >= 1"):
            LocalEngine(batch_rows=bad)
    pol = load_policy({"policy": "rolling_entropy", "params": {"threshold": 1.0}})
    with pytest.raises(ParameterError, match="dataset path needs a RayEngine"):
        calibrate("/nonexistent", pol, "threshold", target_large_share=0.3)


def test_engine_ray_without_ray_installed_says_how_to_get_it(monkeypatch):
    import sys

    from ead_sdk.simulators.ray_engine import RayUnavailableError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RayUnavailableError, match=r"pip install 'ead-sdk\[ray\]'"):
        sweep(synthetic_traces(2, 5), "rolling_entropy", {"threshold": [1.0]}, engine=RayEngine())

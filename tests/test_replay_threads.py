"""Threaded replay: lanes split into blocks replayed on a thread pool give the same result."""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk import load_policy
from ead_sdk.cost import CostLedger
from ead_sdk.errors import EadError, ModelCountError
from ead_sdk.interface import ESCALATIONS, Policy
from ead_sdk.policies.hysteresis import HysteresisPolicy
from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy
from ead_sdk.simulators import LocalEngine, fill_ledger, replay, sweep, synthetic_traces
from ead_sdk.simulators.replay import default_threads, lane_blocks

engine = sys.modules["ead_sdk.simulators.replay"]
LEDGER = ("consumed", "steps", "catchup", "wasted", "emitted", "prefill", "used", "switches", "last")


@contextlib.contextmanager
def tiny_blocks():
    """Let every lane be a block of its own, so small test replays really run on several threads."""
    saved = engine.MIN_BLOCK_LANES
    engine.MIN_BLOCK_LANES = 1
    try:
        yield
    finally:
        engine.MIN_BLOCK_LANES = saved


def assert_same_result(a, b) -> None:
    np.testing.assert_array_equal(a.computed_by, b.computed_by)
    np.testing.assert_array_equal(a.emitted_by, b.emitted_by)
    for name in LEDGER:
        np.testing.assert_array_equal(getattr(a.ledger, name), getattr(b.ledger, name), err_msg=name)
    assert a.metrics.keys() == b.metrics.keys()
    for key in a.metrics:
        np.testing.assert_array_equal(a.metrics[key], b.metrics[key], err_msg=key)
    assert str(a.summary()) == str(b.summary())  # repr: nan-safe and exact


def lane_policy(name: str, lanes: int, rng: np.random.Generator, escalation: str) -> Policy:
    """A policy with per-lane parameters (or a baseline) for ``lanes`` lanes."""
    if name == "rolling_entropy":
        return RollingEntropyPolicy(
            window=rng.integers(1, 7, lanes),
            threshold=rng.uniform(0.1, 2.5, lanes),
            min_dwell=rng.integers(0, 3, lanes),
            unit="nats",
            escalation=escalation,
        )
    if name == "hysteresis":
        upper = rng.uniform(0.3, 2.5, lanes)
        return HysteresisPolicy(
            upper=upper,
            lower=upper * rng.uniform(0.1, 0.9, lanes),
            window=int(rng.integers(1, 5)),
            ema=rng.uniform(0.0, 0.8, lanes) * (rng.random() < 0.5),
            unit="nats",
            escalation=escalation,
        )
    return load_policy({"policy": name, "escalation": escalation})


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 12),
    tiles=st.integers(1, 3),
    name=st.sampled_from(["rolling_entropy", "hysteresis", "random", "oracle", "confidence", "fixed"]),
    escalation=st.sampled_from(ESCALATIONS),
    threads=st.integers(2, 5),
)
def test_any_thread_count_gives_the_same_replay(seed, n, tiles, name, escalation, threads):
    """Property: for any trace, policy, escalation mode and lane tiling, replaying on any number
    of threads (lanes split into contiguous blocks, one per thread) gives the same routes, the
    same `CostLedger` counters, the same per-lane metrics and the same summary as one thread."""
    traces = synthetic_traces(n, (1, 30), k=3, seed=seed, emitter="oracle")
    seq = np.tile(np.arange(n), tiles)
    policy = lane_policy(name, seq.shape[0], np.random.default_rng(seed), escalation)
    one = replay(traces, policy, lane_sequence=seq, engine=LocalEngine(threads=1))
    with tiny_blocks():
        many = replay(traces, policy, lane_sequence=seq, engine=LocalEngine(threads=threads))
    assert_same_result(one, many)


@given(n=st.integers(0, 100_000), threads=st.integers(1, 8), least=st.integers(1, 5000))
def test_lane_blocks_cover_every_lane_once(n, threads, least):
    """Property: the blocks are contiguous, in order, cover lanes 0..n-1 exactly once, number at
    most ``threads``, and each holds at least ``min_lanes`` lanes unless there is only one."""
    blocks = lane_blocks(n, threads, least)
    assert 1 <= len(blocks) <= threads
    assert blocks[0].start == 0 and blocks[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:], strict=False))
    if len(blocks) > 1:
        assert all(b.stop - b.start >= least for b in blocks)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), lanes=st.integers(1, 12), t_max=st.integers(0, 40), m_count=st.integers(1, 3))
def test_ledger_filled_by_lane_blocks_equals_the_whole_fill(data, lanes, t_max, m_count):
    """Property: filling a `CostLedger` block of lanes by block (``lanes=slice``) gives exactly
    the counters of one fill over every lane."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    lengths = rng.integers(0, t_max + 1, lanes)
    computed = rng.integers(0, m_count, (t_max, lanes)).astype(np.int8)
    emitted = np.maximum(computed, rng.integers(0, m_count, (t_max, lanes))).astype(np.int8)
    past = np.arange(t_max)[:, None] >= lengths[None, :]
    computed[past] = emitted[past] = -1
    prompts = rng.integers(1, 9, lanes)
    whole, parts = CostLedger(lanes, m_count, prompts), CostLedger(lanes, m_count, prompts)
    fill_ledger(whole, computed, emitted, lengths)
    cuts = sorted(data.draw(st.lists(st.integers(0, lanes), max_size=4)))
    edges = [0, *cuts, lanes]
    for a, b in zip(edges, edges[1:], strict=False):
        fill_ledger(parts, computed, emitted, lengths, lanes=slice(a, b))
    for name in LEDGER:
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name), err_msg=name)


def test_sweep_threads_give_the_same_table():
    traces = synthetic_traces(6, (5, 40), k=3, seed=4)
    grid = {"threshold": [0.3, 0.8, 1.6], "window": [1, 4]}
    one = sweep(traces, "rolling_entropy", grid, engine=LocalEngine(threads=1))
    with tiny_blocks():
        two = sweep(traces, "rolling_entropy", grid, engine=LocalEngine(threads=2))
    assert one.table.equals(two.table)


def test_threads_must_be_a_positive_integer():
    traces = synthetic_traces(2, 5, k=2, seed=0)
    policy = load_policy("rolling_entropy")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(EadError, match="threads must be an integer >= 1"):
            replay(traces, policy, engine=LocalEngine(threads=bad))
    assert 1 <= default_threads() <= 2


class _RouteTooHigh(Policy):
    """Routes lane ``bad`` to a model that does not exist (and every other lane to model 0)."""

    name = "route_too_high"
    max_models = None

    def __init__(self, bad: int):
        super().__init__()
        self.bad = bad

    def init_state(self, n, xp, device=None):
        return {"lane": xp.arange(n)}

    def decide(self, state, step):
        return (state["lane"] == self.bad) * 7, state


def test_an_error_names_the_lane_of_the_whole_replay():
    traces = synthetic_traces(8, 6, k=2, seed=1)
    with tiny_blocks(), pytest.raises(ModelCountError, match="routed lane 6 to model 7"):
        replay(traces, _RouteTooHigh(6), engine=LocalEngine(threads=4))


def test_lane_sequence_out_of_range_is_refused():
    traces = synthetic_traces(3, 5, k=2, seed=2)
    policy = load_policy("rolling_entropy")
    for bad in ([0, 3], [-1, 0], [[0, 1]]):
        with pytest.raises(EadError, match=r"lane_sequence must be a 1-d array of sequence indices in \[0, 3\)"):
            replay(traces, policy, lane_sequence=np.asarray(bad))

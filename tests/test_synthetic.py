"""Synthetic traces: valid, seeded, correlated like real pairs, top-k consistent with entropy."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ead_sdk.signals import topk_entropy_bounds
from ead_sdk.simulators import synthetic_traces
from ead_sdk.traces import validate_table


@settings(max_examples=20)
@given(
    seed=st.integers(0, 2**31),
    m=st.integers(1, 3),
    k=st.integers(0, 4),
    emitter=st.sampled_from(["small", "large", "oracle"]),
)
def test_synthetic_traces_are_valid_and_consistent(seed, m, k, emitter):
    """Property: every generated trace passes validation; top-k log-probabilities are sorted and
    bound the recorded entropy (Shannon entropy >= the top-k lower bound); the trajectory token's
    log-probability equals its top-k entry wherever it is listed; the emitter is as asked."""
    traces = synthetic_traces(5, (0, 20), num_models=m, k=k, seed=seed, emitter=emitter, vocab_size=97)
    validate_table(traces.meta, traces.table, traces.source)
    flat = traces.flat()
    if k:
        bounds = topk_entropy_bounds(flat.top_logprobs.astype(np.float64), vocab_size=None)
        assert np.all(flat.entropy >= bounds.lower - 1e-4)
        listed = flat.top_ids == flat.token_ids[:, None, None]
        got = np.where(listed, flat.top_logprobs, 0).sum(-1)
        has = listed.any(-1)
        np.testing.assert_allclose(got[has], flat.token_logprob[has], rtol=1e-5, atol=1e-5)
    want = {"small": 0, "large": m - 1}.get(emitter)
    if want is not None:
        assert np.all(flat.emitted_by == want)


def test_seeded_and_correlated_like_a_real_pair():
    a, b = synthetic_traces(50, 100, seed=7), synthetic_traces(50, 100, seed=7)
    assert a.table.equals(b.table)
    assert not a.table.equals(synthetic_traces(50, 100, seed=8).table)
    flat = a.flat()
    corr = np.corrcoef(flat.entropy.T)[0, 1]
    assert 0.5 < corr < 0.95  # correlated, not identical
    assert flat.entropy[:, 1].mean() < flat.entropy[:, 0].mean()  # the large model is surer
    correct = flat.correct
    assert correct[:, 1].mean() > correct[:, 0].mean()
    disagree = flat.top_ids[:, 0, 0] != flat.top_ids[:, 1, 0]
    high = flat.entropy[:, 0] > np.quantile(flat.entropy[:, 0], 0.8)
    assert disagree[high].mean() > disagree[~high].mean()  # disagreement concentrates where it is hard

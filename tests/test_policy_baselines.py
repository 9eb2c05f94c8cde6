"""The baselines: fixed, random, confidence, oracle."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ead_sdk.errors import MissingStepFieldError
from ead_sdk.interface import Step
from ead_sdk.policies.confidence import ConfidencePolicy
from ead_sdk.policies.fixed import FixedPolicy
from ead_sdk.policies.oracle import OraclePolicy
from ead_sdk.policies.random import RandomPolicy
from ead_sdk.prng import uniform
from ead_sdk.testing import check_policy
from ead_sdk.testing.strategies import step_batches


def lanes(n, index):
    return Step(
        entropy=np.ones(n), model=np.zeros(n, np.int64), index=np.asarray(index, np.int64), live=np.ones(n, bool)
    )


@given(p=st.floats(0.0, 1.0), seed=st.integers(0, 2**40), start=st.integers(0, 10**6))
def test_random_is_the_seeded_uniform_below_p(p, seed, start):
    """The large model exactly where uniform(seed, index) < p; p = 0 never, p = 1 always."""
    policy = RandomPolicy(p=p, seed=seed)
    index = np.arange(start, start + 64)
    routes, _ = policy.decide(policy.init_state(64, np), lanes(64, index))
    assert np.array_equal(routes, (uniform(np.full(64, seed), index, np) < p).astype(np.int64))
    for edge, want in ((0.0, 0), (1.0, 1)):
        edge_policy = RandomPolicy(p=edge, seed=seed)
        assert np.all(edge_policy.decide(edge_policy.init_state(64, np), lanes(64, index))[0] == want)


def test_random_frequency_matches_p():
    for p in (0.1, 0.5, 0.9):
        policy = RandomPolicy(p=p, seed=7)
        routes, _ = policy.decide(policy.init_state(20000, np), lanes(20000, np.arange(20000)))
        assert abs(routes.mean() - p) < 0.015


@given(step=step_batches(logprobs="full"), threshold=st.floats(0.0, 1.0), k=st.integers(1, 8))
def test_confidence_is_bild_fallback(step, threshold, k):
    """Escalate exactly when the top token's probability is below the threshold, whether the
    step carries the full vocabulary or only its top-k."""
    policy = ConfidencePolicy(threshold=threshold)
    state = policy.init_state(step.n, np)
    routes, _ = policy.decide(state, step)
    top = np.exp(step.logprobs[:, 0])
    want = np.where(step.live, (top < threshold).astype(np.int64), step.model)
    close = np.abs(top - threshold) < 1e-12
    assert np.array_equal(routes[~close], want[~close])
    topk = dataclasses.replace(
        step, logprobs=step.logprobs[:, :k], token_ids=np.zeros((step.n, min(k, step.logprobs.shape[1])), np.int64)
    )
    assert np.array_equal(policy.decide(state, topk)[0][~close], routes[~close])


@given(step=step_batches(logprobs="none"))
def test_oracle_follows_the_future(step):
    """The oracle escalates exactly where the models disagree at the next position."""
    policy = OraclePolicy()
    routes, _ = policy.decide(policy.init_state(step.n, np), step)
    want = np.where(step.live, step.future["disagree"].astype(np.int64), step.model)
    assert np.array_equal(routes, want)


def test_missing_fields_are_clear_errors():
    step = lanes(2, [0, 1])
    with pytest.raises(MissingStepFieldError, match="replay-only"):
        OraclePolicy().decide(OraclePolicy().init_state(2, np), step)
    with pytest.raises(MissingStepFieldError, match="confidence"):
        ConfidencePolicy().decide(ConfidencePolicy().init_state(2, np), step)
    assert OraclePolicy.replay_only and not ConfidencePolicy.replay_only


@pytest.mark.parametrize(
    "cls, params, variants",
    [
        (FixedPolicy, {"model": 1}, [{"model": 0}, {"model": 1}]),
        (RandomPolicy, {"p": 0.3, "seed": 1}, [{"p": 0.9}, {"seed": 5}, {"p": 0.0}]),
        (ConfidencePolicy, {"threshold": 0.6}, [{"threshold": 0.2}, {"threshold": 0.95}]),
        (OraclePolicy, {}, None),
    ],
)
def test_conforms(cls, params, variants):
    check_policy(cls, params=params, lane_variants=variants)

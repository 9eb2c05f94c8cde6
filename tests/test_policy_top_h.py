"""top_h: the vectorised kept sets against slow per-token references of both variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ead_sdk.errors import MissingStepFieldError
from ead_sdk.interface import Step
from ead_sdk.policies.top_h import TopHPolicy, top_h_kept
from ead_sdk.testing import check_policy
from ead_sdk.testing.strategies import logits_batches

TIE = 1e-9


def log_softmax(x):
    m = np.max(x)
    return x - m - np.log(np.sum(np.exp(x - m)))


def slow_reference(logits, alpha, top_n):
    """The authors' loop, token by token: grow the set while the unnormalised partial entropy
    -sum p log p of the full distribution stays within alpha times that of the top-N.
    Returns (size, mass, margin): margin is how far the deciding sum was from the threshold."""
    p = sorted((math.exp(v) for v in log_softmax(logits)), reverse=True)[:top_n]
    p = [v for v in p if v > 0]
    terms = [-v * math.log(v) for v in p]
    tau = alpha * sum(terms)
    size, h, margin = 1, terms[0], math.inf
    for i in range(1, len(p)):
        h += terms[i]
        margin = min(margin, abs(h - tau))
        if h > tau:
            break
        size += 1
    return size, sum(p[:size]), margin


def slow_transformers(logits, alpha, top_n):
    """transformers' rule: renormalise the top-N, keep tokens while the cumulative entropy of the
    renormalised distribution stays within alpha times its entropy (the first always)."""
    p = sorted((math.exp(v) for v in log_softmax(logits)), reverse=True)[:top_n]
    p = [v for v in p if v > 0]
    total = sum(p)
    q = [v / total for v in p]
    terms = [-v * math.log(v) for v in q]
    tau = alpha * sum(terms)
    size, c, margin = 0, 0.0, math.inf
    for i, term in enumerate(terms):
        c += term
        margin = min(margin, abs(c - tau))
        if c <= tau or i == 0:
            size = i + 1
        else:
            break
    return size, sum(p[:size]), margin


SLOW = {"reference": slow_reference, "transformers": slow_transformers}


@given(
    rows=logits_batches(max_rows=4, max_vocab=160),
    alpha=st.one_of(st.floats(0.01, 1.0), st.just(1.0)),
    top_n=st.sampled_from([1, 3, 10, 100]),
    variant=st.sampled_from(["reference", "transformers"]),
)
def test_kept_sets_match_the_slow_references(rows, alpha, top_n, variant):
    """For any logits (peaked, flat, -inf-masked, vocabularies smaller than N) and any alpha in
    (0, 1], the vectorised kept set has the size and mass the per-token loop finds."""
    kept = top_h_kept(rows, alpha, top_n, variant)
    for i, row in enumerate(rows):
        size, mass, margin = SLOW[variant](row, alpha, top_n)
        if margin > TIE:
            assert kept.size[i] == size
            assert kept.mass[i] == pytest.approx(mass, rel=1e-9, abs=1e-12)


@given(rows=logits_batches(max_rows=4, max_vocab=64), alpha=st.floats(0.05, 1.0))
def test_alpha_one_keeps_every_token_with_probability(rows, alpha):
    """alpha = 1 (where the reference crashes) keeps every non-zero token of the top-N; any alpha
    keeps at least one token and never more than that."""
    full = top_h_kept(rows, 1.0, 100)
    nonzero = np.minimum((np.exp(rows - rows.max(axis=1, keepdims=True)) > 0).sum(axis=1), 100)
    assert np.array_equal(full.size, nonzero)
    some = top_h_kept(rows, alpha, 100)
    assert np.all((some.size >= 1) & (some.size <= full.size))


@given(rows=logits_batches(max_rows=3, min_vocab=12, max_vocab=64), k=st.integers(1, 12))
def test_topk_logprobs_truncate_the_top_n(rows, k):
    """From a trace's top-k log-probs the top-N is the top-min(N, k): the same set as full logits
    with top_n = k."""
    lp = np.stack([np.sort(log_softmax(r))[::-1][:k] for r in rows])
    from_trace = top_h_kept(lp, 0.6, 100, normalised=True)
    from_logits = top_h_kept(rows, 0.6, k)
    assert np.array_equal(from_trace.size, from_logits.size)
    np.testing.assert_allclose(from_trace.mass, from_logits.mass, rtol=1e-9)


def test_agrees_with_transformers_warper():
    """The "transformers" variant keeps what `transformers.TopHLogitsWarper` keeps."""
    torch = pytest.importorskip("torch")
    warper_cls = pytest.importorskip("transformers.generation.logits_process").TopHLogitsWarper
    gen = torch.Generator().manual_seed(0)
    logits = (
        torch.randn(64, 300, generator=gen, dtype=torch.float64)
        * torch.linspace(0.2, 6, 64, dtype=torch.float64)[:, None]
    )
    for alpha in (0.2, 0.5, 0.95):
        kept = torch.isfinite(warper_cls(top_h=alpha)(None, logits)).sum(dim=1)
        ours = top_h_kept(logits, alpha, 100, "transformers").size
        assert torch.equal(ours, kept)


def test_numpy_and_torch_agree_and_per_lane_parameters():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(5, 200)) * np.array([0.3, 1, 2, 4, 8])[:, None]
    alpha, top_n = np.array([0.2, 0.4, 0.9, 1.0, 0.5]), np.array([5, 100, 50, 7, 300])
    a = top_h_kept(rows, alpha, top_n)
    b = top_h_kept(torch.tensor(rows), torch.tensor(alpha), torch.tensor(top_n), max_top_n=300)
    assert np.array_equal(a.size, b.size.numpy())
    for i in range(5):
        assert top_h_kept(rows[i : i + 1], float(alpha[i]), int(top_n[i])).size[0] == a.size[i]


def test_policy_rule_and_missing_distribution():
    """Escalate when the kept set has more than max_kept tokens or less than min_mass."""
    flat = np.zeros((1, 50))
    pair = np.full((1, 50), -np.inf)
    pair[0, :2] = 0.0  # two equally likely tokens: the first alone is kept, with mass 1/2
    policy = TopHPolicy(alpha=0.9, max_kept=3, min_mass=0.4)
    state = policy.init_state(1, np)
    blank = dict(entropy=np.zeros(1), model=np.zeros(1, np.int64), index=np.zeros(1, np.int64), live=np.ones(1, bool))
    for logits, want in ((flat, 1), (pair, 0)):
        lp = np.sort(logits - np.log(np.exp(logits).sum()))[:, ::-1]
        assert policy.decide(state, Step(**blank, logprobs=lp))[0][0] == want
    light = TopHPolicy(alpha=0.9, max_kept=3, min_mass=0.6)
    lp = np.sort(pair - np.log(np.exp(pair).sum()))[:, ::-1]
    assert light.decide(light.init_state(1, np), Step(**blank, logprobs=lp))[0][0] == 1
    with pytest.raises(MissingStepFieldError, match="top_h"):
        policy.decide(state, Step(**blank))


def test_conforms():
    check_policy(
        TopHPolicy,
        params={"alpha": 0.8, "max_kept": 3, "min_mass": 0.3},
        lane_variants=[{"alpha": 0.3}, {"top_n": 4, "max_kept": 2}, {"min_mass": 0.9}],
    )
    check_policy(TopHPolicy, params={"variant": "transformers", "alpha": 1.0, "top_n": 5})


def test_per_lane_parameters_decide_without_host_sync():
    """Per-lane alpha and top_n on torch: no host synchronisation inside decide."""
    torch = pytest.importorskip("torch")
    from ead_sdk.integrations.host_sync import forbid_host_sync

    policy = TopHPolicy(alpha=np.array([0.3, 0.9, 1.0]), top_n=np.array([5, 100, 20]))
    state = policy.init_state(3, torch)
    logprobs = torch.sort(torch.log_softmax(torch.randn(3, 64), -1), dim=-1, descending=True).values
    zeros = torch.zeros(3, dtype=torch.int64)
    step = Step(
        entropy=torch.ones(3), model=zeros, index=zeros, live=torch.ones(3, dtype=torch.bool), logprobs=logprobs
    )
    with forbid_host_sync():
        routes, _ = policy.decide(state, step)
    assert routes.shape == (3,)

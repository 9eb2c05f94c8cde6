"""The top-k entropy estimate: an independent slow reference, the bounds, torch without host sync."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ead_sdk
from ead_sdk.signals import topk_entropy_bounds, topk_entropy_estimate


def softmax_logprobs(logits: list[float]) -> list[float]:
    m = max(logits)
    z = math.fsum(math.exp(x - m) for x in logits)
    return [x - m - math.log(z) for x in logits]


def exact_entropy(logprobs: list[float]) -> float:
    return -math.fsum(math.exp(lp) * lp for lp in logprobs if lp != -math.inf)


def reference_bounds(top: list[float], vocab: int | None) -> tuple[float, float]:
    """Plain-Python bounds: the rest packed at ``p_min`` (lower) or spread evenly (upper)."""
    p = [math.exp(v) for v in top]
    h_top = -math.fsum(q * math.log(q) for q in p if q > 0)
    rest = max(0.0, 1.0 - math.fsum(p))
    p_min = min(p)
    if rest == 0.0 or p_min == 0.0:
        return h_top, h_top
    full, rem = divmod(rest, p_min)
    lower = h_top + full * -p_min * math.log(p_min) - (rem * math.log(rem) if rem > 0 else 0.0)
    if vocab is None:
        return lower, math.inf
    upper = h_top - rest * math.log(rest / max(vocab - len(top), 1))
    return lower, max(lower, upper)


def reference_estimate(top: list[float], vocab: int | None) -> float:
    """The listed tokens, plus ``rest`` spread as the geometric law P(j) = (1 - q) q^(j - 1), j >= 1.

    The tail token ``j`` holds ``rest * P(j)``; its entropy is ``-rest log rest + rest H(P)`` with
    the textbook entropy of a geometric law, ``H(P) = (-(1-q) log(1-q) - q log q) / (1-q)``.
    """
    p = [math.exp(v) for v in top]
    h_top = -math.fsum(q * math.log(q) for q in p if q > 0)
    rest = max(0.0, 1.0 - math.fsum(p))
    p_min = min(p)
    lower, upper = reference_bounds(top, vocab)
    if rest == 0.0 or p_min == 0.0:
        return h_top
    q = rest / (rest + p_min)
    h_geom = (-(1 - q) * math.log(1 - q) - q * math.log(q)) / (1 - q)
    estimate = h_top - rest * math.log(rest) + rest * h_geom
    return min(max(estimate, lower), upper)


def series_tail(rest: float, p_min: float) -> float:
    """The tail's entropy summed term by term: tokens ``p_min q^j`` for ``j = 1, 2, ...``."""
    q = rest / (rest + p_min)
    total, j = [], 1
    while True:
        pj = p_min * q**j
        if pj < 1e-300:
            return math.fsum(total)
        total.append(-pj * math.log(pj))
        j += 1


distributions = st.tuples(
    st.lists(st.floats(-12, 12), min_size=2, max_size=80),
    st.integers(1, 20),
)


def top_of(logits: list[float], k: int) -> tuple[list[float], list[float]]:
    lp = softmax_logprobs(logits)
    return lp, sorted(lp, reverse=True)[: min(k, len(lp))]


@given(distributions, st.booleans())
def test_estimate_matches_the_slow_reference(case, known_vocab):
    logits, k = case
    lp, top = top_of(logits, k)
    vocab = len(lp) if known_vocab else None
    got = float(topk_entropy_estimate(np.asarray([top]), vocab_size=vocab)[0])
    assert got == pytest.approx(reference_estimate(top, vocab), rel=1e-9, abs=1e-9)


@given(distributions, st.booleans())
def test_estimate_lies_within_the_bounds_that_hold_the_exact_entropy(case, known_vocab):
    """lower <= estimate <= upper and lower <= exact <= upper: the error is at most upper - lower."""
    logits, k = case
    lp, top = top_of(logits, k)
    vocab = len(lp) if known_vocab else None
    row = np.asarray([top])
    bounds = topk_entropy_bounds(row, vocab_size=vocab)
    estimate = float(topk_entropy_estimate(row, vocab_size=vocab)[0])
    lower, upper = float(bounds.lower[0]), float(bounds.upper[0])
    exact = exact_entropy(lp)
    assert lower - 1e-12 <= estimate <= upper + 1e-12
    assert lower - 1e-9 <= exact <= upper + 1e-9
    assert abs(estimate - exact) <= upper - lower + 1e-9


@given(st.lists(st.floats(-12, 12), min_size=1, max_size=40))
def test_a_full_top_k_gives_the_exact_entropy(logits):
    lp = softmax_logprobs(logits)
    row = np.asarray([sorted(lp, reverse=True)])
    assert float(topk_entropy_estimate(row, vocab_size=len(lp))[0]) == pytest.approx(exact_entropy(lp), abs=1e-9)


@pytest.mark.parametrize("rest, p_min", [(0.3, 0.05), (0.01, 0.2), (0.6, 0.01), (1e-4, 1e-4)])
def test_closed_form_tail_equals_its_series(rest, p_min):
    """The closed form sums the geometric tail it describes (the reference's formula, checked too)."""
    top = [math.log(1 - rest - p_min), math.log(p_min)]
    h_top = -math.fsum(math.exp(v) * v for v in top)
    got = float(topk_entropy_estimate(np.asarray([top]))[0])
    assert got == pytest.approx(h_top + series_tail(rest, p_min), rel=1e-9)
    assert reference_estimate(top, None) == pytest.approx(got, rel=1e-9)


def test_units_shapes_and_errors():
    top = np.log(np.array([[[0.5, 0.2], [0.9, 0.05]]]))
    nats = topk_entropy_estimate(top, vocab_size=100)
    assert nats.shape == (1, 2)
    np.testing.assert_allclose(topk_entropy_estimate(top, vocab_size=100, unit="bits"), nats / math.log(2))
    with pytest.raises(ead_sdk.SignalError, match="log-probabilities"):
        topk_entropy_estimate(np.array([[0.5, 0.1]]))
    with pytest.raises(ead_sdk.SignalError, match="non-empty"):
        topk_entropy_estimate(np.zeros((2, 0)), validate=False)
    with pytest.raises(ead_sdk.SignalError, match="smaller than k"):
        topk_entropy_estimate(top, vocab_size=1)
    with pytest.raises(ead_sdk.SignalError, match="unit"):
        topk_entropy_estimate(top, unit="dits")


def test_estimate_is_finite_for_a_vanishing_tail():
    """A rest far below p_min (rounding) adds almost nothing and never overflows."""
    top = np.log(np.array([[0.5, 0.5 - 1e-300]], dtype=np.float64))
    value = float(topk_entropy_estimate(top)[0])
    assert math.isfinite(value) and value == pytest.approx(math.log(2))


def test_torch_matches_numpy_without_host_sync():
    torch = pytest.importorskip("torch")
    from ead_sdk.integrations.host_sync import forbid_host_sync

    logits = torch.randn(6, 500, generator=torch.Generator().manual_seed(0)) * 3
    top = torch.topk(torch.log_softmax(logits.double(), -1), 20).values
    with forbid_host_sync():
        got = topk_entropy_estimate(top, vocab_size=500, validate=False)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64 and got.shape == (6,)
    np.testing.assert_allclose(got.numpy(), topk_entropy_estimate(top.numpy(), vocab_size=500), rtol=1e-12)
    half = topk_entropy_estimate(top.to(torch.bfloat16), vocab_size=500)
    assert half.dtype == torch.float32


@given(st.floats(0.01, 0.95), st.integers(1, 20))
def test_a_geometric_distribution_is_estimated_exactly(q, k):
    """P(rank j) = (1 - q) q^j: the tail continues exactly as the estimate assumes."""
    ranks = np.arange(k)
    top = np.log1p(-q) + ranks * math.log(q)
    exact = (-(1 - q) * math.log1p(-q) - q * math.log(q)) / (1 - q)
    assert float(topk_entropy_estimate(top[None, :])[0]) == pytest.approx(exact, rel=1e-9, abs=1e-12)

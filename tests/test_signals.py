"""Entropy and top-k bounds, checked against an independent float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ead_sdk
from ead_sdk.signals import check_logits, entropy, topk_entropy_bounds


def reference_entropy(row: list[float]) -> float:
    """Plain-Python float64 entropy (nats) of softmax(row), -inf entries excluded."""
    finite = [x for x in row if x != -math.inf]
    m = max(finite)
    weights = [math.exp(x - m) for x in finite]
    z = math.fsum(weights)
    return -math.fsum((w / z) * math.log(w / z) for w in weights if w > 0)


logit_value = st.one_of(
    st.floats(-50, 50, allow_nan=False),
    st.just(-math.inf),
)
logit_rows = st.lists(logit_value, min_size=1, max_size=40).filter(lambda r: any(x != -math.inf for x in r))


@given(logit_rows)
def test_entropy_matches_reference_and_bounds(row):
    """0 <= H <= log(#finite) and H equals the float64 reference."""
    h = float(entropy(np.asarray([row]))[0])
    finite = sum(x != -math.inf for x in row)
    assert -1e-12 <= h <= math.log(finite) + 1e-9
    assert h == pytest.approx(reference_entropy(row), abs=1e-9)


@given(logit_rows, st.floats(-1e3, 1e3))
def test_entropy_invariant_to_row_shift(row, c):
    """Adding a constant to a row does not change its entropy."""
    x = np.asarray([row])
    assert float(entropy(x + c)[0]) == pytest.approx(float(entropy(x)[0]), abs=1e-7)


@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 30)), elements=st.floats(-30, 30, width=32)))
def test_entropy_float32_and_bits(x):
    """float32 inputs agree with float64 within float32 precision; bits = nats / ln 2."""
    h32 = entropy(x)
    h64 = entropy(x.astype(np.float64))
    assert h32.dtype == np.float32
    np.testing.assert_allclose(h32, h64, atol=1e-4)
    np.testing.assert_allclose(entropy(x, unit="bits"), h32 / math.log(2), rtol=1e-6)


def test_entropy_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(3, 4, 50)) * 5
    x[0, 0, :10] = -np.inf
    h_np = entropy(x)
    h_t = entropy(torch.tensor(x))
    assert isinstance(h_t, torch.Tensor) and h_t.shape == (3, 4)
    np.testing.assert_allclose(h_t.numpy(), h_np, atol=1e-12)
    h_half = entropy(torch.tensor(x, dtype=torch.bfloat16))
    assert h_half.dtype == torch.float32


@pytest.mark.parametrize(
    "row, message",
    [
        ([0.0, math.nan], "row 1 contains NaN"),
        ([0.0, math.inf], r"row 1 contains \+inf"),
        ([-math.inf, -math.inf], "row 1 is all -inf"),
    ],
)
def test_bad_rows_are_named(row, message):
    x = np.asarray([[0.0, 1.0], row])
    with pytest.raises(ead_sdk.SignalError, match=message):
        entropy(x)


def test_bad_unit_and_empty_vocab():
    with pytest.raises(ead_sdk.SignalError, match="unit"):
        entropy(np.zeros((1, 3)), unit="hartleys")
    with pytest.raises(ead_sdk.SignalError, match="non-empty"):
        check_logits(np.zeros((2, 0)))


def test_signal_error_is_value_error_and_ead_error():
    assert issubclass(ead_sdk.SignalError, ValueError)
    assert issubclass(ead_sdk.SignalError, ead_sdk.EadError)


@given(
    st.lists(st.floats(-20, 20), min_size=2, max_size=60),
    st.integers(1, 10),
)
def test_topk_bounds_contain_true_entropy(logits, k):
    """The true entropy always lies inside the top-k interval (finite with a known vocabulary)."""
    x = np.asarray(logits, dtype=np.float64)
    k = min(k, x.size)
    lp = x - np.log(np.sum(np.exp(x - x.max()))) - x.max()
    top = np.sort(lp)[::-1][:k]
    true_h = reference_entropy(list(x))
    bounds = topk_entropy_bounds(top[None, :], vocab_size=x.size)
    assert bounds.lower[0] <= true_h + 1e-9
    assert true_h <= bounds.upper[0] + 1e-9
    unbounded = topk_entropy_bounds(top[None, :])
    assert unbounded.lower[0] == pytest.approx(bounds.lower[0])
    assume(k < x.size)
    assert unbounded.upper[0] >= bounds.upper[0]


def test_topk_bounds_are_exact_for_full_vocabulary():
    x = np.log(np.array([[0.5, 0.25, 0.125, 0.125]]))
    b = topk_entropy_bounds(x, vocab_size=4, unit="bits")
    assert b.lower[0] == pytest.approx(1.75) and b.upper[0] == pytest.approx(1.75)
    assert b.unit == "bits"


def test_unit_conversion_round_trip():
    assert ead_sdk.to_nats(1.0, "bits") == pytest.approx(math.log(2))
    assert ead_sdk.from_nats(ead_sdk.to_nats(2.5, "bits"), "bits") == pytest.approx(2.5)


def test_a_row_spanning_the_float_range_is_exact_and_silent():
    """Logits 1e308 and -1e308: one certain token, entropy 0, no overflow warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(ead_sdk.entropy(np.array([1e308, -1e308]))) == 0.0

"""Hypothesis strategies for policy tests: entropy streams, logits rows, `Step` batches, episodes.

Needs ``hypothesis`` (a dev dependency of ead-sdk); everything is numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from ead_sdk.interface import Step
from ead_sdk.signals import entropy
from ead_sdk.testing.episodes import Episode, make_episode

EASY = (0.0, 0.7)
"""Entropy range (nats) of the easy regime: a confident model."""
HARD = (1.5, 5.0)
"""Entropy range (nats) of the hard regime: an unsure model."""

_finite = {"allow_nan": False, "allow_infinity": False}


@st.composite
def entropy_streams(draw: Any, min_size: int = 1, max_size: int = 64) -> np.ndarray:
    """A float64 stream of entropies (nats) alternating easy and hard stretches.

    Stretches have random lengths; values are drawn inside `EASY` or `HARD`, with the range
    ends themselves included so that ties with thresholds get exercised.
    """
    size = draw(st.integers(min_size, max_size))
    values: list[float] = []
    hard = draw(st.booleans())
    while len(values) < size:
        run = draw(st.integers(1, max(1, size - len(values))))
        lo, hi = HARD if hard else EASY
        values += draw(
            st.lists(st.one_of(st.floats(lo, hi, **_finite), st.sampled_from([lo, hi])), min_size=run, max_size=run)
        )
        hard = not hard
    return np.asarray(values[:size], dtype=np.float64)


@st.composite
def logits_rows(
    draw: Any, min_vocab: int = 2, max_vocab: int = 64, kinds: tuple[str, ...] = ("peaked", "flat", "masked", "random")
) -> np.ndarray:
    """One float64 logits row: peaked (one dominant token), flat, ``-inf``-masked, or random.

    A row always has at least one finite entry, so it is a valid distribution.
    """
    vocab = draw(st.integers(min_vocab, max_vocab))
    kind = draw(st.sampled_from(kinds))
    base = np.asarray(draw(st.lists(st.floats(-4, 4, **_finite), min_size=vocab, max_size=vocab)))
    if kind == "peaked":
        base[draw(st.integers(0, vocab - 1))] += draw(st.floats(6, 30, **_finite))
    elif kind == "flat":
        base = base * 1e-3 + draw(st.floats(-5, 5, **_finite))
    elif kind == "masked":
        mask = np.asarray(draw(st.lists(st.booleans(), min_size=vocab, max_size=vocab)))
        mask[draw(st.integers(0, vocab - 1))] = False
        base = np.where(mask, -np.inf, base)
    else:
        base = base * draw(st.floats(0.1, 10, **_finite))
    return base


@st.composite
def logits_batches(
    draw: Any, min_rows: int = 1, max_rows: int = 6, min_vocab: int = 2, max_vocab: int = 64
) -> np.ndarray:
    """A ``(B, V)`` batch of `logits_rows` sharing one vocabulary size."""
    vocab = draw(st.integers(min_vocab, max_vocab))
    rows = draw(st.lists(logits_rows(vocab, vocab), min_size=min_rows, max_size=max_rows))
    return np.stack(rows)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


@st.composite
def step_batches(
    draw: Any,
    min_lanes: int = 1,
    max_lanes: int = 6,
    num_models: int = 2,
    logprobs: str = "full",
    top_k: int = 8,
    future: bool = True,
) -> Step:
    """A numpy `Step` of consistent fields: entropy computed from the drawn distribution.

    Args:
        draw: hypothesis' draw function (supplied by ``st.composite``).
        min_lanes: fewest lanes.
        max_lanes: most lanes.
        num_models: models the lanes may be on.
        top_k: k of ``logprobs="topk"``.
        logprobs: ``"full"`` (sorted full-vocabulary log-probs), ``"topk"`` (top-k with token
            ids) or ``"none"``.
        future: fill ``future["disagree"]`` (for replay-only policies).
    """
    logits = draw(logits_batches(min_lanes, max_lanes, min_vocab=max(2, top_k if logprobs == "topk" else 2)))
    n, vocab = logits.shape
    lp = _log_softmax(logits)
    order = np.argsort(-lp, axis=-1, kind="stable")
    sorted_lp = np.take_along_axis(lp, order, axis=-1)
    fields: dict[str, Any] = {}
    if logprobs == "full":
        fields["logprobs"] = sorted_lp
    elif logprobs == "topk":
        fields["logprobs"], fields["token_ids"] = sorted_lp[:, :top_k], order[:, :top_k]
    bools = st.lists(st.booleans(), min_size=n, max_size=n)
    return Step(
        entropy=entropy(logits, "nats"),
        model=np.asarray(draw(st.lists(st.integers(0, num_models - 1), min_size=n, max_size=n)), dtype=np.int64),
        index=np.asarray(draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n)), dtype=np.int64),
        live=np.asarray(draw(bools), dtype=bool),
        token=order[:, 0].astype(np.int64),
        vocab_size=vocab,
        future={"disagree": np.asarray(draw(bools), dtype=bool)} if future else None,
        **fields,
    )


@st.composite
def episodes(
    draw: Any,
    max_lanes: int = 4,
    max_steps: int = 32,
    num_models: int = 2,
    top_k: int | None | str = "either",
) -> Episode:
    """A small synthetic trace (`Episode`): lanes with easy/hard regimes and early finishes.

    Args:
        draw: hypothesis' draw function (supplied by ``st.composite``).
        max_lanes: most lanes.
        max_steps: most positions.
        num_models: number of models.
        top_k: a fixed k, ``None`` for full-vocabulary log-probs, or ``"either"`` to draw one.
    """
    if top_k == "either":
        top_k = draw(st.sampled_from([None, 4, 8]))
    return make_episode(
        draw(st.integers(0, 2**32 - 1)),
        lanes=draw(st.integers(1, max_lanes)),
        steps=draw(st.integers(1, max_steps)),
        num_models=num_models,
        vocab=draw(st.integers(max(2, top_k or 2), 48)),
        top_k=top_k,
    )


traces = episodes
"""Alias: small traces, as `Episode` objects."""

"""Synthetic traces: regime-switching easy/hard text, models whose signals move together.

Each sequence alternates easy and hard segments (a two-state Markov chain). A shared latent
difficulty (the regime's level plus AR(1) noise) drives every model; each model adds its own
noise, so the models' entropies are positively correlated, and larger models are more certain,
as in real small/large pairs. Each model's next-token distribution is geometric over a ranking
of candidate tokens, so the recorded entropy, top-k ids and top-k log-probabilities are exactly
those of one distribution. Smaller models disagree with the largest one's top token more often
on hard segments. Everything is seeded.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy.signal import lfilter

from ead_sdk.errors import TraceError
from ead_sdk.traces.codec import arrays_to_batch
from ead_sdk.traces.schema import FORMAT_VERSION, TraceMeta
from ead_sdk.traces.traceset import TraceSet

_STRIDE = 7919  # a prime: candidate ids (start + j * _STRIDE) % vocab are distinct


def _geometric_entropy(q: np.ndarray) -> np.ndarray:
    """Entropy in nats of P(rank = j) = (1 - q) q^j, j = 0, 1, ..."""
    return (-(1 - q) * np.log1p(-q) - q * np.log(q)) / (1 - q)


def synthetic_traces(
    n_sequences: int = 64,
    length: int | tuple[int, int] = 128,
    *,
    num_models: int = 2,
    vocab_size: int = 1000,
    k: int = 4,
    p_enter_hard: float = 0.05,
    p_leave_hard: float = 0.15,
    correlation: float = 0.8,
    labels: bool = True,
    emitter: str = "small",
    param_counts: tuple[int, ...] | None = None,
    prompt_length: int = 4,
    seed: int = 0,
) -> TraceSet:
    """A seeded synthetic `TraceSet` with the statistics of a real model ladder.

    Args:
        n_sequences: sequences to generate.
        length: tokens per sequence, or an inclusive ``(low, high)`` range drawn per sequence.
        num_models: models in the ladder (smallest first).
        vocab_size: vocabulary size (must not be a multiple of 7919).
        k: top tokens recorded per model and position (0: none).
        p_enter_hard: per-token probability of entering a hard segment.
        p_leave_hard: per-token probability of leaving a hard segment.
        correlation: correlation of each model's noise with the shared latent difficulty.
        labels: add per-sequence correctness labels (``correct``: one bool per single-model
            run; larger models are right more often, and hard sequences are missed more often).
        emitter: who emitted the recorded trajectory: ``"small"``, ``"large"`` or ``"oracle"``
            (the large model on hard segments).
        param_counts: the models' parameter counts (default ``1e9 * 2**(3 * m)``).
        prompt_length: prompt tokens per sequence.
        seed: the random seed.
    """
    _check_request(num_models, vocab_size, k, emitter, correlation)
    rng = np.random.default_rng(seed)
    m = num_models
    if isinstance(length, tuple):
        lengths = rng.integers(length[0], length[1] + 1, n_sequences)
    else:
        lengths = np.full(n_sequences, int(length))
    t_max = int(lengths.max()) if n_sequences else 0
    counts = param_counts or tuple(int(1e9 * 2 ** (3 * i)) for i in range(m))
    settings = {
        "seed": seed,
        "emitter": emitter,
        "p_enter_hard": p_enter_hard,
        "p_leave_hard": p_leave_hard,
        "correlation": correlation,
    }
    meta = TraceMeta(
        format_version=FORMAT_VERSION,
        model_names=tuple(f"synthetic-{i}" for i in range(m)),
        param_counts=counts,
        vocab_size=vocab_size,
        tokenizer_fingerprint="synthetic",
        k=k,
        generation={"synthetic": settings},
    )
    hard, q = _regimes(rng, (t_max, n_sequences, m), p_enter_hard, p_leave_hard, correlation)
    cand, swapped, rank_of = _candidates(rng, hard, m, k, vocab_size)
    emitted, token, token_logprob = _trajectory(rng, emitter, hard, q, cand, swapped, rank_of, k)
    ranks = np.arange(k)
    top_lp = np.log1p(-q)[..., None] + ranks * np.log(q)[..., None]  # (T, n, m, k)
    order = np.where(swapped[..., None] & (ranks < 2), 1 - ranks, ranks)  # candidate at rank j
    top_ids = np.take_along_axis(cand[:, :, None, :], order, 3)

    live = np.arange(t_max)[:, None] < lengths[None, :]
    flat = live.T  # sequence-major selection of (T, n) arrays

    def pick(a: np.ndarray) -> np.ndarray:
        return np.swapaxes(a, 0, 1)[flat]

    correct = _labels(rng, lengths, hard & live, m) if labels else None
    batch = arrays_to_batch(
        meta,
        lengths=lengths,
        prompt_lengths=np.full(n_sequences, prompt_length),
        prompt_ids=rng.integers(0, vocab_size, n_sequences * prompt_length),
        token_ids=pick(token),
        emitted_by=pick(emitted),
        entropy=pick(_geometric_entropy(q)),
        token_logprob=pick(token_logprob),
        top_ids=pick(top_ids) if k else None,
        top_logprobs=pick(top_lp) if k else None,
        sequence_id=np.arange(n_sequences),
        correct=correct,
    )
    return TraceSet(meta, pa.Table.from_batches([batch]), f"<synthetic seed={seed}>")


def _check_request(num_models: int, vocab_size: int, k: int, emitter: str, correlation: float) -> None:
    if num_models < 1:
        raise TraceError(f"num_models must be >= 1, got {num_models}")
    if vocab_size % _STRIDE == 0 or vocab_size < k + 2:
        raise TraceError(f"vocab_size must be >= k + 2 and not a multiple of {_STRIDE}, got {vocab_size}")
    if emitter not in ("small", "large", "oracle"):
        raise TraceError(f"emitter must be 'small', 'large' or 'oracle', got {emitter!r}")
    if not 0.0 <= correlation <= 1.0:
        raise TraceError(f"correlation must be in [0, 1], got {correlation}")


def _regimes(
    rng: np.random.Generator, shape: tuple[int, int, int], p_enter: float, p_leave: float, correlation: float
) -> tuple[np.ndarray, np.ndarray]:
    """Hard segments ``(T, n)`` (a two-state Markov chain per sequence) and each model's ratio ``q``."""
    t_max, n, m = shape
    u = rng.random((t_max, n))
    hard = np.zeros((t_max, n), bool)
    state = rng.random(n) < p_enter / (p_enter + p_leave)
    for t in range(t_max):
        hard[t] = state
        state = np.where(state, u[t] >= p_leave, u[t] < p_enter)
    shared = lfilter([1.0], [1.0, -0.7], rng.standard_normal((t_max, n)), axis=0) * 0.5
    latent = np.where(hard, 1.0, -1.5) + shared
    # Model i: logit of its geometric ratio q; larger models are more certain.
    own = rng.standard_normal((t_max, n, m))
    noise = correlation * latent[..., None] + np.sqrt(1 - correlation**2) * own
    logit_q = noise * 1.2 - 0.9 * np.arange(m)
    return hard, np.clip(1.0 / (1.0 + np.exp(-logit_q)), 1e-4, 0.995)


def _candidates(
    rng: np.random.Generator, hard: np.ndarray, m: int, k: int, vocab_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate tokens per position, and how each model ranks them.

    Model i ranks them like the largest model, except that it swaps the first two with a
    probability that is higher on hard segments and smaller models.
    """
    t_max, n = hard.shape
    start = rng.integers(0, vocab_size, (t_max, n))
    cand = (start[..., None] + _STRIDE * np.arange(k + 2)) % vocab_size  # (T, n, k + 2)
    p_swap = np.where(hard, 0.5, 0.08)[..., None] * (1.0 - np.arange(m) / max(m - 1, 1))
    swapped = rng.random((t_max, n, m)) < p_swap
    swapped[..., m - 1] = False
    rank_of = np.broadcast_to(np.arange(k + 2), (t_max, n, m, k + 2)).copy()
    rank_of[..., 0] = np.where(swapped, 1, 0)
    rank_of[..., 1] = np.where(swapped, 0, 1)  # rank_of[..., c]: rank of candidate c
    return cand, swapped, rank_of


def _trajectory(
    rng: np.random.Generator,
    emitter: str,
    hard: np.ndarray,
    q: np.ndarray,
    cand: np.ndarray,
    swapped: np.ndarray,
    rank_of: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The emitter draws a rank (geometric, capped at k + 1): emitting models, tokens, their logprobs."""
    t_max, n, m = q.shape
    if emitter == "small":
        emitted = np.zeros((t_max, n), np.int64)
    elif emitter == "large":
        emitted = np.full((t_max, n), m - 1, np.int64)
    else:
        emitted = np.where(hard, m - 1, 0)
    q_e = np.take_along_axis(q, emitted[..., None], 2)[..., 0]
    rank = np.minimum(np.floor(np.log(rng.random((t_max, n))) / np.log(q_e)), k + 1)
    rank = rank.astype(np.int64)
    # Candidate that the emitter ranks `rank`: invert its ranking (only the first two may swap).
    sw_e = np.take_along_axis(swapped, emitted[..., None], 2)[..., 0]
    chosen = np.where(sw_e & (rank < 2), 1 - rank, rank)
    token = np.take_along_axis(cand, chosen[..., None], 2)[..., 0]
    token_rank = np.take_along_axis(rank_of, np.broadcast_to(chosen[..., None, None], (*chosen.shape, m, 1)), 3)[..., 0]
    return emitted, token, np.log1p(-q) + token_rank * np.log(q)


def _labels(rng: np.random.Generator, lengths: np.ndarray, hard_live: np.ndarray, m: int) -> np.ndarray:
    """Correctness of each single-model run: larger models are right more often, hard sequences less."""
    hard_share = np.where(lengths > 0, hard_live.sum(0) / np.maximum(lengths, 1), 0.0)
    skill = np.linspace(-0.2, 1.6, m) if m > 1 else np.array([0.8])
    p_ok = 1.0 / (1.0 + np.exp(-(skill[None, :] + 0.5 - 3.0 * hard_share[:, None])))
    return rng.random((len(lengths), m)) < p_ok

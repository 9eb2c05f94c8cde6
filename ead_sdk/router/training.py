"""Training a learned router on traces: a seeded split by sequence, scipy L-BFGS, early stopping.

Why scipy: it is a core dependency (always installed, unlike torch, an optional extra), and a
deterministic full-batch optimiser over numpy fits the models here (a logistic regression or a
one-hidden-layer network over a few dozen features, at most a few million positions) in seconds
on a CPU, with bit-identical results for a given seed and trace.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ead_sdk.errors import RouterTrainingError
from ead_sdk.escalation import ESCALATIONS, rule
from ead_sdk.router.features import FeatureSpec, trace_features
from ead_sdk.router.labels import check_unknown, label_positions
from ead_sdk.router.network import INLINE_LIMIT, RouterNetwork, save_weights
from ead_sdk.traces.traceset import TraceSet

MODELS = ("logistic", "mlp")


@dataclass(frozen=True)
class SplitPositions:
    """Which sequences (and so which flat rows) train, stop early, and test."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def split_sequences(n: int, valid: float, test: float, seed: int) -> SplitPositions:
    """A seeded split of sequence indices ``0..n-1`` into train, validation and test (sorted)."""
    if not (0.0 < valid < 1.0 and 0.0 <= test < 1.0 and valid + test < 1.0):
        raise RouterTrainingError(f"need 0 < valid, 0 <= test and valid + test < 1, got valid={valid}, test={test}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test * n))
    n_valid = max(1, int(round(valid * n)))
    if n - n_test - n_valid < 1:
        raise RouterTrainingError(f"{n} sequences are too few to split into train, validation and test")
    return SplitPositions(
        train=np.sort(order[n_test + n_valid :]),
        valid=np.sort(order[n_test : n_test + n_valid]),
        test=np.sort(order[:n_test]),
    )


def _rows(offsets: np.ndarray, seqs: np.ndarray) -> np.ndarray:
    """Flat row indices of sequences ``seqs``."""
    if seqs.size == 0:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in seqs])


def position_dataset(
    traces: TraceSet,
    spec: FeatureSpec,
    *,
    label: str = "top1",
    p: float = 0.9,
    offset: int = 0,
    max_unknown: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels and sequence index of every decision along ``traces``.

    The decision at position ``t`` reads the smallest model's signals at ``t`` and is labelled with
    `would_differ` at ``t + offset``: 0 for a retrying escalation (the larger model re-emits the
    position just seen), 1 for ``"next"`` (the route is for the following position). Decisions
    whose labelled position lies past the sequence's end, or is undecided by the recording (at most
    ``max_unknown`` of them, see `would_differ`), are dropped.
    """
    flat = traces.flat()
    x = trace_features(flat, spec, source=traces.source)
    y, known = label_positions(flat, label, p=p, source=traces.source)
    check_unknown(flat, known, label, p, max_unknown, traces.source)
    lengths = np.diff(flat.offsets)
    seq = np.repeat(np.arange(lengths.size), lengths)
    pos = np.arange(seq.size) - flat.offsets[seq]
    keep = pos + offset < lengths[seq]
    y_at = np.zeros_like(y)
    y_at[keep] = y[np.flatnonzero(keep) + offset]
    keep[keep] = known[np.flatnonzero(keep) + offset]
    return x[keep], y_at[keep], seq[keep]


def _unpack(theta: np.ndarray, shapes: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    out, at = [], 0
    for d_in, d_out in shapes:
        w = theta[at : at + d_in * d_out].reshape(d_in, d_out)
        at += d_in * d_out
        out.append((w, theta[at : at + d_out]))
        at += d_out
    return out


def _loss_grad(
    theta: np.ndarray, shapes: list[tuple[int, int]], x: np.ndarray, y: np.ndarray, l2: float
) -> tuple[float, np.ndarray]:
    """Mean binary cross-entropy of the logits plus ``l2`` times the squared weights; and its gradient."""
    layers = _unpack(theta, shapes)
    acts = [x]
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.tanh(h)
        acts.append(h)
    z = acts[-1][:, 0]
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
    loss += l2 * sum(float(np.sum(w * w)) for w, _ in layers)
    delta = ((1.0 / (1.0 + np.exp(-z))) - y)[:, None] / x.shape[0]
    grads: list[np.ndarray] = []
    for i in range(len(layers) - 1, -1, -1):
        w, _ = layers[i]
        grads.append(delta.sum(axis=0))
        grads.append((acts[i].T @ delta + 2.0 * l2 * w).ravel())
        if i > 0:
            delta = (delta @ w.T) * (1.0 - acts[i] ** 2)
    return loss, np.concatenate(grads[::-1])


def _bce(theta: np.ndarray, shapes: list[tuple[int, int]], x: np.ndarray, y: np.ndarray) -> float:
    return _loss_grad(theta, shapes, x, y, 0.0)[0]


@dataclass(frozen=True)
class TrainingReport:
    """What training did and how the router does on held-out sequences."""

    model: str
    features: list[str]
    label: str
    escalation: str
    seed: int
    sequences: dict[str, int]
    positions: dict[str, int]
    positive_share: dict[str, float]
    iterations: int
    best_iteration: int
    valid_loss: float
    held_out: dict[str, Any] = field(default_factory=dict)
    test_sequences: list[int] = field(default_factory=list)


def _fit(
    x: np.ndarray,
    y: np.ndarray,
    xv: np.ndarray,
    yv: np.ndarray,
    shapes: list[tuple[int, int]],
    *,
    seed: int,
    l2: float,
    max_iter: int,
    patience: int,
) -> tuple[np.ndarray, int, int, float]:
    """L-BFGS on the training rows; the iterate with the lowest validation loss is kept."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    parts = []
    for i, (d_in, d_out) in enumerate(shapes):
        scale = 0.0 if i == len(shapes) - 1 and len(shapes) == 1 else 1.0 / math.sqrt(d_in)
        parts += [rng.normal(0.0, scale, d_in * d_out), np.zeros(d_out)]
    theta0 = np.concatenate(parts)
    best = {"loss": _bce(theta0, shapes, xv, yv), "theta": theta0.copy(), "it": 0, "count": 0}

    def watch(intermediate_result: Any) -> None:
        best["count"] += 1
        loss = _bce(intermediate_result.x, shapes, xv, yv)
        if loss < best["loss"] - 1e-7:
            best.update(loss=loss, theta=intermediate_result.x.copy(), it=best["count"])
        elif best["count"] - best["it"] >= patience:
            raise StopIteration

    minimize(
        _loss_grad,
        theta0,
        args=(shapes, x, y, l2),
        jac=True,
        method="L-BFGS-B",
        callback=watch,
        options={"maxiter": max_iter},
    )
    return best["theta"], best["count"], best["it"], best["loss"]


def precision_recall(score: np.ndarray, y: np.ndarray, share: float) -> dict[str, float]:
    """Precision and recall of flagging the ``share`` of positions with the highest scores."""
    n = score.size
    flag = np.zeros(n, bool)
    count = int(round(share * n))
    if count:
        flag[np.argsort(-score, kind="stable")[:count]] = True
    tp = int(np.sum(flag & y))
    return {
        "flagged": float(share),
        "precision": tp / max(int(flag.sum()), 1),
        "recall": tp / max(int(y.sum()), 1),
    }


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (the rank-sum statistic, ties counted half)."""
    from scipy.stats import rankdata

    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def train_router(
    traces: TraceSet,
    *,
    features: FeatureSpec | None = None,
    model: str = "logistic",
    label: str = "top1",
    p: float = 0.9,
    escalation: str = "retry_token",
    hidden: int = 16,
    l2: float = 1e-4,
    valid: float = 0.15,
    test: float = 0.25,
    seed: int = 0,
    max_iter: int = 500,
    patience: int = 20,
    max_unknown: float = 0.0,
) -> tuple[RouterNetwork, TrainingReport]:
    """Train a router on ``traces``; return the network and a `TrainingReport`.

    Args:
        traces: recorded traces with top-k log-probabilities (two models).
        features: the features to read (default: `FeatureSpec()` with ``k`` capped at the trace's).
        model: ``"logistic"`` (one layer) or ``"mlp"`` (one hidden ``tanh`` layer).
        hidden: hidden units of the ``"mlp"``.
        label: the rule of `would_differ` (``"top1"`` or ``"top_p"`` with nucleus ``p``).
        p: the nucleus mass of the ``"top_p"`` label.
        escalation: the escalation mode the router will run in; sets which position labels a
            decision (see `position_dataset`).
        l2: weight decay on the standardised features' weights.
        valid: share of sequences held out for early stopping.
        test: share of sequences held out for the report (and nothing else).
        seed: seeds the split and the initial weights.
        max_iter: L-BFGS iterations at most.
        patience: stop after this many iterations without a better validation loss.
        max_unknown: the share of positions whose ``"top_p"`` label the recording may leave
            undecided; they are dropped (default 0: refuse any).
    """
    if model not in MODELS:
        raise RouterTrainingError(f"model must be one of {list(MODELS)}, got {model!r}")
    if escalation not in ESCALATIONS:
        raise RouterTrainingError(f"escalation must be one of {list(ESCALATIONS)}, got {escalation!r}")
    if traces.meta.num_models != 2:
        raise RouterTrainingError(
            f"{traces.source}: a learned router routes two models, the trace has {traces.meta.num_models}"
        )
    if features is None:
        features = FeatureSpec(k=max(2, min(8, int(traces.meta.k))))
    offset = 0 if rule(escalation).retries else 1  # a retried decision changes its own position
    x, y, seq = position_dataset(traces, features, label=label, p=p, offset=offset, max_unknown=max_unknown)
    split = split_sequences(len(traces), valid, test, seed)
    parts = {name: np.isin(seq, getattr(split, name)) for name in ("train", "valid", "test")}
    xt, yt = x[parts["train"]], y[parts["train"]].astype(np.float64)
    if yt.size == 0 or yt.min() == yt.max():
        raise RouterTrainingError(f"{traces.source}: the training positions hold one class only; nothing to learn")
    mean, std = xt.mean(axis=0), xt.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    scaled = {name: (x[m] - mean) / std for name, m in parts.items()}
    d = features.width
    shapes = [(d, 1)] if model == "logistic" else [(d, hidden), (hidden, 1)]
    theta, iters, best_it, vloss = _fit(
        scaled["train"],
        yt,
        scaled["valid"],
        y[parts["valid"]].astype(np.float64),
        shapes,
        seed=seed,
        l2=l2,
        max_iter=max_iter,
        patience=patience,
    )
    layers = _unpack(theta, shapes)
    w0, b0 = layers[0]
    folded = [(w0 / std[:, None], b0 - (mean / std) @ w0)] + layers[1:]  # standardisation into layer 0
    # Weights are kept at float32 precision, exactly what a saved spec holds.
    net = RouterNetwork(
        features,
        tuple((w.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)) for w, b in folded),
    )
    report = _report(
        net,
        x,
        y,
        parts,
        split,
        features,
        model=model,
        label=label,
        escalation=escalation,
        seed=seed,
        iters=iters,
        best_it=best_it,
        vloss=vloss,
    )
    return net, report


def _report(net: RouterNetwork, x, y, parts, split, features, *, model, label, escalation, seed, iters, best_it, vloss):
    import array_api_compat.numpy as xp

    held: dict[str, Any] = {}
    mask = parts["test"] if parts["test"].any() else parts["valid"]
    held["split"] = "test" if parts["test"].any() else "validation"
    score = np.asarray(net.logit(x[mask], xp))
    yh = y[mask]
    held["auc"] = auc(score, yh)
    held["at_share"] = [precision_recall(score, yh, s) for s in (0.2, 0.3, 0.4, 0.5)]
    if "entropy" in features.names:
        held["auc_entropy_alone"] = auc(x[mask][:, features.columns.index("entropy")], yh)
    return TrainingReport(
        model=model,
        features=list(features.names),
        label=label,
        escalation=escalation,
        seed=seed,
        sequences={"train": int(split.train.size), "valid": int(split.valid.size), "test": int(split.test.size)},
        positions={k: int(m.sum()) for k, m in parts.items()},
        positive_share={k: float(y[m].mean()) if m.any() else float("nan") for k, m in parts.items()},
        iterations=iters,
        best_iteration=best_it,
        valid_loss=vloss,
        held_out=held,
        test_sequences=[int(s) for s in split.test],
    )


def router_spec(
    net: RouterNetwork,
    out: str | os.PathLike[str],
    *,
    escalation: str = "retry_token",
    threshold: float = 0.5,
    weights: str = "auto",
) -> dict[str, Any]:
    """Write the ``learned`` policy spec of ``net`` to ``out`` (JSON) and return it.

    ``weights``: ``"inline"`` (numbers in the JSON), ``"file"`` (a safetensors file beside the spec,
    named in it with its SHA-256), or ``"auto"`` (a file beyond `INLINE_LIMIT` numbers).
    """
    from ead_sdk.specs import load_policy

    if weights not in ("auto", "inline", "file"):
        raise RouterTrainingError(f"weights must be 'auto', 'inline' or 'file', got {weights!r}")
    out = Path(out)
    if weights == "file" or (weights == "auto" and net.size > INLINE_LIMIT):
        name = out.with_suffix(".safetensors").name
        sha = save_weights(net, out.parent / name)
        router = net.to_json(name, sha)
    else:
        router = net.to_json()
    spec = {
        "policy": "learned",
        "version": 1,
        "params": {"threshold": threshold, "router": router},
        "escalation": escalation,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / (out.name + ".unchecked")
    tmp.write_text(json.dumps(spec) + "\n", encoding="utf-8")
    try:
        load_policy(tmp)  # the spec loads (and a weights file verifies) before it is published
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return spec

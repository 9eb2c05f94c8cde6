"""Features a learned router reads: signals of the emitting model's distribution, available live.

The same function, `feature_matrix`, builds the feature rows in training (numpy, from a trace)
and in the policy's ``decide`` (any array-API namespace, on device), from the same raw signals:

- ``entropy``: the entropy (nats) of the distribution the token was drawn from;
- ``topk``: its ``k`` largest log-probabilities, sorted, floored at ``-LOGPROB_FLOOR``;
- ``margin``: the gap between the two largest log-probabilities (needs ``k >= 2``);
- ``top1``: the probability of the most likely token;
- ``position``: ``log(1 + index)`` of the token among the generated ones;
- ``window``: the mean entropy of the last ``window`` tokens, this one included (fewer at the start);
- ``token``: the most likely token's id, one-hot over ``buckets`` (ids modulo ``buckets``);
- ``routes``: the share of the previous ``window`` tokens that the largest model emitted (0 at the
  start); in training it is read from the trace's recorded emitters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ead_sdk.arrays import Array
from ead_sdk.errors import RouterTrainingError

FEATURES = ("entropy", "topk", "margin", "top1", "position", "window", "token", "routes")
DEFAULT_FEATURES = ("entropy", "topk", "margin", "top1", "position", "window")
LOGPROB_FLOOR = 30.0
"""Log-probabilities below ``-LOGPROB_FLOOR`` (``-inf`` included) are read as ``-LOGPROB_FLOOR``."""


@dataclass(frozen=True)
class FeatureSpec:
    """Which features, and their sizes: ``k`` log-probabilities, ``window`` tokens of history, ``buckets`` ids."""

    names: tuple[str, ...] = DEFAULT_FEATURES
    k: int = 8
    window: int = 4
    buckets: int = 256

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in FEATURES]
        if unknown or not self.names:
            raise RouterTrainingError(f"unknown feature(s) {unknown or '(none given)'}; known: {list(FEATURES)}")
        if len(set(self.names)) != len(self.names):
            raise RouterTrainingError(f"features listed twice: {list(self.names)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise RouterTrainingError(f"feature k must be an integer >= 1, got {self.k!r}")
        if "margin" in self.names and self.k < 2:
            raise RouterTrainingError("feature 'margin' needs k >= 2 log-probabilities")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or not 1 <= self.window <= 4096:
            raise RouterTrainingError(f"feature window must be an integer in [1, 4096], got {self.window!r}")
        if isinstance(self.buckets, bool) or not isinstance(self.buckets, int) or not 1 <= self.buckets <= 65536:
            raise RouterTrainingError(f"feature buckets must be an integer in [1, 65536], got {self.buckets!r}")

    @property
    def width(self) -> int:
        """Columns of a feature row."""
        return sum({"topk": self.k, "token": self.buckets}.get(n, 1) for n in self.names)

    @property
    def columns(self) -> list[str]:
        """A name per column (``topk`` expands to ``lp0 .. lp{k-1}``)."""
        out: list[str] = []
        for n in self.names:
            if n == "topk":
                out.extend(f"lp{i}" for i in range(self.k))
            elif n == "token":
                out.extend(f"token%{self.buckets}={i}" for i in range(self.buckets))
            else:
                out.append(n)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "k": self.k, "window": self.window, "buckets": self.buckets}

    @classmethod
    def from_dict(cls, data: Any) -> FeatureSpec:
        if not isinstance(data, dict) or not isinstance(data.get("names"), Sequence):
            raise RouterTrainingError(f"router features must be an object with 'names', 'k', 'window', got {data!r}")
        return cls(tuple(data["names"]), data.get("k", 8), data.get("window", 4), data.get("buckets", 256))


def feature_matrix(
    spec: FeatureSpec,
    xp: Any,
    *,
    entropy: Array,
    top: Array,
    index: Array,
    window_mean: Array | None = None,
    route_share: Array | None = None,
    top_id: Array | None = None,
) -> Array:
    """The ``(n, spec.width)`` feature rows from raw signals, all ``(n,)`` but ``top`` ``(n, >= k)``.

    ``top`` holds sorted log-probabilities of the full distribution, ``top_id`` the most likely
    token's id; every float array must share one dtype (``index`` is cast to it).
    """
    dtype = entropy.dtype
    lp = xp.maximum(top[:, : spec.k], xp.asarray(-LOGPROB_FLOOR, dtype=dtype))
    cols = []
    for name in spec.names:
        if name == "entropy":
            cols.append(entropy[:, None])
        elif name == "topk":
            cols.append(lp)
        elif name == "margin":
            cols.append((lp[:, 0] - lp[:, 1])[:, None])
        elif name == "top1":
            cols.append(xp.exp(lp[:, 0])[:, None])
        elif name == "position":
            cols.append(xp.log1p(xp.astype(index, dtype))[:, None])
        elif name == "window":
            cols.append(window_mean[:, None])
        elif name == "token":
            ids = xp.arange(spec.buckets, dtype=top_id.dtype, device=getattr(top_id, "device", None))
            cols.append(xp.astype((top_id % spec.buckets)[:, None] == ids[None, :], dtype))
        else:  # routes
            cols.append(route_share[:, None])
    return xp.concat(cols, axis=1)


def _rolling_mean(values: np.ndarray, offsets: np.ndarray, window: int, *, include_current: bool) -> np.ndarray:
    """Per flat row, the mean of ``values`` over the last ``window`` rows of its own sequence."""
    n = values.shape[0]
    pos = np.arange(n) - np.repeat(offsets[:-1], np.diff(offsets))
    csum = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    end = np.arange(n) + (1 if include_current else 0)
    count = np.minimum(pos + (1 if include_current else 0), window)
    start = end - count
    total = csum[end] - csum[start]
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def trace_features(flat: Any, spec: FeatureSpec, *, model: int = 0, source: str = "traces") -> np.ndarray:
    """Feature rows (float64 ``(N, width)``) of every position of ``flat``, as ``model`` saw it.

    Raises:
        RouterTrainingError: the trace lacks a column a feature needs, or records fewer than ``k``
            log-probabilities.
    """
    import array_api_compat.numpy as xp

    if flat.entropy is None:
        raise RouterTrainingError(f"{source}: router features need the 'entropy' column")
    if flat.top_logprobs is None or flat.meta.k < spec.k:
        raise RouterTrainingError(
            f"{source}: the features read the top-{spec.k} log-probabilities, but the trace records "
            f"k={flat.meta.k}; train with --k {flat.meta.k} or record a larger k"
        )
    entropy = flat.entropy[:, model].astype(np.float64)
    n = entropy.shape[0]
    pos = np.arange(n) - np.repeat(flat.offsets[:-1], np.diff(flat.offsets))
    window_mean = route_share = None
    if "window" in spec.names:
        window_mean = _rolling_mean(entropy, flat.offsets, spec.window, include_current=True)
    if "routes" in spec.names:
        if flat.emitted_by is None:
            raise RouterTrainingError(f"{source}: feature 'routes' needs the 'emitted_by' column")
        large = (flat.emitted_by == flat.meta.num_models - 1).astype(np.float64)
        route_share = _rolling_mean(large, flat.offsets, spec.window, include_current=False)
    return np.asarray(
        feature_matrix(
            spec,
            xp,
            entropy=entropy,
            top=flat.top_logprobs[:, model, :].astype(np.float64),
            index=pos,
            window_mean=window_mean,
            route_share=route_share,
            top_id=flat.top_ids[:, model, 0].astype(np.int64) if flat.top_ids is not None else None,
        )
    )

"""A learned router's network and its serialisation: inline JSON, or safetensors named with a SHA-256.

The network is a stack of dense layers, ``tanh`` between them, one logit out (a logistic
regression is one layer). Feature standardisation is folded into the first layer, so ``decide``
is only matrix multiplies and a comparison. Nothing is pickled: weights are JSON numbers, or
tensors of a safetensors file whose SHA-256 the spec records and every load verifies.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ead_sdk.arrays import Array
from ead_sdk.errors import ParameterError, WeightsIntegrityError
from ead_sdk.router.features import FeatureSpec

ROUTER_FORMAT = 1
INLINE_LIMIT = 20_000
"""Weights beyond this many numbers go to a safetensors file by default (the JSON stays readable)."""


@dataclass(frozen=True)
class RouterNetwork:
    """Dense layers ``(weight (d_in, d_out), bias (d_out,))``; the last has one output, a logit."""

    features: FeatureSpec
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    def __post_init__(self) -> None:
        width = self.features.width
        for i, (w, b) in enumerate(self.layers):
            if w.ndim != 2 or b.shape != (w.shape[1],) or w.shape[0] != width:
                raise ParameterError(
                    f"policy 'learned': router layer {i} has weight {w.shape} and bias {b.shape}, "
                    f"expected ({width}, d) and (d,)"
                )
            if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
                raise ParameterError(f"policy 'learned': router layer {i} holds non-finite weights")
            width = w.shape[1]
        if not self.layers or width != 1:
            raise ParameterError("policy 'learned': the router's last layer must have one output (a logit)")

    @property
    def size(self) -> int:
        """Numbers in all layers."""
        return sum(w.size + b.size for w, b in self.layers)

    def logit(self, x: Array, xp: Any, layers: tuple[tuple[Array, Array], ...] | None = None) -> Array:
        """``(n,)`` logits of feature rows ``x`` (``layers``: the weights already in ``x``'s namespace)."""
        layers = layers if layers is not None else tuple((xp.asarray(w), xp.asarray(b)) for w, b in self.layers)
        h = x
        for i, (w, b) in enumerate(layers):
            h = xp.matmul(h, w) + b
            if i < len(layers) - 1:
                h = xp.tanh(h)
        return h[:, 0]

    def tensors(self) -> dict[str, np.ndarray]:
        """The layers as named float32 tensors (``layer{i}.weight``, ``layer{i}.bias``)."""
        out = {}
        for i, (w, b) in enumerate(self.layers):
            out[f"layer{i}.weight"] = np.ascontiguousarray(w, np.float32)
            out[f"layer{i}.bias"] = np.ascontiguousarray(b, np.float32)
        return out

    def to_json(self, weights_file: str | None = None, sha256: str | None = None) -> dict[str, Any]:
        """The ``router`` parameter of a ``learned`` spec: inline weights, or a file and its hash."""
        data: dict[str, Any] = {"format": ROUTER_FORMAT, "features": self.features.as_dict()}
        if weights_file is None:
            data["layers"] = [
                {"weight": w.astype(np.float32).tolist(), "bias": b.astype(np.float32).tolist()} for w, b in self.layers
            ]
        else:
            data["weights"] = {"file": weights_file, "sha256": sha256, "layers": len(self.layers)}
        return data


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(network: RouterNetwork, path: str | os.PathLike[str]) -> str:
    """Write the layers as a safetensors file; return its SHA-256."""
    try:
        from safetensors.numpy import save_file
    except ImportError as exc:  # pragma: no cover - safetensors ships with the hf extra
        raise WeightsIntegrityError(
            "writing router weights to a file needs safetensors (pip install safetensors)"
        ) from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(network.tensors(), str(path))
    return file_sha256(path)


@lru_cache(maxsize=8)
def _read_verified(path: str, sha256: str, stamp: tuple[int, int]) -> dict[str, np.ndarray]:
    """The tensors of ``path`` after checking its hash (cached per path, hash, size and mtime)."""
    got = file_sha256(path)
    if got != sha256:
        raise WeightsIntegrityError(
            f"policy 'learned': weights file {path!r} has SHA-256 {got}, but the spec expects {sha256}: "
            "the file was changed or replaced; retrain or restore it"
        )
    try:
        from safetensors.numpy import load_file
    except ImportError as exc:  # pragma: no cover - safetensors ships with the hf extra
        raise WeightsIntegrityError(f"reading {path!r} needs safetensors (pip install safetensors)") from exc
    try:
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure of a hashed file is an integrity problem
        raise WeightsIntegrityError(
            f"policy 'learned': weights file {path!r} is not a safetensors file: {exc}"
        ) from None


def _layers_from_file(data: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    ref = data["weights"]
    if not isinstance(ref, dict) or not isinstance(ref.get("file"), str) or not isinstance(ref.get("sha256"), str):
        raise ParameterError(f"policy 'learned': router 'weights' must be {{'file': path, 'sha256': hex}}, got {ref!r}")
    path = ref["file"]
    if not os.path.isfile(path):
        raise WeightsIntegrityError(f"policy 'learned': weights file {path!r} does not exist")
    st = os.stat(path)
    tensors = _read_verified(path, ref["sha256"].lower(), (st.st_size, st.st_mtime_ns))
    count = ref.get("layers", sum(1 for k in tensors if k.endswith(".weight")))
    try:
        return [(tensors[f"layer{i}.weight"], tensors[f"layer{i}.bias"]) for i in range(int(count))]
    except KeyError as exc:
        raise WeightsIntegrityError(f"policy 'learned': weights file {path!r} lacks tensor {exc}") from None


def network_from_json(data: Any) -> RouterNetwork:
    """Parse a ``router`` parameter (see `RouterNetwork.to_json`); a weights file is hash-checked."""
    if not isinstance(data, dict):
        raise ParameterError(f"policy 'learned': 'router' must be an object, got {type(data).__name__}")
    if data.get("format") != ROUTER_FORMAT:
        raise ParameterError(
            f"policy 'learned': router format {data.get('format')!r} cannot be read (this SDK reads {ROUTER_FORMAT})"
        )
    try:
        features = FeatureSpec.from_dict(data.get("features"))
    except ValueError as exc:
        raise ParameterError(f"policy 'learned': {exc}") from None
    if ("layers" in data) == ("weights" in data):
        raise ParameterError("policy 'learned': the router needs exactly one of 'layers' (inline) or 'weights' (file)")
    if "weights" in data:
        raw = _layers_from_file(data)
    else:
        layers = data["layers"]
        if not isinstance(layers, list):
            raise ParameterError("policy 'learned': router 'layers' must be a list of {'weight', 'bias'}")
        try:
            raw = [(np.asarray(layer["weight"], np.float64), np.asarray(layer["bias"], np.float64)) for layer in layers]
        except (KeyError, TypeError, ValueError) as exc:
            raise ParameterError(f"policy 'learned': malformed router layer ({exc})") from None
    layers = tuple((np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in raw)
    return RouterNetwork(features, layers)


def resolve_weights_path(router: Any, base: Path) -> Any:
    """``router`` with a relative weights file made absolute against ``base`` (the spec's folder)."""
    if not isinstance(router, dict) or not isinstance(router.get("weights"), dict):
        return router
    ref = dict(router["weights"])
    if isinstance(ref.get("file"), str) and not os.path.isabs(ref["file"]):
        ref["file"] = str((base / ref["file"]).resolve())
    return {**router, "weights": ref}

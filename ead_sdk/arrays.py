"""Array-API plumbing: one namespace object for numpy and torch alike."""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat

Array = Any  # any array-API array: numpy.ndarray, torch.Tensor, ...


def namespace(*arrays: Array) -> Any:
    """The array-API namespace of ``arrays`` (numpy and torch are wrapped by array_api_compat)."""
    return array_api_compat.array_namespace(*[a for a in arrays if a is not None])


def as_namespace(xp: Any) -> Any:
    """Accept ``numpy``, ``torch`` or an already compatible namespace; return a compatible one."""
    name = getattr(xp, "__name__", "")
    if name == "numpy":
        import array_api_compat.numpy as compat_numpy

        return compat_numpy
    if name == "torch":
        import array_api_compat.torch as compat_torch

        return compat_torch
    return xp


def is_torch(x: Array) -> bool:
    """True for a torch tensor, without importing torch when it is not loaded already."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x: Array) -> Any:
    """A host numpy copy (or view) of ``x``; a sync point, never used inside `Policy.decide`."""
    import numpy as np

    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def default_float(xp: Any) -> Any:
    """The namespace's default floating dtype (float64 for numpy, float32 for torch)."""
    return xp.asarray(0.0).dtype


def device_of(x: Array) -> Any:
    """The device of an array (``"cpu"`` for numpy)."""
    return array_api_compat.device(x)


def floating(x: Array, xp: Any) -> Array:
    """``x`` in a floating dtype fit for exp/log: half precision goes to float32, integers to the default."""
    if xp.isdtype(x.dtype, "real floating"):
        # Half precision loses too much in exp/log: compute those in float32.
        # (Never compare a numpy dtype with None: numpy reads None as float64.)
        half = [getattr(xp, n) for n in ("float16", "bfloat16") if hasattr(xp, n)]
        if any(x.dtype == h for h in half):
            return xp.astype(x, xp.float32)
        return x
    return xp.astype(x, default_float(xp))


def logsumexp(x: Array, xp: Any) -> Array:
    """``log(sum(exp(x)))`` over the last axis, kept as an axis (torch's fused kernel on tensors)."""
    if is_torch(x):
        import torch

        return torch.logsumexp(x, dim=-1, keepdim=True)
    m = xp.max(x, axis=-1, keepdims=True)
    return m + xp.log(xp.sum(xp.exp(x - m), axis=-1, keepdims=True))

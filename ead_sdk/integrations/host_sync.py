"""Catch host synchronisations in policy code, on any device (CPU included).

On CUDA, ``.item()``, ``bool(tensor)``, ``.cpu()`` or a data-dependent shape (``nonzero``) makes
the host wait for the GPU, once per decode step. `forbid_host_sync` intercepts exactly those
tensor operations through a torch function mode, so a test on a CPU-only machine proves that a
policy's ``decide`` would run on the GPU without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ead_sdk.errors import HostSyncError

# Tensor operations that copy a value to the host, or whose output shape depends on values.
SYNCING_OPS = frozenset(
    {
        "item",
        "tolist",
        "numpy",
        "cpu",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "__complex__",
        "nonzero",
        "argwhere",
        "masked_select",
        "unique",
        "unique_consecutive",
        "bincount",
        "repeat_interleave",
    }
)


@contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Raise `HostSyncError` on any tensor operation that would synchronise with the host."""
    import torch
    from torch.overrides import TorchFunctionMode

    class _NoSync(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            name = getattr(func, "__name__", "")
            if name in SYNCING_OPS:
                raise HostSyncError(f"host synchronisation: torch {name}() inside device code")
            if name == "to":
                given = list(args[1:]) + list((kwargs or {}).values())
                target = [a for a in given if isinstance(a, (str, torch.device))]
                on_device = bool(args) and args[0].device.type != "cpu"
                if on_device and any(torch.device(t).type == "cpu" for t in target):
                    raise HostSyncError("host synchronisation: tensor.to('cpu') inside device code")
            return func(*args, **(kwargs or {}))

    with _NoSync():
        yield

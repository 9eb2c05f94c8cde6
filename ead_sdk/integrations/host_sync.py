"""Catch host synchronisations in policy code, on any device (CPU included).

On CUDA, ``.item()``, ``bool(tensor)``, ``.cpu()``, ``np.asarray(tensor)``, a Python bool out of
a comparison (``torch.equal``) or a data-dependent shape (``nonzero``, single-argument
``torch.where``, boolean-mask indexing ``x[mask]`` and ``x[mask] = v``) makes the host wait for
the GPU, once per decode step; so does a copy of host data to the device
(``torch.asarray(1, device=...)``, which array-api-compat makes of a Python scalar argument such
as ``xp.maximum(x, 1)``). `forbid_host_sync` intercepts exactly those tensor operations through
a torch function mode, so a test on a CPU-only machine proves that a policy's ``decide`` would
run on the GPU without them. On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` is the
runtime's own check of the same thing.
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
        "__array__",
        "__contains__",
        "equal",
        "allclose",
        "is_nonzero",
        "nonzero",
        "argwhere",
        "masked_select",
        "unique",
        "unique_consecutive",
        "bincount",
        "repeat_interleave",
    }
)


HOST_DATA_FACTORIES = frozenset({"asarray", "tensor", "as_tensor"})
"""Factories that copy host data (a Python scalar or list) to the tensor's device: on CUDA a
synchronous copy from pageable memory, e.g. array-api-compat's ``maximum(x, 1)`` turning ``1`` into a tensor."""


MASK_INDEXED_OPS = frozenset({"__getitem__", "__setitem__", "index_put", "index_put_", "_index_put_impl_"})
"""Indexing operations whose output shape (or the elements written) a boolean mask decides."""


def _has_mask(index: Any) -> bool:
    """Whether an index (a tensor, array, or a tuple/list of them) holds a boolean mask."""
    if isinstance(index, (tuple, list)):
        return any(_has_mask(i) for i in index)
    dtype = getattr(index, "dtype", None)
    return dtype is not None and str(dtype) in ("torch.bool", "bool", "torch.uint8")


def _device_to_host(src: Any, dst: Any) -> bool:
    """Whether copying ``src`` into ``dst`` moves data from an accelerator to the host."""
    src_type = getattr(getattr(src, "device", None), "type", "cpu")
    dst_type = getattr(getattr(dst, "device", None), "type", "cpu")
    return src_type != "cpu" and dst_type == "cpu"


def _host_data_to_device(args: tuple, kwargs: dict) -> bool:
    """Whether a tensor factory call copies Python data (not a tensor) to an explicitly given device."""
    import torch

    data = args[0] if args else kwargs.get("data", kwargs.get("obj"))
    device = kwargs.get("device")
    return device is not None and not isinstance(data, torch.Tensor)


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
            if name in MASK_INDEXED_OPS and len(args) > 1 and _has_mask(args[1]):
                raise HostSyncError(f"host synchronisation: boolean-mask indexing ({name}) inside device code")
            if name == "where" and len(args) + len(kwargs or {}) == 1:
                raise HostSyncError("host synchronisation: single-argument torch.where() (nonzero) inside device code")
            if name in HOST_DATA_FACTORIES and _host_data_to_device(args, kwargs or {}):
                raise HostSyncError(
                    f"host synchronisation: torch.{name}() copies host data to a device inside device code "
                    "(on CUDA a synchronous copy); build it from a tensor instead (ones_like, full_like)"
                )
            if name == "to":
                given = list(args[1:]) + list((kwargs or {}).values())
                target = [a for a in given if isinstance(a, (str, torch.device))]
                on_device = bool(args) and args[0].device.type != "cpu"
                if on_device and any(torch.device(t).type == "cpu" for t in target):
                    raise HostSyncError("host synchronisation: tensor.to('cpu') inside device code")
            if name == "copy_" and len(args) > 1 and _device_to_host(args[1], args[0]):
                raise HostSyncError("host synchronisation: copy_() of a device tensor into a host one")
            return func(*args, **(kwargs or {}))

    with _NoSync():
        yield

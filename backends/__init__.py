"""Model execution behind the decode loop: the transformers model ladder and the trace backend.

Imported lazily, so ``import ead_sdk.backends`` loads neither torch nor transformers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TraceBackend", "TransformersBackend"]


def __getattr__(name: str) -> Any:
    if name == "TransformersBackend":
        from ead_sdk.backends.hf import TransformersBackend

        return TransformersBackend
    if name == "TraceBackend":
        from ead_sdk.backends.trace import TraceBackend

        return TraceBackend
    raise AttributeError(f"module 'ead_sdk.backends' has no attribute {name!r}")

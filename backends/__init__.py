"""Model execution behind the decode loop: the transformers model ladder and the trace backend.

Imported lazily, so ``import ead_sdk.backends`` loads neither torch nor transformers.
"""

from __future__ import annotations

from ead_sdk.lazy_exports import lazy_exports

_EXPORTS = {
    "LlamaCppEngine": "ead_sdk.backends.llamacpp_engine",
    "TraceBackend": "ead_sdk.backends.trace",
    "TraceSession": "ead_sdk.backends.trace",
    "TransformersBackend": "ead_sdk.backends.hf",
    "TransformersSession": "ead_sdk.backends.hf",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Model execution: the transformers model ladder, the trace backend, and the serving-engine adapters.

Adapters of the lane hand-off router: `OpenAIEngine` (an OpenAI-compatible server over HTTP),
`VLLMEngine` (vLLM in process) and `LlamaCppEngine` (llama.cpp in process). Imported lazily, so
``import ead_sdk.backends`` loads none of torch, transformers, httpx, vLLM or llama.cpp.
"""

from __future__ import annotations

from ead_sdk.lazy_exports import lazy_exports

_EXPORTS = {
    "LlamaCppEngine": "ead_sdk.backends.llamacpp_engine",
    "OpenAIEngine": "ead_sdk.backends.openai_engine",
    "TraceBackend": "ead_sdk.backends.trace",
    "TraceSession": "ead_sdk.backends.trace",
    "TransformersBackend": "ead_sdk.backends.hf",
    "TransformersSession": "ead_sdk.backends.hf",
    "VLLMEngine": "ead_sdk.backends.vllm_engine",
    "VLLMOptions": "ead_sdk.backends.vllm_engine",
    "EntropyProcessor": "ead_sdk.backends.vllm_entropy",
    "RecordingOptions": "ead_sdk.backends.vllm_recording",
    "TraceRecorder": "ead_sdk.backends.vllm_recording",
    "with_scored_models": "ead_sdk.backends.vllm_recording",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

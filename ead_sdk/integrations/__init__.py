"""Taking a chosen policy into production decoders (transformers today; a guide for the rest).

The public names load lazily: ``import ead_sdk.integrations`` imports neither torch nor
transformers; the first use of a name does.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "PolicyObserver": "ead_sdk.integrations.observe",
    "Observation": "ead_sdk.integrations.observe",
    "ObservedLane": "ead_sdk.integrations.observe",
    "ead_generate": "ead_sdk.integrations.transformers",
    "EadGenerateOutput": "ead_sdk.integrations.transformers",
    "custom_generate_path": "ead_sdk.integrations.transformers",
    "forbid_host_sync": "ead_sdk.integrations.host_sync",
    "HostSyncError": "ead_sdk.integrations.host_sync",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ead_sdk.integrations' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

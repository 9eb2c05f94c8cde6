"""Taking a chosen policy into production decoders (transformers today; a guide for the rest).

The public names load lazily: ``import ead_sdk.integrations`` imports neither torch nor
transformers; the first use of a name does.
"""

from __future__ import annotations

from ead_sdk.lazy_exports import lazy_exports

_EXPORTS = {
    "PolicyObserver": "ead_sdk.integrations.observe",
    "Observation": "ead_sdk.integrations.observe",
    "ObservedLane": "ead_sdk.integrations.observe",
    "ead_generate": "ead_sdk.integrations.transformers",
    "EadGenerateOutput": "ead_sdk.integrations.transformers",
    "custom_generate_path": "ead_sdk.integrations.transformers",
    "forbid_host_sync": "ead_sdk.integrations.host_sync",
    "HostSyncError": "ead_sdk.errors",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Testing kit for policy authors: synthetic episodes, a conformance check, strategies, tiny models.

`tiny_llama` builds random-initialised transformers models for live-decoding tests (``hf`` extra).
``from ead_sdk.testing import check_policy`` needs numpy only; torch is used when installed.
The strategies live in `ead_sdk.testing.strategies` and need ``hypothesis``. The pytest plugin
(`ead_sdk.testing.pytest_plugin`, loaded through the ``pytest11`` entry point in every pytest
session) imports this package, so the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ead_sdk.testing.conformance import CHECKS, ConformanceError, ConformanceReport, check_policy
    from ead_sdk.testing.dwell import dwell_violations
    from ead_sdk.testing.episodes import Episode, EpisodeRun, decide_along, make_episode, run_episode, to_namespace
    from ead_sdk.testing.models import tiny_llama

_WHERE = {
    "CHECKS": "conformance",
    "ConformanceError": "conformance",
    "ConformanceReport": "conformance",
    "check_policy": "conformance",
    "Episode": "episodes",
    "EpisodeRun": "episodes",
    "decide_along": "episodes",
    "dwell_violations": "dwell",
    "make_episode": "episodes",
    "run_episode": "episodes",
    "to_namespace": "episodes",
    "tiny_llama": "models",
}

__all__ = [
    "CHECKS",
    "ConformanceError",
    "ConformanceReport",
    "Episode",
    "EpisodeRun",
    "check_policy",
    "decide_along",
    "dwell_violations",
    "make_episode",
    "run_episode",
    "tiny_llama",
    "to_namespace",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"ead_sdk.testing.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'ead_sdk.testing' has no attribute {name!r}")

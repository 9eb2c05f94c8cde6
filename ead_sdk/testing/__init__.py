"""Testing kit for policy authors: synthetic episodes, a conformance check, strategies, tiny models.

`tiny_llama` builds random-initialised transformers models for live-decoding tests (``hf`` extra).
``from ead_sdk.testing import check_policy`` needs numpy only; torch is used when installed.
The strategies live in `ead_sdk.testing.strategies` and need ``hypothesis``. The pytest plugin
(`ead_sdk.testing.pytest_plugin`, loaded through the ``pytest11`` entry point in every pytest
session) imports this package, so the names below load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ead_sdk.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from ead_sdk.testing.conformance import (
        CHECKS,
        POLICY_CHECKS,
        CheckOptions,
        ConformanceError,
        ConformanceReport,
        check_policy,
        parametrize_with_checks,
    )
    from ead_sdk.testing.dwell import dwell_violations
    from ead_sdk.testing.episodes import Episode, EpisodeRun, decide_along, make_episode, run_episode, to_namespace
    from ead_sdk.testing.fake_openai import FakeOpenAI, Fault, ToyLM
    from ead_sdk.testing.models import tiny_llama

_WHERE = {
    "CHECKS": "ead_sdk.testing.conformance",
    "POLICY_CHECKS": "ead_sdk.testing.conformance",
    "CheckOptions": "ead_sdk.testing.conformance",
    "parametrize_with_checks": "ead_sdk.testing.conformance",
    "ConformanceError": "ead_sdk.testing.conformance",
    "ConformanceReport": "ead_sdk.testing.conformance",
    "check_policy": "ead_sdk.testing.conformance",
    "Episode": "ead_sdk.testing.episodes",
    "EpisodeRun": "ead_sdk.testing.episodes",
    "decide_along": "ead_sdk.testing.episodes",
    "make_episode": "ead_sdk.testing.episodes",
    "run_episode": "ead_sdk.testing.episodes",
    "to_namespace": "ead_sdk.testing.episodes",
    "tiny_llama": "ead_sdk.testing.models",
    "dwell_violations": "ead_sdk.testing.dwell",
    "FakeOpenAI": "ead_sdk.testing.fake_openai",
    "Fault": "ead_sdk.testing.fake_openai",
    "ToyLM": "ead_sdk.testing.fake_openai",
}

__all__ = [
    "CHECKS",
    "POLICY_CHECKS",
    "CheckOptions",
    "ConformanceError",
    "ConformanceReport",
    "Episode",
    "EpisodeRun",
    "FakeOpenAI",
    "Fault",
    "check_policy",
    "decide_along",
    "dwell_violations",
    "make_episode",
    "parametrize_with_checks",
    "run_episode",
    "tiny_llama",
    "to_namespace",
    "ToyLM",
]

__getattr__, __dir__ = lazy_exports(__name__, _WHERE)

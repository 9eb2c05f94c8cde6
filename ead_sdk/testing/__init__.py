"""Testing kit for policy authors: synthetic episodes, a conformance check, hypothesis strategies.

``from ead_sdk.testing import check_policy`` needs numpy only; torch is used when installed.
The strategies live in `ead_sdk.testing.strategies` and need ``hypothesis``. The pytest plugin
(`ead_sdk.testing.pytest_plugin`, loaded through the ``pytest11`` entry point) offers fixtures.
"""

from __future__ import annotations

from ead_sdk.testing.conformance import CHECKS, ConformanceError, ConformanceReport, check_policy
from ead_sdk.testing.episodes import Episode, EpisodeRun, make_episode, run_episode, to_namespace

__all__ = [
    "CHECKS",
    "ConformanceError",
    "ConformanceReport",
    "Episode",
    "EpisodeRun",
    "check_policy",
    "make_episode",
    "run_episode",
    "to_namespace",
]

"""pytest plugin of ead-sdk (entry point ``pytest11``): fixtures for policy authors.

Loaded in every pytest session where ead-sdk is installed, so it imports nothing heavy at
import time: each fixture imports what it needs (hypothesis only for `step_batches`).
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def policy_checker() -> Any:
    """`ead_sdk.testing.check_policy`: ``policy_checker(MyPolicy, params={...})``."""
    from ead_sdk.testing.conformance import check_policy

    return check_policy


@pytest.fixture
def episode_factory() -> Any:
    """`ead_sdk.testing.make_episode`: ``episode_factory(seed, lanes=4, steps=24, top_k=8)``."""
    from ead_sdk.testing.episodes import make_episode

    return make_episode


@pytest.fixture
def run_policy() -> Any:
    """`ead_sdk.testing.run_episode`: drive an episode with a policy in closed loop."""
    from ead_sdk.testing.episodes import run_episode

    return run_episode


@pytest.fixture
def ead_strategies() -> Any:
    """The `ead_sdk.testing.strategies` module (skips the test when hypothesis is missing)."""
    pytest.importorskip("hypothesis")
    from ead_sdk.testing import strategies

    return strategies


@pytest.fixture
def step_batches(ead_strategies: Any) -> Any:
    """The `step_batches` hypothesis strategy factory, e.g. ``step_batches(logprobs="topk")``."""
    return ead_strategies.step_batches

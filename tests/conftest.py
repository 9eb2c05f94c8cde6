"""Suite-wide settings: deliberate thread counts and hypothesis profiles.

Locally (profile ``default``) hypothesis explores at random, so every run may find a new bug: fix
it, never pin a seed to dodge it. CI (``CI=true``) selects the derandomized ``ci`` profile, so an
unrelated change never fails on a new random find. The session header says which profile runs and
how its examples are seeded.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("default", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=40,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = "ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "default")
settings.load_profile(PROFILE)

try:  # two test processes that each use every core run 10-100x slower
    import torch

    torch.set_num_threads(1)
except ImportError:  # the core suite runs without torch
    pass

# Under CI=true a skip fails the run (tests/ci_skips.py); pytest finds hooks by name here.
from ci_skips import pytest_configure, pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402, F401


def pytest_report_header(config):
    """Say which hypothesis profile runs, and the seed of the derandomized one."""
    if settings().derandomize:
        return (
            f"hypothesis profile {PROFILE!r}: derandomized, each test's seed is a hash of the test itself "
            "(the same examples on every run; reproduce with HYPOTHESIS_PROFILE=ci)"
        )
    return f"hypothesis profile {PROFILE!r}: random exploration (a failure prints its @reproduce_failure blob)"

"""Suite-wide settings: deliberate thread counts and hypothesis profiles."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("default", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "default"))

try:  # two test processes that each use every core run 10-100x slower
    import torch

    torch.set_num_threads(1)
except ImportError:  # the core suite runs without torch
    pass

# Under CI=true a skip fails the run (tests/ci_skips.py); pytest finds hooks by name here.
from ci_skips import pytest_configure, pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402, F401

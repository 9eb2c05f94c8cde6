"""Under ``CI=true`` a skipped test fails the run: what the README's install provides must run.

A module-level ``importorskip`` makes dozens of tests vanish when an extra fails to import; in CI
that would pass silently. Only a test marked ``needs_hardware`` (a GPU the install cannot
provide) may skip there. `tests/conftest.py` imports these hooks.
"""

from __future__ import annotations

import os

import pytest

MARKER = "needs_hardware"


def in_ci() -> bool:
    """Whether the run is a CI run (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _failure(what: str, longrepr: object) -> str:
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = str(reason).removeprefix("Skipped: ")
    return (
        f"{what} was skipped under CI=true ({reason}); everything the README's install provides must "
        f"run in CI (mark a test that needs hardware the install cannot provide with @pytest.mark.{MARKER})"
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker of tests allowed to skip in CI."""
    config.addinivalue_line("markers", f"{MARKER}: needs hardware the README's install cannot provide (a GPU)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Turn a test's skip into a failure in CI, unless the test needs absent hardware."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker(MARKER) is None:
        report.outcome = "failed"
        report.longrepr = _failure(item.nodeid, report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    """Turn a module-level skip (``importorskip`` of an extra) into a collection error in CI."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped:
        report.outcome = "failed"
        report.longrepr = _failure(collector.nodeid or "a module", report.longrepr)

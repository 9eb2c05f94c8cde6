"""Under CI=true a skip fails the run, except for tests marked as needing absent hardware."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

TESTS = """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="an extra is missing")
def test_skipped_by_condition():
    pass

@pytest.mark.needs_hardware
@pytest.mark.skipif(True, reason="needs a CUDA device")
def test_needs_a_gpu():
    pass

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
"""


def _run(tmp_path: Path, ci: str | None, target: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(
        "from ci_skips import pytest_configure, pytest_make_collect_report, pytest_runtest_makereport\n"
    )
    (tmp_path / "test_sample.py").write_text(TESTS)
    (tmp_path / "test_module_skip.py").write_text(
        "import pytest\npytest.importorskip('no_such_module_xyz')\n\ndef test_never():\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:randomly", "-p", "no:cacheprovider", target],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_skips_fail_the_run_under_ci(tmp_path):
    done = _run(tmp_path, "true", "test_sample.py")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "test_skipped_by_condition was skipped under CI=true (an extra is missing)" in out
    assert "1 passed, 1 skipped, 1 xfailed, 1 error" in out  # the skip at setup is reported as an error


def test_a_module_level_importorskip_fails_the_run_under_ci(tmp_path):
    done = _run(tmp_path, "true", "test_module_skip.py")
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "test_module_skip.py was skipped under CI=true" in out and "no_such_module_xyz" in out


def test_skips_are_plain_skips_outside_ci(tmp_path):
    done = _run(tmp_path, None, ".")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 passed" in out and "3 skipped" in out and "1 xfailed" in out

"""The example third-party package in docs/examples/ is discovered as a real distribution and conforms."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from ead_sdk.registry import PolicyRegistry
from ead_sdk.testing import check_policy

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "ead-policy-streak"


def install_as_distribution(project: Path, site: Path) -> str:
    """Place ``project`` in ``site`` as an installed distribution: its package and a ``*.dist-info``
    holding METADATA and entry_points.txt generated from its pyproject.toml."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    name, version = meta["project"]["name"], meta["project"]["version"]
    for package in meta["tool"]["setuptools"]["packages"]:
        shutil.copytree(project / package, site / package)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = meta["project"]["entry-points"]
    text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for g, eps in groups.items())
    (info / "entry_points.txt").write_text(text)
    return name


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("EAD_SDK_PLUGINS", raising=False)
    monkeypatch.delenv("EAD_SDK_DISABLE_PLUGINS", raising=False)
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("ead_policy_streak")]:
        del sys.modules[mod]


def test_example_is_discovered_with_its_distribution_and_conforms(site):
    dist = install_as_distribution(EXAMPLE, site)
    importlib.invalidate_caches()
    registry = PolicyRegistry()
    assert registry.problems == []
    info = registry.get("streak")
    assert (info.distribution, info.distribution_version, info.plugin) == (dist, "0.1.0", "streak")
    assert "rolling_entropy" in registry.policies  # the built-ins arrive the same way
    report = check_policy(info.cls, params={"patience": 2}, lane_variants=[{"patience": 1}, {"threshold": 2.5}])
    assert report.policy == "streak"


def test_example_own_tests_pass_against_the_installed_sdk(site):
    install_as_distribution(EXAMPLE, site)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr

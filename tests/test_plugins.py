"""Plugin discovery through real distributions: a ``*.dist-info`` with ``entry_points.txt``."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ead_sdk
from ead_sdk.registry import PluginWarning, PolicyRegistry

POLICY_SOURCE = '''
from ead_sdk import Param, Policy, hookimpl, mask_state
from ead_sdk.arrays import as_namespace, namespace


class {cls}(Policy):
    """A test policy: always the small model."""

    name = "{name}"
    parameters = (Param("level", "float", default=0.5, low=0.0, high=1.0),)

    def init_state(self, n, xp, device=None):
        return self.lane_params(n, as_namespace(xp), device)

    def decide(self, state, step):
        xp = namespace(step.entropy)
        return xp.zeros_like(step.model), mask_state(step.live, state, state)
'''


def make_distribution(root: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """Write modules and a ``<dist>-1.0.dist-info`` with entry points into ``root``."""
    for mod, source in modules.items():
        (root / f"{mod}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[ead_sdk]\n{eps}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh directory on sys.path for fake installed distributions."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("EAD_SDK_PLUGINS", raising=False)
    monkeypatch.delenv("EAD_SDK_DISABLE_PLUGINS", raising=False)
    importlib.invalidate_caches()
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("eadtest_")]:
        del sys.modules[mod]


def good_plugin(name="eadtest_good", policy="shiny", cls="Shiny"):
    return POLICY_SOURCE.format(cls=cls, name=policy) + textwrap.dedent(
        f"""

        @hookimpl
        def register_policies(register):
            register({cls})
        """
    )


def test_builtins_come_from_the_ead_sdk_distribution():
    reg = PolicyRegistry()
    assert {"rolling_entropy", "fixed"} <= set(reg.policies)
    assert reg.policies["rolling_entropy"].distribution == "ead-sdk"
    assert reg.policies["rolling_entropy"].plugin == "rolling_entropy"


def test_third_party_distribution_is_discovered(site):
    make_distribution(site, "shiny-policies", {"eadtest_good": good_plugin()}, {"shiny": "eadtest_good"})
    reg = PolicyRegistry()
    info = reg.policies["shiny"]
    assert info.distribution == "shiny-policies"
    assert info.distribution_version == "1.0"
    assert info.parameters["level"]["default"] == 0.5
    assert info.as_dict()["class"] == "eadtest_good.Shiny"
    assert not reg.problems
    policy = ead_sdk.load_policy({"policy": "shiny", "params": {"level": 0.25}}, registry=reg)
    assert policy.params["level"] == 0.25


def test_process_wide_registry_sees_new_distribution(site):
    make_distribution(site, "shiny-policies", {"eadtest_good": good_plugin()}, {"shiny": "eadtest_good"})
    try:
        ead_sdk.reload_plugins()
        assert ead_sdk.installed_policies()["shiny"].distribution == "shiny-policies"
    finally:
        sys.path.remove(str(site))
        importlib.invalidate_caches()
        ead_sdk.reload_plugins()
    assert "shiny" not in ead_sdk.installed_policies()


def test_broken_import_is_reported_without_hiding_others(site):
    make_distribution(
        site, "broken-policies", {"eadtest_broken": "import not_a_module_anywhere\n"}, {"broken": "eadtest_broken"}
    )
    make_distribution(site, "shiny-policies", {"eadtest_good": good_plugin()}, {"shiny": "eadtest_good"})
    with pytest.warns(PluginWarning, match="broken-policies"):
        reg = PolicyRegistry()
    assert "shiny" in reg.policies and "rolling_entropy" in reg.policies
    [problem] = reg.problems
    assert problem.stage == "import" and problem.distribution == "broken-policies"
    assert "not_a_module_anywhere" in problem.message
    with pytest.raises(ead_sdk.PluginError, match="broken-policies"):
        reg.check()
    with pytest.raises(ead_sdk.UnknownPolicyError, match="failed to load.*broken-policies"):
        reg.get("broken")


def test_bad_hook_signature_is_reported(site):
    source = POLICY_SOURCE.format(cls="Bad", name="bad") + textwrap.dedent(
        """

        @hookimpl
        def register_policies(register, extra_argument):
            register(Bad)
        """
    )
    make_distribution(site, "bad-sig", {"eadtest_badsig": source}, {"badsig": "eadtest_badsig"})
    with pytest.warns(PluginWarning, match="bad-sig"):
        reg = PolicyRegistry()
    assert "bad" not in reg.policies
    assert reg.problems[0].stage == "validate" and "extra_argument" in reg.problems[0].message


def test_misspelled_hook_is_caught_by_check_pending(site):
    source = POLICY_SOURCE.format(cls="Typo", name="typo") + textwrap.dedent(
        """

        @hookimpl
        def register_polices(register):
            register(Typo)
        """
    )
    make_distribution(site, "typo-policies", {"eadtest_typo": source}, {"typo": "eadtest_typo"})
    with pytest.warns(PluginWarning, match="register_polices"):
        reg = PolicyRegistry()
    assert reg.problems[0].stage == "validate"
    assert "rolling_entropy" in reg.policies


def test_duplicate_names_are_refused_naming_both_providers(site):
    make_distribution(site, "aaa-policies", {"eadtest_a": good_plugin("eadtest_a", "dup", "DupA")}, {"a": "eadtest_a"})
    make_distribution(site, "bbb-policies", {"eadtest_b": good_plugin("eadtest_b", "dup", "DupB")}, {"b": "eadtest_b"})
    with pytest.warns(PluginWarning, match="both 'aaa-policies'.*and 'bbb-policies'"):
        reg = PolicyRegistry()
    assert reg.policies["dup"].distribution == "aaa-policies"
    assert reg.problems[0].stage == "duplicate"
    with pytest.raises(ead_sdk.DuplicatePolicyError):
        reg.check()


def test_duplicate_of_a_builtin_keeps_the_builtin(site):
    make_distribution(
        site, "evil", {"eadtest_evil": good_plugin("eadtest_evil", "fixed", "Evil")}, {"evil": "eadtest_evil"}
    )
    with pytest.warns(PluginWarning, match="both 'ead-sdk'"):
        reg = PolicyRegistry()
    assert reg.policies["fixed"].distribution == "ead-sdk"


def test_register_refuses_what_is_not_a_policy(site):
    source = textwrap.dedent(
        """
        from ead_sdk import hookimpl

        @hookimpl
        def register_policies(register):
            register(dict)
        """
    )
    make_distribution(site, "wrong-thing", {"eadtest_wrong": source}, {"wrong": "eadtest_wrong"})
    with pytest.warns(PluginWarning, match="Policy subclass"):
        reg = PolicyRegistry()
    assert reg.problems[0].stage == "register"


def test_allow_list_and_disable_switch(site, monkeypatch):
    make_distribution(site, "shiny-policies", {"eadtest_good": good_plugin()}, {"shiny": "eadtest_good"})
    make_distribution(
        site,
        "other-policies",
        {"eadtest_other": good_plugin("eadtest_other", "other", "Other")},
        {"other": "eadtest_other"},
    )
    monkeypatch.setenv("EAD_SDK_PLUGINS", "shiny-policies")
    reg = PolicyRegistry()
    assert "shiny" in reg.policies and "other" not in reg.policies
    assert "eadtest_other" not in sys.modules  # never imported, not just hidden
    assert "rolling_entropy" in reg.policies  # built-ins always load
    assert any("other" in s for s in reg.skipped)
    monkeypatch.setenv("EAD_SDK_PLUGINS", "other")  # a bare entry-point name is not a distribution
    assert "other" not in PolicyRegistry().policies
    monkeypatch.setenv("EAD_SDK_PLUGINS", "Other_Policies:other")  # dist:entry-point, any PEP 503 spelling
    reg = PolicyRegistry()
    assert "other" in reg.policies and "shiny" not in reg.policies
    monkeypatch.setenv("EAD_SDK_PLUGINS", "SHINY.policies")
    assert "shiny" in PolicyRegistry().policies
    monkeypatch.delenv("EAD_SDK_PLUGINS")
    monkeypatch.setenv("EAD_SDK_DISABLE_PLUGINS", "1")
    reg = PolicyRegistry()
    assert "shiny" not in reg.policies and "other" not in reg.policies and "fixed" in reg.policies


def test_in_process_plugin_registration_and_removal():
    """Tests (and notebooks) can register a plugin object directly, and undo it."""
    namespace: dict = {}
    exec(compile(good_plugin("inproc", "inproc_policy", "InProc"), "inproc", "exec"), namespace)  # noqa: S102

    class Plugin:
        register_policies = staticmethod(namespace["register_policies"])

    reg = PolicyRegistry()
    assert reg.add_plugin(Plugin(), name="inproc")
    assert reg.policies["inproc_policy"].plugin == "inproc"
    reg.remove_plugin("inproc")
    assert "inproc_policy" not in reg.policies


def test_ead_policies_command_lists_distributions():
    out = subprocess.run(
        [sys.executable, "-m", "ead_sdk.cli", "policies", "--json"], capture_output=True, text=True, check=True
    )
    assert '"distribution": "ead-sdk"' in out.stdout and '"rolling_entropy"' in out.stdout


def test_import_does_not_load_torch_or_transformers():
    code = "import ead_sdk, sys; ead_sdk.installed_policies(); assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _impostor(site: Path) -> None:
    """A ``ead_sdk-99.0.dist-info`` (``Name: ead-sdk``) first on sys.path, registering ``rolling_entropy``."""
    (site / "eadtest_impostor.py").write_text(
        textwrap.dedent(good_plugin("eadtest_impostor", "rolling_entropy", "Fake"))
    )
    info = site / "ead_sdk-99.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ead-sdk\nVersion: 99.0\n")
    (info / "entry_points.txt").write_text("[ead_sdk]\nrolling_entropy = eadtest_impostor\n")


@pytest.mark.parametrize("disabled", [False, True])
def test_a_distribution_claiming_the_sdks_name_does_not_replace_the_builtins(site, monkeypatch, disabled):
    """Built-ins are known by their module inside ead_sdk, not by the name a distribution claims.

    Before, the impostor hid the real distribution's entry points (importlib keeps one
    distribution per name), its policy was listed as coming from 'ead-sdk', nothing was
    reported, and EAD_SDK_DISABLE_PLUGINS=1 did not stop it.
    """
    _impostor(site)
    if disabled:
        monkeypatch.setenv("EAD_SDK_DISABLE_PLUGINS", "1")
    with pytest.warns(
        PluginWarning, match=r"'ead-sdk' 99.0 calls itself the SDK but its entry point 'eadtest_impostor'"
    ):
        reg = PolicyRegistry()
    assert {"fixed", "hysteresis", "cost_budget", "top_h"} <= set(reg.policies)
    info = reg.policies["rolling_entropy"]
    assert info.cls.__module__ == "ead_sdk.policies.rolling_entropy" and info.distribution == "ead-sdk"
    assert "eadtest_impostor" not in sys.modules
    assert len(reg.problems) == 1 and "not loaded" in str(reg.problems[0])


def test_ead_policies_prints_each_problem_once(site):
    _impostor(site)
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-m", "ead_sdk.cli", "policies"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("calls itself the SDK") == 1, out.stderr

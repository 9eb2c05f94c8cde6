"""The error contract: one module holds every exception class, all exported, none raised bare."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import ead_sdk
import ead_sdk.errors as errors
from ead_sdk.registry import PolicyRegistry

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ead_sdk", "policies", "simulators", "backends")


def _sources():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _bases(node: ast.ClassDef) -> set[str]:
    return {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}


def test_every_exception_class_lives_in_errors_py():
    outside = []
    for path in _sources():
        if path == ROOT / "ead_sdk" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                b.endswith(("Error", "Warning", "Exception")) for b in _bases(node)
            ):
                outside.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not outside, outside


def test_every_error_class_is_exported():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert classes
    for cls in classes:
        assert getattr(ead_sdk, cls.__name__) is cls
        assert cls.__name__ in ead_sdk.__all__


def test_the_root_is_never_raised_bare():
    bare = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id == "EadError":
                    bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bare, bare


@pytest.mark.parametrize(
    "cls",
    [errors.ArgumentError, errors.EngineError, errors.StateError, errors.CostModelError, errors.UserError],
)
def test_argument_errors_are_value_errors(cls):
    assert issubclass(cls, errors.EadError) and issubclass(cls, ValueError)


def test_plugin_errors_name_the_plugin():
    registry = PolicyRegistry(entry_points=False)

    class NotAPolicyPlugin:
        @staticmethod
        @ead_sdk.hookimpl
        def register_policies(register):
            register(object)

    with pytest.warns(ead_sdk.PluginWarning):
        registry.add_plugin(NotAPolicyPlugin, name="broken")
    with pytest.raises(ead_sdk.PluginError) as info:
        registry.check()
    assert info.value.plugin == ["broken"]


def test_a_replay_only_policy_is_refused_live_with_its_own_error():
    from ead_sdk.backends.trace import TraceBackend
    from ead_sdk.simulators import synthetic_traces

    backend = TraceBackend(synthetic_traces(2, 8, seed=0))
    with pytest.raises(ead_sdk.ReplayOnlyPolicyError, match="replay-only"):
        ead_sdk.generate(backend, ead_sdk.load_policy({"policy": "oracle"}))


def test_the_old_validate_hook_name_is_refused_loudly():
    from ead_sdk.policies.rolling_entropy import RollingEntropyPolicy

    with pytest.raises(TypeError, match=r"called configure\(\) now"):

        class Old(RollingEntropyPolicy):
            def validate(self):
                pass

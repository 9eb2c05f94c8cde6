"""Specs round-trip, and every malformed spec is a clear error naming the policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ead_sdk
from ead_sdk import ParameterError, SpecError, SpecVersionError, UnknownPolicyError, load_policy, save_policy
from ead_sdk.interface import ESCALATIONS

rolling_params = st.fixed_dictionaries(
    {},
    optional={
        "window": st.integers(1, 64),
        "threshold": st.one_of(
            st.floats(0, 10, allow_nan=False),
            st.lists(st.floats(0, 10), min_size=1, max_size=3, unique=True)
            .map(sorted)
            .filter(lambda xs: all(b > a for a, b in zip(xs, xs[1:], strict=False))),
        ),
        "min_dwell": st.integers(0, 10),
        "unit": st.sampled_from(["bits", "nats"]),
    },
)


@given(rolling_params, st.sampled_from(ESCALATIONS), st.integers(0, 1))
def test_spec_round_trips_through_json(params, escalation, initial):
    """load_policy(json(policy.spec())).spec() == policy.spec()."""
    policy = load_policy(
        {"policy": "rolling_entropy", "params": params, "escalation": escalation, "initial_model": initial}
    )
    spec = policy.spec()
    again = load_policy(json.loads(json.dumps(spec)))
    assert again.spec() == spec
    assert type(again) is type(policy)
    # What was asked for survives, not only a fixed point of spec(): every given parameter (a
    # ladder as its list), the escalation mode and the initial model.
    assert again.escalation == escalation and again.initial_model == initial
    assert spec["escalation"] == escalation and spec["initial_model"] == initial
    for name, value in params.items():
        assert again.params[name] == value, name
        assert spec["params"][name] == value, name


@given(st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=20))
def test_per_lane_parameters_round_trip(values):
    """Per-lane arrays serialise as {"per_lane": [...]} and come back as arrays."""
    policy = load_policy({"policy": "rolling_entropy", "params": {"threshold": {"per_lane": values}}})
    assert isinstance(policy.params["threshold"], np.ndarray)
    assert load_policy(policy.spec()).spec() == policy.spec()
    state = policy.init_state(len(values), np)
    np.testing.assert_allclose(state["threshold"][:, 0] / np.log(2), values)


def test_spec_from_file_string_and_name(tmp_path):
    policy = load_policy({"policy": "rolling_entropy", "params": {"window": 7}})
    path = ead_sdk.save_policy(policy, tmp_path / "sub" / "spec.json")
    assert load_policy(path).spec() == policy.spec()
    assert load_policy(str(path)).spec() == policy.spec()
    assert load_policy(json.dumps(policy.spec())).spec() == policy.spec()
    assert load_policy("rolling_entropy").params["window"] == 5
    assert not list((tmp_path / "sub").glob(".spec.json.*"))  # no temporary left behind


@pytest.mark.parametrize(
    "spec, error, message",
    [
        (
            {"policy": "no_such_policy"},
            UnknownPolicyError,
            "unknown policy 'no_such_policy'; installed policies: .*rolling_entropy",
        ),
        (
            {"policy": "rolling_entropy", "params": {"windw": 3}},
            ParameterError,
            r"'rolling_entropy': unknown parameter\(s\) \['windw'\]",
        ),
        ({"policy": "rolling_entropy", "params": {"window": 0}}, ParameterError, "'window' must be >= 1, got 0"),
        ({"policy": "rolling_entropy", "params": {"window": 2.5}}, ParameterError, "'window' must be an integer"),
        (
            {"policy": "rolling_entropy", "params": {"threshold": "high"}},
            ParameterError,
            "'threshold' must be a number",
        ),
        ({"policy": "rolling_entropy", "params": {"threshold": [2.0, 1.0]}}, ParameterError, "strictly increasing"),
        ({"policy": "rolling_entropy", "params": {"threshold": float("nan")}}, ParameterError, "finite"),
        ({"policy": "rolling_entropy", "params": {"unit": "hartley"}}, ParameterError, "must be one of"),
        (
            {"policy": "rolling_entropy", "params": {"unit": {"per_lane": ["bits"]}}},
            ParameterError,
            "cannot be given per lane",
        ),
        (
            {"policy": "rolling_entropy", "version": 99},
            SpecVersionError,
            "version 99 is newer than the installed plugin",
        ),
        ({"policy": "rolling_entropy", "version": 0}, SpecVersionError, "integer >= 1"),
        ({"policy": "rolling_entropy", "escalation": "later"}, ParameterError, "escalation must be one of"),
        ({"policy": "rolling_entropy", "initial_model": -1}, ParameterError, "initial_model"),
        ({"policy": "rolling_entropy", "paramz": {}}, SpecError, r"unknown key\(s\) \['paramz'\]"),
        ({"params": {}}, SpecError, "needs a 'policy' name"),
        ({"policy": "rolling_entropy", "params": [1]}, ParameterError, "'params' must be an object"),
    ],
)
def test_bad_specs(spec, error, message):
    with pytest.raises(error, match=message):
        load_policy(spec)


def test_bad_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_policy(bad)
    with pytest.raises(SpecError, match="does not exist"):
        load_policy(tmp_path / "missing.json")
    arr = tmp_path / "list.json"
    arr.write_text("[1, 2]")
    with pytest.raises(SpecError, match="must be a JSON object"):
        load_policy(arr)


def test_older_spec_versions_go_through_upgrade_params():
    from policies.rolling_entropy import RollingEntropyPolicy

    class V2(RollingEntropyPolicy):
        version = 2

        @classmethod
        def upgrade_params(cls, version, params):
            if version == 1 and "win" in params:
                params["window"] = params.pop("win")
            return params

    reg = ead_sdk.PolicyRegistry(entry_points=False)

    class Plugin:
        @staticmethod
        @ead_sdk.hookimpl
        def register_policies(register):
            V2.name = "rolling_v2"
            register(V2)

    reg.add_plugin(Plugin(), name="v2")
    policy = load_policy({"policy": "rolling_v2", "version": 1, "params": {"win": 9}}, registry=reg)
    assert policy.params["window"] == 9 and policy.spec()["version"] == 2


def test_model_count_is_checked():
    policy = load_policy({"policy": "rolling_entropy", "params": {"threshold": [1.0, 2.0]}})
    policy.check_models(3)
    with pytest.raises(ead_sdk.ModelCountError, match="configured for 3 models, got 2"):
        policy.check_models(2)
    with pytest.raises(ead_sdk.ModelCountError, match="model 4 is not one of 2"):
        load_policy({"policy": "fixed", "params": {"model": 4}}).check_models(2)


def test_ladder_routes_count_exceeded_thresholds():
    policy = load_policy(
        {"policy": "rolling_entropy", "params": {"window": 1, "threshold": [1.0, 2.0], "unit": "nats"}}
    )
    state = policy.init_state(3, np)
    step = ead_sdk.Step(
        entropy=np.array([0.5, 1.5, 2.5]),
        model=np.zeros(3, np.int64),
        index=np.zeros(3, np.int64),
        live=np.ones(3, bool),
    )
    routes, _ = policy.decide(state, step)
    assert routes.tolist() == [0, 1, 2]


def test_fixed_policy_starts_on_its_own_model_unless_the_spec_says_otherwise():
    assert load_policy({"policy": "fixed", "params": {"model": 1}}).initial_model == 1
    assert load_policy({"policy": "fixed", "params": {"model": 1}, "initial_model": 0}).initial_model == 0
    policy = load_policy({"policy": "fixed", "params": {"model": 1}})
    assert load_policy(policy.spec()).spec() == policy.spec()


def test_a_bare_name_is_never_shadowed_by_a_file(tmp_path, monkeypatch):
    """A file named like a policy in the working directory must not change which policy runs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rolling_entropy").write_text('{"policy": "fixed"}')
    (tmp_path / "random").mkdir()
    assert load_policy("rolling_entropy").name == "rolling_entropy"
    assert load_policy("random").name == "random"
    assert load_policy("./rolling_entropy").name == "fixed"
    (tmp_path / "myspec").write_text('{"policy": "fixed"}')
    with pytest.raises(UnknownPolicyError, match=r"pass \./myspec"):
        load_policy("myspec")


def test_unreadable_spec_files_are_spec_errors(tmp_path):
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_policy(tmp_path / "bin.json")
    with pytest.raises(SpecError, match="directory"):
        load_policy(str(tmp_path) + "/")
    with pytest.raises(SpecError, match="does not exist"):
        load_policy(tmp_path / "missing.json")


def test_saved_specs_are_as_readable_as_plain_files(tmp_path):
    """save_policy publishes atomically but with the umask's mode, not mkstemp's 0600."""
    import os

    old = os.umask(0o022)
    try:
        path = save_policy(load_policy("rolling_entropy"), tmp_path / "spec.json")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert load_policy(path).spec() == load_policy("rolling_entropy").spec()


@given(st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1)))
def test_integers_beyond_64_bits_are_parameter_errors(value):
    """Lanes hold int64: a larger integer is refused by name, never an OverflowError."""
    with pytest.raises(ParameterError, match="'seed' must fit in 64 bits"):
        load_policy({"policy": "random", "params": {"seed": value}})

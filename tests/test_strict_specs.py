"""Specs that used to be accepted silently, or to raise a raw Python error, now get a named SpecError."""

from __future__ import annotations

import numpy as np
import pytest

from ead_sdk.errors import ModelCountError, ParameterError, SpecError
from ead_sdk.specs import load_policy


def test_duplicate_keys_are_refused_with_the_key_named() -> None:
    """Before, the last 'window' won silently."""
    with pytest.raises(SpecError, match="duplicate key 'window'"):
        load_policy('{"policy": "rolling_entropy", "params": {"window": 2, "threshold": 1.0, "window": 9}}')
    with pytest.raises(SpecError, match="duplicate key 'policy'"):
        load_policy('{"policy": "fixed", "policy": "rolling_entropy"}')


def test_duplicate_keys_in_a_spec_file(tmp_path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"policy": "fixed", "params": {"model": 0, "model": 1}}', encoding="utf-8")
    with pytest.raises(SpecError, match=rf"{path.name}.*duplicate key 'model'"):
        load_policy(str(path))


def test_a_json_list_is_not_a_missing_file() -> None:
    with pytest.raises(SpecError, match="must be a JSON object, got list"):
        load_policy('[{"policy": "fixed"}]')


def test_deep_nesting_is_a_spec_error_not_a_recursion_error() -> None:
    with pytest.raises(SpecError, match="nested more than"):
        load_policy("[" * 10_000 + "]" * 10_000)
    with pytest.raises(SpecError, match="nested more than"):
        load_policy('{"policy": "fixed", "params": {"model": ' + "[" * 10_000 + "]" * 10_000 + "}}")
    spec: dict = {"policy": "rolling_entropy"}
    for _ in range(3000):
        spec = {"policy": "cost_budget", "params": {"inner": spec}}
    with pytest.raises(SpecError, match="nests policies more than"):
        load_policy(spec)


def test_a_deep_value_in_a_message_stays_short() -> None:
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ParameterError, match="must be a number") as info:
        load_policy({"policy": "rolling_entropy", "params": {"threshold": {"a": deep}}})
    assert len(str(info.value)) < 300


def test_a_ragged_per_lane_parameter_names_the_parameter() -> None:
    with pytest.raises(ParameterError, match="policy 'rolling_entropy': parameter 'threshold': per_lane"):
        load_policy({"policy": "rolling_entropy", "params": {"threshold": {"per_lane": [[1, 2], [3]]}}})


def test_a_huge_per_lane_error_message_is_short() -> None:
    """A 5M-value per-lane array used to put all 5M values into the message (25 MB)."""
    with pytest.raises(ParameterError, match=r"must be finite, got \[nan.*5000000 values") as info:
        load_policy({"policy": "rolling_entropy", "params": {"threshold": np.full(5_000_000, np.nan)}})
    assert len(str(info.value)) < 300
    ladder = np.zeros((5_000_000, 2))
    with pytest.raises(ParameterError, match="strictly increasing") as info:
        load_policy({"policy": "rolling_entropy", "params": {"threshold": ladder}}).check_models(3)
    assert len(str(info.value)) < 300


def test_fixed_with_a_model_out_of_range_names_model() -> None:
    """Before, the error named 'initial_model', which the user never set."""
    with pytest.raises(ModelCountError, match="policy 'fixed': model 5 is not one of 2 models"):
        load_policy({"policy": "fixed", "params": {"model": 5}}).check_models(2)


@pytest.mark.parametrize("spec", [None, b'{"policy": "fixed"}', 5])
def test_a_spec_of_the_wrong_kind_is_a_spec_error(spec) -> None:
    """Found while looking for more of the kind: os.fspath's raw TypeError."""
    with pytest.raises(SpecError, match="a policy spec is a dict, a JSON string, a policy name or a path"):
        load_policy(spec)


def test_a_parameter_name_that_is_not_a_string_is_named() -> None:
    """Found while looking for more of the kind: Python's 'keywords must be strings' TypeError."""
    with pytest.raises(ParameterError, match="policy 'fixed': parameter names must be strings, got 1"):
        load_policy({"policy": "fixed", "params": {1: 2}})
